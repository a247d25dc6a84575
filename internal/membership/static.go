package membership

import (
	"context"
	"sync"
	"time"
)

// Static is a fixed member list, typically from the configuration file; make
// one with NewStatic. Every member is in the ring and taken to be live. It
// never changes, so Watch only has the initial view to deliver.
type Static struct {
	view      *View
	since     time.Time
	closed    chan struct{}
	closeOnce sync.Once
}

var _ Source = (*Static)(nil)

// NewStatic validates members (see Validate) and builds a Static source from
// them. An empty list is allowed (a source with no workers); a weight of 0
// means 1. States given are ignored: every member is Live.
func NewStatic(members []Member) (*Static, error) {
	if err := Validate(members); err != nil {
		return nil, err
	}
	now := time.Now()
	live := make([]Member, len(members))
	for i, m := range members {
		m.State = Live
		live[i] = m
	}
	return &Static{view: NewView(live), since: now, closed: make(chan struct{})}, nil
}

// Current returns the view of the configured members.
func (s *Static) Current() *View { return s.view }

// Health is always OK: there is no backend to lose.
func (s *Static) Health() Health { return Health{Backend: "static", OK: true, Since: s.since} }

// Watch calls fn once with the view, then blocks until ctx ends or the
// source is closed, since a static list has nothing more to announce. It
// returns ctx.Err(), or ErrClosed after Close.
func (s *Static) Watch(ctx context.Context, fn func(*View)) error {
	// Check first so that a watcher started after Close or with a dead
	// context does not get a view it would act on after shutdown.
	select {
	case <-s.closed:
		return ErrClosed
	default:
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	fn(s.view)
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-s.closed:
		return ErrClosed
	}
}

// Close releases every pending Watch. It is safe to call more than once.
func (s *Static) Close() error {
	s.closeOnce.Do(func() { close(s.closed) })
	return nil
}
