package granarytest

import (
	"context"
	"testing"

	"github.com/granary-cache/granary/internal/client"
	"github.com/granary-cache/granary/internal/localcluster"
)

// InProcess starts workers in this process (localcluster, with their
// state and memory tiers in temporary directories unless o says
// otherwise) and returns a client of them; both stop when the test ends.
func InProcess(t testing.TB, o localcluster.Options) *client.Client {
	t.Helper()
	if o.StateDir == "" {
		o.StateDir = t.TempDir()
	}
	if o.MemDir == "" {
		o.MemDir = t.TempDir()
	}
	cl, err := localcluster.Start(o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- cl.Serve(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	c, err := client.New(cl.Client)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}
