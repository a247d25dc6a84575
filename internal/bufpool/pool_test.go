package bufpool

import (
	"testing"
	"time"
)

// TestPoolKeepsThenTrims: buffers given back are handed out again
// (the same memory), no more than max are kept, and all go once none has
// been taken for the idle time.
func TestPoolKeepsThenTrims(t *testing.T) {
	p := &Pool{Size: 1 << 10, Max: 2, Idle: 50 * time.Millisecond}
	a, b, c := p.Get(), p.Get(), p.Get()
	if len(*a) != 1<<10 {
		t.Fatalf("a buffer of %d bytes; want %d", len(*a), 1<<10)
	}
	p.Put(a)
	p.Put(b)
	p.Put(c)
	if n := p.Kept(); n != 2 {
		t.Fatalf("%d buffers kept; want max (2)", n)
	}
	if got := p.Get(); got != b && got != a {
		t.Error("get after put allocated a new buffer")
	}
	p.Put(a)
	for i := 0; p.Kept() > 0; i++ {
		if i == 200 {
			t.Fatalf("%d buffers still kept %v after the last get", p.Kept(), 200*10*time.Millisecond)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Kept again after a trim.
	p.Put(p.Get())
	if n := p.Kept(); n != 1 {
		t.Errorf("%d buffers kept after a trim and a put; want 1", n)
	}
}

// TestPoolBusyNotTrimmed: a pool taken from more often than its idle
// time keeps its buffers.
func TestPoolBusyNotTrimmed(t *testing.T) {
	p := &Pool{Size: 1 << 10, Max: 4, Idle: 500 * time.Millisecond}
	p.Put(p.Get())
	p.Put(p.Get())
	for range 30 { // longer in all than idle, each gap far shorter
		time.Sleep(25 * time.Millisecond)
		b := p.Get()
		p.Put(b)
	}
	if p.Kept() == 0 {
		t.Error("buffers trimmed while the pool was in use")
	}
}
