package membership

import (
	"context"
	"errors"
	"math"
	"strings"
	"testing"
	"time"
)

func TestNewStaticValidation(t *testing.T) {
	ok := Member{ID: "w1", Addr: "10.0.0.1:7070", Weight: 1}
	for _, tc := range []struct {
		name    string
		members []Member
		want    []string // one substring per expected error; nil means valid
	}{
		{name: "valid", members: []Member{ok, {ID: "w2", Addr: "[::1]:7070"}, {ID: "w3", Addr: "host.example:1", Weight: 2.5}}},
		{name: "empty list", members: nil},
		{name: "empty ID", members: []Member{ok, {Addr: "a:1"}}, want: []string{`member 1 (""): empty ID`}},
		{name: "duplicate ID", members: []Member{ok, {ID: "w2", Addr: "a:1"}, {ID: "w1", Addr: "b:1"}},
			want: []string{`member 2 ("w1"): duplicate ID, already used by member 0`}},
		{name: "empty addr", members: []Member{{ID: "w1"}}, want: []string{`member 0 ("w1"): empty address`}},
		{name: "no port", members: []Member{{ID: "w1", Addr: "10.0.0.1"}}, want: []string{`member 0 ("w1"): address is not host:port`}},
		{name: "bare IPv6", members: []Member{{ID: "w1", Addr: "::1:7070"}}, want: []string{`member 0 ("w1"): address is not host:port`}},
		{name: "no host", members: []Member{{ID: "w1", Addr: ":7070"}}, want: []string{`member 0 ("w1"): address ":7070" has no host`}},
		{name: "named port", members: []Member{{ID: "w1", Addr: "h:http"}}, want: []string{`port "http" is not a number`}},
		{name: "port 0", members: []Member{{ID: "w1", Addr: "h:0"}}, want: []string{`port "0" is not a number in 1-65535`}},
		{name: "port too big", members: []Member{{ID: "w1", Addr: "h:65536"}}, want: []string{`port "65536"`}},
		{name: "negative weight", members: []Member{ok, {ID: "w2", Addr: "a:1", Weight: -1}}, want: []string{`member 1 ("w2"): negative weight -1`}},
		{name: "NaN weight", members: []Member{{ID: "w1", Addr: "a:1", Weight: math.NaN()}}, want: []string{`member 0 ("w1"): weight NaN is not a finite number`}},
		{name: "infinite weight", members: []Member{{ID: "w1", Addr: "a:1", Weight: math.Inf(1)}}, want: []string{`weight +Inf`}},
		{name: "all problems reported", members: []Member{{Addr: "x", Weight: -2}, ok, {ID: "w1", Addr: "y:1"}},
			want: []string{`member 0 (""): empty ID`, `member 0 (""): address is not host:port`, `member 0 (""): negative weight -2`, `member 2 ("w1"): duplicate ID`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := NewStatic(tc.members)
			if tc.want == nil {
				if err != nil {
					t.Fatalf("NewStatic: %v", err)
				}
				if got := s.Current().Len(); got != len(tc.members) {
					t.Fatalf("table has %d members, want %d", got, len(tc.members))
				}
				return
			}
			if err == nil {
				t.Fatalf("NewStatic accepted %+v", tc.members)
			}
			if s != nil {
				t.Errorf("NewStatic returned a source along with error %v", err)
			}
			var me *MemberError
			if !errors.As(err, &me) {
				t.Errorf("error %v is not a *MemberError", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			if n := strings.Count(err.Error(), "\n") + 1; n != len(tc.want) {
				t.Errorf("%d problems reported, want %d:\n%v", n, len(tc.want), err)
			}
		})
	}
}

func TestStaticCopiesMembers(t *testing.T) {
	ms := []Member{{ID: "w1", Addr: "a:1"}, {ID: "w2", Addr: "b:1"}}
	s, err := NewStatic(ms)
	if err != nil {
		t.Fatal(err)
	}
	ms[0].Addr = "changed:1"
	if got := s.Current().Members()[0].Addr; got != "a:1" {
		t.Errorf("member w1 has address %q, want a:1", got)
	}
}

func newTestStatic(t *testing.T) *Static {
	t.Helper()
	s, err := NewStatic([]Member{{ID: "w1", Addr: "a:1"}, {ID: "w2", Addr: "b:1"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// watch runs Watch in the background and reports each table and the result.
func watch(ctx context.Context, s *Static) (<-chan *View, <-chan error) {
	tables := make(chan *View, 10)
	done := make(chan error, 1)
	go func() { done <- s.Watch(ctx, func(v *View) { tables <- v }) }()
	return tables, done
}

func TestStaticWatchUntilCancel(t *testing.T) {
	s := newTestStatic(t)
	ctx, cancel := context.WithCancel(t.Context())
	tables, done := watch(ctx, s)
	if got := <-tables; got != s.Current() {
		t.Errorf("Watch delivered %v, want Current() %v", got, s.Current())
	}
	select {
	case err := <-done:
		t.Fatalf("Watch returned %v before ctx ended", err)
	default:
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("Watch returned %v, want context.Canceled", err)
	}
	if n := len(tables); n != 0 {
		t.Errorf("Watch delivered %d more tables, want the initial one only", n)
	}
}

func TestStaticWatchDeadline(t *testing.T) {
	s := newTestStatic(t)
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Millisecond)
	defer cancel()
	tables, done := watch(ctx, s)
	if err := <-done; !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Watch returned %v, want context.DeadlineExceeded", err)
	}
	if n := len(tables); n != 1 {
		t.Errorf("Watch delivered %d tables, want 1", n)
	}
}

func TestStaticClose(t *testing.T) {
	s := newTestStatic(t)
	tables, done := watch(t.Context(), s)
	<-tables
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := <-done; !errors.Is(err, ErrClosed) {
		t.Errorf("Watch returned %v after Close, want ErrClosed", err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	// A watcher arriving after Close gets nothing to act on.
	called := false
	if err := s.Watch(t.Context(), func(*View) { called = true }); !errors.Is(err, ErrClosed) || called {
		t.Errorf("Watch after Close = %v (fn called: %v), want ErrClosed without a call", err, called)
	}
	if s.Current().Len() != 2 {
		t.Errorf("Current after Close has %d members, want 2", s.Current().Len())
	}
}

func TestStaticWatchDeadContext(t *testing.T) {
	s := newTestStatic(t)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	called := false
	if err := s.Watch(ctx, func(*View) { called = true }); !errors.Is(err, context.Canceled) || called {
		t.Errorf("Watch(cancelled ctx) = %v (fn called: %v), want context.Canceled without a call", err, called)
	}
}
