package worker

import (
	"context"
	"testing"
	"time"
)

func TestPriorityLoadsYieldToJobs(t *testing.T) {
	var p priority
	ctx := context.Background()
	// No job missing: loads are not held back.
	var ends []func()
	for range 2 * loadFloor {
		end, err := p.background(ctx)
		if err != nil {
			t.Fatal(err)
		}
		ends = append(ends, end)
	}
	for _, end := range ends {
		end()
	}
	// A job missing: loadFloor loads go on, the next one waits.
	endJob := p.foreground()
	ends = ends[:0]
	for range loadFloor {
		end, err := p.background(ctx)
		if err != nil {
			t.Fatal(err)
		}
		ends = append(ends, end)
	}
	got := make(chan func(), 1)
	go func() {
		end, err := p.background(ctx)
		if err != nil {
			t.Error(err)
		}
		got <- end
	}()
	select {
	case <-got:
		t.Fatal("a load beyond the floor went on while a job was missing")
	case <-time.After(50 * time.Millisecond):
	}
	endJob()
	select {
	case end := <-got:
		end()
	case <-time.After(10 * time.Second):
		t.Fatal("the waiting load did not go on after the job's miss ended")
	}
	for _, end := range ends {
		end()
	}
	// A waiting load gives up with its context.
	endJob = p.foreground()
	defer endJob()
	for range loadFloor {
		end, _ := p.background(ctx)
		defer end()
	}
	cctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if _, err := p.background(cctx); err == nil {
		t.Fatal("a load waiting past its context went on")
	}
}

// TestPriorityFreedSlot: under a job that keeps missing, a load waiting
// goes on when another load ends.
func TestPriorityFreedSlot(t *testing.T) {
	var p priority
	defer p.foreground()()
	var ends []func()
	for range loadFloor {
		end, _ := p.background(context.Background())
		ends = append(ends, end)
	}
	got := make(chan struct{})
	go func() {
		end, _ := p.background(context.Background())
		end()
		close(got)
	}()
	ends[0]()
	select {
	case <-got:
	case <-time.After(10 * time.Second):
		t.Fatal("a load waited although a slot was freed")
	}
	for _, end := range ends[1:] {
		end()
	}
}
