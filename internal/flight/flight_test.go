package flight

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestDoMerges(t *testing.T) {
	var g Group[string, int]
	var calls, shared atomic.Int32
	release := make(chan struct{})
	started := make(chan struct{})
	var wg sync.WaitGroup
	for i := range 64 {
		wg.Go(func() {
			v, sh, err := g.Do(context.Background(), "k", func(context.Context) (int, error) {
				calls.Add(1)
				close(started)
				<-release
				return 42, nil
			})
			if err != nil || v != 42 {
				t.Errorf("caller %d: %d, %v", i, v, err)
			}
			if sh {
				shared.Add(1)
			}
		})
		if i == 0 {
			<-started // the first call is running: all the others must join it
		}
	}
	// Wait until every other caller is waiting on the running call.
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		g.mu.Lock()
		n := g.calls["k"].waiters
		g.mu.Unlock()
		if n == 63 {
			break
		}
	}
	close(release)
	wg.Wait()
	if calls.Load() != 1 || shared.Load() != 63 {
		t.Errorf("fn ran %d times, %d callers shared; want 1 and 63", calls.Load(), shared.Load())
	}
	// Later calls run again.
	v, sh, _ := g.Do(context.Background(), "k", func(context.Context) (int, error) { return 7, nil })
	if v != 7 || sh {
		t.Errorf("a later call got %d, shared %v", v, sh)
	}
}

func TestWaiterCancelDoesNotCancelCall(t *testing.T) {
	var g Group[int, string]
	release := make(chan struct{})
	running := make(chan struct{})
	result := make(chan error, 1)
	go func() {
		_, _, err := g.Do(context.Background(), 1, func(ctx context.Context) (string, error) {
			close(running)
			<-release
			return "done", ctx.Err()
		})
		result <- err
	}()
	<-running
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, _, err := g.Do(ctx, 1, nil); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled waiter = %v", err)
	}
	close(release)
	if err := <-result; err != nil {
		t.Errorf("the running call saw %v", err)
	}
	// The leader's own cancellation does not reach fn either.
	lctx, lcancel := context.WithCancel(context.Background())
	lcancel()
	_, _, err := g.Do(lctx, 2, func(ctx context.Context) (string, error) { return "", ctx.Err() })
	if err != nil {
		t.Errorf("fn saw the leader's cancellation: %v", err)
	}
}
