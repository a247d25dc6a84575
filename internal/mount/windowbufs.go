package mount

import (
	"sync"
	"time"
)

// bufferPool keeps the read-ahead windows' buffers between uses. A buffer
// freshly allocated costs a page fault per page on its first touch (and on
// VMs whose host takes back freed guest memory, a fault on the host too):
// measured on a cold 4 x 1 GiB read, zeroing fresh window pages was a
// fifth of the mount's CPU with a sync.Pool, which the GC empties every
// cycle. So buffers given back stay, up to max of them, until none has
// been taken for idle; then they all go, and a mount that stopped reading
// big files holds no windows' memory.
type bufferPool struct {
	size int // bytes per buffer
	max  int // buffers kept at most
	idle time.Duration

	mu    sync.Mutex
	free  []*[]byte
	taken time.Time   // last get
	timer *time.Timer // armed while free is not empty
}

// get returns a buffer of p.size bytes: a kept one when there is one.
func (p *bufferPool) get() *[]byte {
	p.mu.Lock()
	p.taken = time.Now()
	if n := len(p.free); n > 0 {
		b := p.free[n-1]
		p.free[n-1] = nil
		p.free = p.free[:n-1]
		p.mu.Unlock()
		return b
	}
	p.mu.Unlock()
	b := make([]byte, p.size)
	return &b
}

// put gives a buffer back, to be kept if there is room.
func (p *bufferPool) put(b *[]byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.free) >= p.max {
		return
	}
	p.free = append(p.free, b)
	if p.timer == nil {
		p.timer = time.AfterFunc(p.idle, p.trim)
	}
}

// trim lets the kept buffers go when none was taken for p.idle, and looks
// again later otherwise.
func (p *bufferPool) trim() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if wait := p.idle - time.Since(p.taken); wait > 0 && len(p.free) > 0 {
		p.timer.Reset(wait)
		return
	}
	clear(p.free)
	p.free = p.free[:0]
	p.timer = nil
}

// kept says how many buffers the pool holds.
func (p *bufferPool) kept() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.free)
}
