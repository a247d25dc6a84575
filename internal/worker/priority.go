package worker

import (
	"context"
	"sync"
)

// priority puts the reads of jobs before loads (`granary load`, the
// mount's epoch prefetch): while any job read is fetching from the UFS, a
// worker loads at most loadFloor blocks at once, so that the UFS serves the
// job first and loads take the room it leaves. Loads still advance, slowly,
// under a job that never stops missing. The zero value is ready.
type priority struct {
	mu   sync.Mutex
	fg   int           // job reads fetching from the UFS
	bg   int           // load blocks being fetched
	wake chan struct{} // closed when a waiting load may go on
}

// loadFloor is how many blocks loads may fetch at once while jobs miss.
const loadFloor = 4

// foreground notes a job read fetching from the UFS; the returned func
// ends it.
func (p *priority) foreground() func() {
	p.mu.Lock()
	p.fg++
	p.mu.Unlock()
	return func() {
		p.mu.Lock()
		p.fg--
		if p.fg == 0 {
			p.wakeLocked()
		}
		p.mu.Unlock()
	}
}

// background waits until a load block may be fetched, or ctx ends; on
// success the returned func ends it.
func (p *priority) background(ctx context.Context) (func(), error) {
	for {
		p.mu.Lock()
		if p.fg == 0 || p.bg < loadFloor {
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
