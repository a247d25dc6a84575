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
		end, err := p.background(ctx, "loads")
		if err != nil {
			t.Fatal(err)
		}
		ends = append(ends, end)
	}
	for _, end := range ends {
		end()
	}
	// A job missing: loadFloor loads go on, the next one waits.
	endJob := p.foreground("jobs")
	ends = ends[:0]
	for range loadFloor {
		end, err := p.background(ctx, "loads")
		if err != nil {
			t.Fatal(err)
		}
		ends = append(ends, end)
	}
	got := waitingLoad(t, &p, "loads")
	notYet(t, got, "a load beyond the floor went on while a job was missing")
	endJob()
	goesOn(t, got, "the waiting load did not go on after the job's miss ended")
	for _, end := range ends {
		end()
	}
	// A waiting load gives up with its context.
	endJob = p.foreground("jobs")
	defer endJob()
	for range loadFloor {
		end, _ := p.background(ctx, "loads")
		defer end()
	}
	cctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if _, err := p.background(cctx, "loads"); err == nil {
		t.Fatal("a load waiting past its context went on")
	}
}

// TestPriorityFreedSlot: under a job that keeps missing, a load waiting
// goes on when another load ends.
func TestPriorityFreedSlot(t *testing.T) {
	var p priority
	defer p.foreground("jobs")()
	var ends []func()
	for range loadFloor {
		end, _ := p.background(context.Background(), "loads")
		ends = append(ends, end)
	}
	got := make(chan struct{})
	go func() {
		end, _ := p.background(context.Background(), "loads")
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

// TestPrioritySameDataset: a job missing in a dataset does not hold back
// loads of that dataset (they fetch what it reads next), only loads of
// others; and a load of another dataset waiting on that job goes on when
// that job's misses end, even while its own dataset misses.
func TestPrioritySameDataset(t *testing.T) {
	var p priority
	ctx := context.Background()
	endJob := p.foreground("train")
	var ends []func()
	for range 2 * loadFloor {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		end, err := p.background(cctx, "train")
		cancel()
		if err != nil {
			t.Fatalf("a load of the job's own dataset was held back: %v", err)
		}
		ends = append(ends, end)
	}
	// Past the floor: a load of another dataset waits for the job.
	got := waitingLoad(t, &p, "other")
	notYet(t, got, "a load of another dataset went on past the floor while a job missed")
	// A miss of "other" itself does not hold its own load back: only
	// "train"'s does, until it ends.
	endOther := p.foreground("other")
	notYet(t, got, "the load went on while train's job still missed")
	endJob()
	goesOn(t, got, "the load of another dataset did not go on once the other job's miss ended")
	endOther()
	for _, end := range ends {
		end()
	}
	if p.all != 0 || p.bg != 0 || len(p.fg) != 0 {
		t.Errorf("after every end: %d misses (%v), %d loads", p.all, p.fg, p.bg)
	}
}

// waitingLoad asks for a load slot of dataset ds in the background; the
// channel gets its end func once it has one.
func waitingLoad(t *testing.T, p *priority, ds string) <-chan func() {
	got := make(chan func(), 1)
	go func() {
		end, err := p.background(context.Background(), ds)
		if err != nil {
			t.Error(err)
		}
		got <- end
	}()
	return got
}

// notYet fails with msg if the waiting load goes on within 50 ms.
func notYet(t *testing.T, got <-chan func(), msg string) {
	t.Helper()
	select {
	case <-got:
		t.Fatal(msg)
	case <-time.After(50 * time.Millisecond):
	}
}

// goesOn fails with msg unless the waiting load goes on (within 10 s), and
// ends it.
func goesOn(t *testing.T, got <-chan func(), msg string) {
	t.Helper()
	select {
	case end := <-got:
		end()
	case <-time.After(10 * time.Second):
		t.Fatal(msg)
	}
}
