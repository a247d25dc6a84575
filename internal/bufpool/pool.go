// Package bufpool keeps large buffers of one size between uses: the
// mount's read-ahead windows, the worker's pages.
//
// A buffer freshly allocated costs a page fault per page on its first
// touch (and, on VMs whose host takes back the memory a guest frees, a
// fault on the host too). A sync.Pool is emptied by the GC every cycle, and
// the runtime hands the freed memory back to the kernel: measured on a cold
// 4 x 1 GiB read, zeroing fresh window pages was a fifth of the mount's
// CPU. So a Pool keeps what it is given back, up to Max buffers, until
// none has been taken for Idle; then they all go, and a process that
// stopped reading holds none of that memory.
package bufpool

import (
	"sync"
	"time"
)

// Pool is a bounded free list of buffers of Size bytes. Its fields are set
// before first use.
type Pool struct {
	Size int // bytes per buffer
	Max  int // buffers kept at most
	// Idle: how long after the last Get the kept buffers are let go
	// (a minute when zero).
	Idle time.Duration

	mu    sync.Mutex
	free  []*[]byte
	taken time.Time   // last get
	timer *time.Timer // armed while free is not empty
}

// Get returns a buffer of p.Size bytes: a kept one when there is one.
func (p *Pool) Get() *[]byte {
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
	b := make([]byte, p.Size)
	return &b
}

// Put gives a buffer from Get back, to be kept if there is room. It must
// not be used after.
func (p *Pool) Put(b *[]byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.free) >= p.Max || len(*b) != p.Size {
		return
	}
	p.free = append(p.free, b)
	if p.timer == nil {
		p.timer = time.AfterFunc(p.idle(), p.trim)
	}
}

func (p *Pool) idle() time.Duration {
	if p.Idle <= 0 {
		return time.Minute
	}
	return p.Idle
}

// trim lets the kept buffers go when none was taken for the idle time, and
// looks again later otherwise.
func (p *Pool) trim() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if wait := p.idle() - time.Since(p.taken); wait > 0 && len(p.free) > 0 {
		p.timer.Reset(wait)
		return
	}
	clear(p.free)
	p.free = p.free[:0]
	p.timer = nil
}

// Kept says how many buffers the pool holds.
func (p *Pool) Kept() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.free)
}
