package worker

import (
	"context"
	"sync"
)

// priority puts the reads of jobs before loads (`granary load`, the
// mount's epoch prefetch): while a job read of another dataset is fetching
// from the UFS, a worker loads at most loadFloor blocks at once, so that
// the UFS serves that job first and loads take the room it leaves. Loads
// still advance, slowly, under a job that never stops missing. A load of
// the very dataset a job is missing in is not held back: it fetches what
// that job reads next (it is the job's read-ahead), and the dataset's UFS
// limits bound the two together. The zero value is ready.
type priority struct {
	mu   sync.Mutex
	fg   map[string]int // job reads fetching from the UFS, per dataset
	all  int            // the sum of fg
	bg   int            // load blocks being fetched
	wake chan struct{}  // closed when a waiting load may go on
}

// loadFloor is how many blocks loads may fetch at once while jobs of
// other datasets miss.
const loadFloor = 4

// foreground notes a job read of dataset ds fetching from the UFS; the
// returned func ends it.
func (p *priority) foreground(ds string) func() {
	p.mu.Lock()
	if p.fg == nil {
		p.fg = map[string]int{}
	}
	p.fg[ds]++
	p.all++
	p.mu.Unlock()
	return func() {
		p.mu.Lock()
		if p.fg[ds]--; p.fg[ds] == 0 {
			delete(p.fg, ds)
		}
		p.all--
		p.wakeLocked() // a load waiting on this dataset's jobs may go on
		p.mu.Unlock()
	}
}

// background waits until a load block of dataset ds may be fetched, or
// ctx ends; on success the returned func ends it.
func (p *priority) background(ctx context.Context, ds string) (func(), error) {
	for {
		p.mu.Lock()
		if p.all-p.fg[ds] == 0 || p.bg < loadFloor {
			p.bg++
			p.mu.Unlock()
			return func() {
				p.mu.Lock()
				p.bg--
				p.wakeLocked()
				p.mu.Unlock()
			}, nil
		}
		if p.wake == nil {
			p.wake = make(chan struct{})
		}
		wake := p.wake
		p.mu.Unlock()
		select {
		case <-wake:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

func (p *priority) wakeLocked() {
	if p.wake != nil {
		close(p.wake)
		p.wake = nil
	}
}
