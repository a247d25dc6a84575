// Package flight merges concurrent calls for the same key into one, so that
// N readers missing the same page or directory cost the UFS one request.
package flight

import (
	"context"
	"sync"
)

// Group runs at most one call per key at a time. The zero value is ready.
type Group[K comparable, V any] struct {
	mu    sync.Mutex
	calls map[K]*call[V]
}

type call[V any] struct {
	done    chan struct{}
	val     V
	err     error
	waiters int // callers merged into this one
}

// Do runs fn for key unless a call for key is already running, in which case
// it waits for that call's result. shared reports a merged call. A waiter
// whose ctx ends stops waiting; the running call goes on for the others.
// fn runs with a context detached from any one caller's cancellation, so one
// impatient reader cannot fail the fetch for everyone else waiting on it.
func (g *Group[K, V]) Do(ctx context.Context, key K, fn func(context.Context) (V, error)) (v V, shared bool, err error) {
	g.mu.Lock()
	if g.calls == nil {
		g.calls = map[K]*call[V]{}
	}
	if c, ok := g.calls[key]; ok {
		c.waiters++
		g.mu.Unlock()
		select {
		case <-c.done:
			return c.val, true, c.err
		case <-ctx.Done():
			var zero V
			return zero, true, ctx.Err()
		}
	}
	c := &call[V]{done: make(chan struct{})}
	g.calls[key] = c
	g.mu.Unlock()

	c.val, c.err = fn(context.WithoutCancel(ctx))
	g.mu.Lock()
	delete(g.calls, key)
	g.mu.Unlock()
	close(c.done)
	return c.val, false, c.err
}

// Waiting returns how many callers wait on the call running for key.
func (g *Group[K, V]) Waiting(key K) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	if c := g.calls[key]; c != nil {
		return c.waiters
	}
	return 0
}
