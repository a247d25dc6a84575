package membership

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"
)

// fakeProbe answers as up says, counting its calls.
type fakeProbe struct {
	up    atomic.Bool
	calls atomic.Int64
}

func (f *fakeProbe) probe(ctx context.Context, _, _ string) error {
	f.calls.Add(1)
	if f.up.Load() {
		return nil
	}
	<-ctx.Done() // a cut-off worker: no answer until the probe's timeout
	return ctx.Err()
}

func newReach(f *fakeProbe) *Reach {
	return &Reach{Probe: f.probe, ProbeAfter: 20 * time.Millisecond, ProbeTimeout: 20 * time.Millisecond, Recheck: 20 * time.Millisecond}
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestReachSlowRequestToDeadWorker(t *testing.T) {
	f := &fakeProbe{}
	r := newReach(f)
	defer r.Close()
	var downs atomic.Int64
	r.OnDown = func(string, string, error) { downs.Add(1) }
	// Two requests in flight to w1; neither answers.
	ctx1, done1 := r.Guard(context.Background(), "w1", "a:1")
	ctx2, done2 := r.Guard(context.Background(), "w1", "a:1")
	defer done1()
	defer done2()
	for _, ctx := range []context.Context{ctx1, ctx2} {
		select {
		case <-ctx.Done():
		case <-time.After(5 * time.Second):
			t.Fatal("a request to a worker that fails its probe was not cancelled")
		}
		if !ErrMarkedDown(ctx) {
			t.Errorf("cancelled with %v, want marked down", context.Cause(ctx))
		}
	}
	if !r.Down("w1") || downs.Load() != 1 {
		t.Errorf("down %v after %d OnDown calls; want down once", r.Down("w1"), downs.Load())
	}
	// A new request goes on until its own end: it is its caller's business
	// to try the others first.
	ctx3, done3 := r.Guard(context.Background(), "w1", "a:1")
	if ctx3.Err() != nil {
		t.Errorf("a request started after the mark is cancelled already")
	}
	done3()
	// The worker answers again: the background probe clears the mark.
	f.up.Store(true)
	eventually(t, "w1 up again", func() bool { return !r.Down("w1") })
}

func TestReachSlowRequestToLiveWorker(t *testing.T) {
	f := &fakeProbe{}
	f.up.Store(true)
	r := newReach(f)
	defer r.Close()
	ctx, done := r.Guard(context.Background(), "w1", "a:1")
	eventually(t, "a probe", func() bool { return f.calls.Load() > 0 })
	time.Sleep(50 * time.Millisecond)
	if ctx.Err() != nil || r.Down("w1") {
		t.Errorf("a slow request to a worker that answers its probe was cancelled (%v) or marked down (%v)", ctx.Err(), r.Down("w1"))
	}
	done()
	if !errors.Is(ctx.Err(), context.Canceled) || ErrMarkedDown(ctx) {
		t.Errorf("after done: %v, cause %v", ctx.Err(), context.Cause(ctx))
	}
	// A request done before ProbeAfter costs no probe.
	before := f.calls.Load()
	_, done = r.Guard(context.Background(), "w2", "b:1")
	done()
	time.Sleep(50 * time.Millisecond)
	if f.calls.Load() != before {
		t.Errorf("a fast request made a probe")
	}
}

func TestReachMarkDownAndDial(t *testing.T) {
	// The default probe dials: a closed port is down, and stays so.
	r := &Reach{ProbeTimeout: 100 * time.Millisecond, Recheck: 20 * time.Millisecond}
	r.MarkDown("w1", "127.0.0.1:1", errors.New("refused"))
	if !r.Down("w1") {
		t.Fatal("not down after MarkDown")
	}
	time.Sleep(100 * time.Millisecond)
	if !r.Down("w1") {
		t.Error("a worker nobody listens for came back up")
	}
	r.Close() // stops the background probe
	if r.Down("w9") {
		t.Error("an unknown worker is down")
	}
}
