package cache

import (
	"errors"
	"time"

	"golang.org/x/time/rate"
)

// Pages are checked whenever a worker serves them, but a page nobody reads is
// never checked, and a block file handed to the kernel for FUSE passthrough
// is read without any check at all. The scrubber reads every stored page of
// every tier again in the background, at a bounded rate, so that a page that
// rotted is found, dropped and fetched again before a reader meets it.

// DefaultScrubInterval is the pause between two full scrub passes.
const DefaultScrubInterval = time.Hour

// scrubLoop runs a pass over every block at bytesPerSecond, then waits for
// interval, until Close. The first pass starts at once: blocks loaded from
// the journal at start were last checked by a process that is gone.
func (s *Store) scrubLoop(bytesPerSecond int64, interval time.Duration) {
	// A page is read whole, so the bucket holds one page: the rate is met
	// on average and never exceeded by more than a page.
	lim := rate.NewLimiter(rate.Limit(bytesPerSecond), int(s.layout.PageSize))
	buf := make([]byte, s.layout.PageSize)
	for {
		if err := s.scrubPass(lim, buf); err != nil {
			return // closed
		}
		t := time.NewTimer(interval)
		select {
		case <-s.ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// scrubPass checks every block cached when it starts, fastest tier first.
// It returns an error only when the store is closed.
func (s *Store) scrubPass(lim *rate.Limiter, buf []byte) error {
	s.mu.Lock()
	var blocks []*Block
	for _, t := range s.tiers {
		for e := t.lru.Front(); e != nil; e = e.Next() {
			blocks = append(blocks, e.Value.(*Block))
		}
	}
	s.mu.Unlock()
	for _, b := range blocks {
		if err := s.scrubBlock(lim, b, buf); err != nil {
			return err
		}
	}
	return nil
}

// scrubBlock checks every stored page of b. The store's lock is only taken
// between reads, never across one, so readers and writers are not held up.
func (s *Store) scrubBlock(lim *rate.Limiter, b *Block, buf []byte) error {
	f, err := s.Open(b)
	if err != nil {
		return s.ctx.Err() // gone meanwhile: nothing to check
	}
	defer f.Close()
	for p := range s.layout.Pages(b.Length) {
		if !s.Present(b, p) {
			continue
		}
		n := s.layout.PageLen(b.Length, p)
		if err := lim.WaitN(s.ctx, int(n)); err != nil {
			return err
		}
		_, err := s.ReadPage(f, p, buf)
		s.m.scrubbed(n)
		switch {
		case errors.Is(err, ErrCorrupt):
			if s.repair != nil {
				s.repair(s.ctx, b, p)
			}
		case errors.Is(err, ErrGone):
			// Dropped or evicted meanwhile.
		case err != nil:
			s.m.storeError(err)
		}
	}
	return s.ctx.Err()
}
