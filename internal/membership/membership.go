// Package membership tells clients and workers who the live workers are.
// granary has no master, so every process needs the same member list to
// compute the same placement; a Source delivers that list as a
// placement.Table and announces each change.
//
// Static, the fixed list from the configuration, is the embedded default.
// Dynamic backends (etcd, Kubernetes) implement the same Source interface so
// that the rest of granary does not care where the list comes from.
package membership

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"strconv"
	"sync"

	"github.com/granary-cache/granary/internal/placement"
)

// Source tells who the live workers are.
type Source interface {
	// Current returns the current placement table (never nil; may be empty).
	Current() *placement.Table
	// Watch calls fn with each new table until ctx ends (the static source
	// calls it once with the initial table and then waits for ctx). It
	// returns ctx.Err() or a backend error.
	Watch(ctx context.Context, fn func(*placement.Table)) error
	Close() error
}

// ErrClosed is returned by Watch once the source has been closed, so that a
// watcher blocked on a source being shut down is released even if its
// context lives on.
var ErrClosed = errors.New("membership: source closed")

// MemberError reports what is wrong with one member of a configured list.
type MemberError struct {
	Index int    // position in the list given to NewStatic
	ID    string // the member's ID as given, possibly empty
	Err   error  // what is wrong
}

func (e *MemberError) Error() string {
	return fmt.Sprintf("member %d (%q): %v", e.Index, e.ID, e.Err)
}

func (e *MemberError) Unwrap() error { return e.Err }

// Static is a fixed member list, typically from the configuration file; make
// one with NewStatic. It never changes, so Watch only has the initial table
// to deliver.
type Static struct {
	table     *placement.Table
	closed    chan struct{}
	closeOnce sync.Once
}

var _ Source = (*Static)(nil)

// NewStatic validates members and builds a Static source from them. Unlike
// placement.New, which silently fixes up whatever a backend reports, a
// configured list is checked strictly: a typo there would otherwise send
// keys to a worker nobody can reach. Every problem found is reported, each as
// a *MemberError naming the member's index and ID. An empty list is allowed
// (a source with no workers); a weight of 0 means 1.
func NewStatic(members []placement.Member) (*Static, error) {
	if err := Validate(members); err != nil {
		return nil, err
	}
	return &Static{table: placement.New(members), closed: make(chan struct{})}, nil
}

// Validate checks a member list as NewStatic does; dynamic backends can use
// it to reject a malformed registration before it reaches placement.
func Validate(members []placement.Member) error {
	var errs []error
	bad := func(i int, m placement.Member, format string, args ...any) {
		errs = append(errs, &MemberError{Index: i, ID: m.ID, Err: fmt.Errorf(format, args...)})
	}
	first := make(map[string]int, len(members))
	for i, m := range members {
		if m.ID == "" {
			bad(i, m, "empty ID")
		} else if j, dup := first[m.ID]; dup {
			bad(i, m, "duplicate ID, already used by member %d", j)
		} else {
			first[m.ID] = i
		}
		if err := checkAddr(m.Addr); err != nil {
			bad(i, m, "%w", err)
		}
		switch {
		case math.IsNaN(m.Weight) || math.IsInf(m.Weight, 0):
			bad(i, m, "weight %v is not a finite number", m.Weight)
		case m.Weight < 0:
			bad(i, m, "negative weight %v", m.Weight)
		}
	}
	return errors.Join(errs...)
}

// checkAddr accepts host:port with a non-empty host and a numeric port in
// 1-65535. An empty host (":7070") is refused: it would make every client dial
// itself. Named ports ("host:http") are refused too, because resolving them
// depends on each machine's services database.
func checkAddr(addr string) error {
	if addr == "" {
		return errors.New("empty address, want host:port")
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("address is not host:port: %w", err)
	}
	if host == "" {
		return fmt.Errorf("address %q has no host", addr)
	}
	if p, err := strconv.ParseUint(port, 10, 16); err != nil || p == 0 {
		return fmt.Errorf("address %q: port %q is not a number in 1-65535", addr, port)
	}
	return nil
}

// Current returns the table built from the configured members.
func (s *Static) Current() *placement.Table { return s.table }

// Watch calls fn once with the table, then blocks until ctx ends or the
// source is closed, since a static list has nothing more to announce. It
// returns ctx.Err(), or ErrClosed after Close.
func (s *Static) Watch(ctx context.Context, fn func(*placement.Table)) error {
	// Check first so that a watcher started after Close or with a dead
	// context does not get a table it would act on after shutdown.
	select {
	case <-s.closed:
		return ErrClosed
	default:
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	fn(s.table)
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
