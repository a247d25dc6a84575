package cache

import (
	"bytes"
	"context"
	"errors"
	"github.com/granary-cache/granary/internal/block"
	"os"
	"sync"
	"testing"
	"time"
)

// flip inverts one byte of a file, as a bad disk, a bit flip in memory or a
// stray write would.
func flip(t *testing.T, path string, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	one := make([]byte, 1)
	if _, err := f.ReadAt(one, off); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte{one[0] ^ 0x20}, off); err != nil {
		t.Fatal(err)
	}
}

// TestChecksumEveryRead: a page that was stored and read back fine is still
// checked at every later read, so a byte flipped under a running store is
// caught each time it happens, counted once, and the page dropped.
func TestChecksumEveryRead(t *testing.T) {
	m := NewMetrics(nil)
	s, err := Open(Config{Tiers: []TierConfig{tierCfg("MEM", t.TempDir(), 1<<20)}, Layout: testLayout, Metrics: m})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	k := key("ds", 1)
	b := fill(t, s, k, testBlock)
	path := s.tiers[0].blockPath(b.id)
	buf := make([]byte, testPage)
	for round := 1; round <= 3; round++ {
		f, err := s.Open(b)
		if err != nil {
			t.Fatal(err)
		}
		// Read and checked: in the old store, this made the page trusted
		// for the life of the process.
		if err := s.Verify(f, 0, 3); err != nil {
			t.Fatalf("round %d: intact block: %v", round, err)
		}
		flip(t, path, 2*testPage+7)
		if err := s.Verify(f, 0, 1); err != nil {
			t.Errorf("round %d: pages 0-1 are intact: %v", round, err)
		}
		for range 2 { // a second reader of the same bad copy counts nothing more
			if _, err := s.ReadPage(f, 2, buf); !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrGone) {
				t.Fatalf("round %d: ReadPage of the flipped page = %v; want ErrCorrupt (or ErrGone once dropped)", round, err)
			}
		}
		f.Close()
		if s.Present(b, 2) || !s.Present(b, 1) || !s.Present(b, 3) {
			t.Fatalf("round %d: the flipped page must be dropped, and only it", round)
		}
		if got := counterValue(m.corrupted); got != float64(round) {
			t.Errorf("round %d: corrupt pages counted %v; want %d", round, got, round)
		}
		// Fetched again, it is served again.
		if err := s.WritePage(b, 2, pageData(k, 2, testPage)); err != nil {
			t.Fatal(err)
		}
		if got := readBlock(t, s, b); !bytes.Equal(got, wantBlock(k, testBlock)) {
			t.Fatalf("round %d: block wrong after the page was stored again", round)
		}
	}
}

// TestChecksumShortFile: a block file cut short under the store fails the
// check of the pages it lost instead of serving what the buffer held.
func TestChecksumShortFile(t *testing.T) {
	s := openStore(t, tierCfg("SSD", t.TempDir(), 1<<20))
	defer s.Close()
	b := fill(t, s, key("ds", 1), testBlock)
	if err := os.Truncate(s.tiers[0].blockPath(b.id), 3*testPage+10); err != nil {
		t.Fatal(err)
	}
	f, err := s.Open(b)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, testPage)
	if _, err := s.ReadPage(f, 2, buf); err != nil {
		t.Errorf("page 2 is whole: %v", err)
	}
	if _, err := s.ReadPage(f, 3, buf); !errors.Is(err, ErrCorrupt) {
		t.Errorf("ReadPage of a cut page = %v; want ErrCorrupt", err)
	}
}

// TestChecksumAfterRestart: a page checked before a restart is checked
// again after it.
func TestChecksumAfterRestart(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, tierCfg("SSD", dir, 1<<20))
	k := key("ds", 1)
	b := fill(t, s, k, testBlock)
	f, _ := s.Open(b)
	if err := s.Verify(f, 0, 3); err != nil {
		t.Fatal(err)
	}
	f.Close()
	path := s.tiers[0].blockPath(b.id)
	s.Close()
	flip(t, path, 10)

	m := NewMetrics(nil)
	s, err := Open(Config{Tiers: []TierConfig{tierCfg("SSD", dir, 1<<20)}, Layout: testLayout, Metrics: m})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	b = s.Lookup(k)
	if b == nil || !s.Complete(b) {
		t.Fatal("block not reloaded complete")
	}
	f, err = s.Open(b)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := s.Verify(f, 0, 3); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Verify after a restart = %v; want ErrCorrupt", err)
	}
	if s.Present(b, 0) || counterValue(m.corrupted) != 1 {
		t.Errorf("page 0 present %v, counted %v; want dropped and 1", s.Present(b, 0), counterValue(m.corrupted))
	}
}

type repaired struct {
	mu    sync.Mutex
	pages map[block.ID][]int
}

func (r *repaired) add(_ context.Context, b *Block, p int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.pages[b.Key] = append(r.pages[b.Key], p)
}

func (r *repaired) of(k block.ID) []int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]int(nil), r.pages[k]...)
}

// TestScrub: the background scrub finds a byte flipped on the MEM tier and
// one on the SSD tier, at no more than its rate, counts and drops both and
// asks for them to be fetched again; it finds a flip made while it runs on
// its next pass; and it stops when the store is closed.
func TestScrub(t *testing.T) {
	memDir, ssdDir := t.TempDir(), t.TempDir()
	tiers := []TierConfig{tierCfg("MEM", memDir, 8*testBlock), tierCfg("SSD", ssdDir, 8*testBlock)}
	s := openStore(t, tiers...)
	kMem, kSSD := key("ds", 1), key("ds", 2)
	bMem := fill(t, s, kMem, testBlock)
	bSSD := fill(t, s, kSSD, testBlock)
	if s.demote(bSSD, s.tiers[1]) != demoted {
		t.Fatal("demotion to SSD failed")
	}
	memPath, ssdPath := s.tiers[0].blockPath(bMem.id), s.tiers[1].blockPath(bSSD.id)
	s.Close()
	flip(t, memPath, 2*testPage+1)
	flip(t, ssdPath, 1*testPage+2)

	// 8 pages of 4 KiB at 32 KiB/s: a pass takes at least 7/8 s (the first
	// page goes at once).
	const rate = 32 << 10
	m := NewMetrics(nil)
	rep := &repaired{pages: map[block.ID][]int{}}
	start := time.Now()
	s, err := Open(Config{Tiers: tiers, Layout: testLayout, Metrics: m, ScrubRate: rate, ScrubInterval: 50 * time.Millisecond, Repair: rep.add})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	bMem, bSSD = s.Lookup(kMem), s.Lookup(kSSD)
	if s.TierOf(bMem) != "MEM" || s.TierOf(bSSD) != "SSD" {
		t.Fatalf("blocks on %s and %s; want MEM and SSD", s.TierOf(bMem), s.TierOf(bSSD))
	}
	// A page is dropped, then its repair asked for: wait for both.
	waitFor(t, "the scrub to find both flipped pages", func() bool {
		return !s.Present(bMem, 2) && !s.Present(bSSD, 1) && len(rep.of(kMem)) > 0 && len(rep.of(kSSD)) > 0
	})
	elapsed := time.Since(start)
	if elapsed < 600*time.Millisecond {
		// The SSD block comes after the MEM one: its page 1 is the 6th read.
		t.Errorf("the scrub read 6 pages in %v; its rate allows no fewer than 625ms", elapsed)
	}
	scrubbed := counterValue(m.scrubbedBytes)
	if limit := float64(testPage) + rate*elapsed.Seconds(); scrubbed > limit*1.05 {
		t.Errorf("scrubbed %v bytes in %v; the rate allows %v", scrubbed, elapsed, limit)
	}
	if got := counterValue(m.corrupted); got != 2 {
		t.Errorf("corrupt pages counted %v; want 2", got)
	}
	if got := rep.of(kMem); len(got) != 1 || got[0] != 2 {
		t.Errorf("repairs asked for the MEM block: %v; want page 2", got)
	}
	if got := rep.of(kSSD); len(got) != 1 || got[0] != 1 {
		t.Errorf("repairs asked for the SSD block: %v; want page 1", got)
	}
	for _, p := range []int{0, 1, 3} {
		if !s.Present(bMem, p) {
			t.Errorf("intact page %d of the MEM block dropped", p)
		}
	}

	// Stored again, then flipped while the store runs: the next pass finds it.
	if err := s.WritePage(bMem, 2, pageData(kMem, 2, testPage)); err != nil {
		t.Fatal(err)
	}
	if err := s.WritePage(bSSD, 1, pageData(kSSD, 1, testPage)); err != nil {
		t.Fatal(err)
	}
	flip(t, ssdPath, 3*testPage+5)
	waitFor(t, "the scrub to find a byte flipped while it runs", func() bool { return !s.Present(bSSD, 3) })
	if got := counterValue(m.corrupted); got != 3 {
		t.Errorf("corrupt pages counted %v; want 3", got)
	}
	if !s.Present(bMem, 2) || !s.Present(bSSD, 1) {
		t.Error("pages stored again were dropped by a later pass")
	}
	if got := readBlock(t, s, bMem); !bytes.Equal(got, wantBlock(kMem, testBlock)) {
		t.Error("MEM block wrong after its page was stored again")
	}
}

// TestScrubStopsOnClose: Close returns at once even while the scrub waits
// for its rate, and nothing is read after it.
func TestScrubStopsOnClose(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, tierCfg("SSD", dir, 1<<20))
	for i := range 4 {
		fill(t, s, key("ds", i), testBlock)
	}
	s.Close()
	m := NewMetrics(nil)
	// One page a second: a pass of 16 pages would take 15 s.
	s, err := Open(Config{Tiers: []TierConfig{tierCfg("SSD", dir, 1<<20)}, Layout: testLayout, Metrics: m, ScrubRate: testPage})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the first page to be scrubbed", func() bool { return counterValue(m.scrubbedBytes) > 0 })
	start := time.Now()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("Close took %v while the scrub waited", d)
	}
	after := counterValue(m.scrubbedBytes)
	time.Sleep(1500 * time.Millisecond)
	if got := counterValue(m.scrubbedBytes); got != after || got >= 16*testPage {
		t.Errorf("scrubbed %v bytes, then %v after Close; want no more, and less than a pass", after, got)
	}
}

// TestScrubOff: a rate of 0 reads nothing.
func TestScrubOff(t *testing.T) {
	dir := t.TempDir()
	m := NewMetrics(nil)
	s, err := Open(Config{Tiers: []TierConfig{tierCfg("SSD", dir, 1<<20)}, Layout: testLayout, Metrics: m, ScrubInterval: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	fill(t, s, key("ds", 1), testBlock)
	time.Sleep(100 * time.Millisecond)
	if got := counterValue(m.scrubbedBytes); got != 0 {
		t.Errorf("scrubbed %v bytes with the scrub off", got)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}
