package mount

import (
	"testing"
	"time"
)

// TestBufferPoolKeepsThenTrims: buffers given back are handed out again
// (the same memory), no more than max are kept, and all go once none has
// been taken for the idle time.
func TestBufferPoolKeepsThenTrims(t *testing.T) {
	p := &bufferPool{size: 1 << 10, max: 2, idle: 50 * time.Millisecond}
	a, b, c := p.get(), p.get(), p.get()
	if len(*a) != 1<<10 {
		t.Fatalf("a buffer of %d bytes; want %d", len(*a), 1<<10)
	}
	p.put(a)
	p.put(b)
	p.put(c)
	if n := p.kept(); n != 2 {
		t.Fatalf("%d buffers kept; want max (2)", n)
	}
	if got := p.get(); got != b && got != a {
		t.Error("get after put allocated a new buffer")
	}
	p.put(a)
	for i := 0; p.kept() > 0; i++ {
		if i == 200 {
			t.Fatalf("%d buffers still kept %v after the last get", p.kept(), 200*10*time.Millisecond)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Kept again after a trim.
	p.put(p.get())
	if n := p.kept(); n != 1 {
		t.Errorf("%d buffers kept after a trim and a put; want 1", n)
	}
}

// TestBufferPoolBusyNotTrimmed: a pool taken from more often than its idle
// time keeps its buffers.
func TestBufferPoolBusyNotTrimmed(t *testing.T) {
	p := &bufferPool{size: 1 << 10, max: 4, idle: 500 * time.Millisecond}
	p.put(p.get())
	p.put(p.get())
	for range 30 { // longer in all than idle, each gap far shorter
		time.Sleep(25 * time.Millisecond)
		b := p.get()
		p.put(b)
	}
	if p.kept() == 0 {
		t.Error("buffers trimmed while the pool was in use")
	}
}
