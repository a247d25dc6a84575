// Package membership tells clients and workers who the workers are. granary
// has no master, so every process needs the same member list to compute the
// same placement; a Source delivers that list as a View and announces each
// change.
//
// A View holds two sets, as cluster caches that survive real outages keep
// them:
//
//   - the ring: the workers that own a share of the keys, by stable identity
//     (a worker's ID is kept in its state directory and survives restarts);
//   - liveness: which of them answer now.
//
// Keys are placed over the ring, and a reader skips a ring member that is not
// live and goes to the next owner. With rendezvous hashing that is the same
// as placing over the live members of the ring, which is what View.Owners
// does; but a member that is down for a short while, or restarts, keeps its
// place in the ring, so when it is back every key goes where it went before:
// an outage moves no keys for good. A member that stays down longer than the
// ring grace leaves the ring.
//
// Static, the fixed list from the configuration, is the embedded default: all
// its members are in the ring and taken to be live (a reader finds out
// otherwise by trying, see Reach). Etcd keeps both sets in etcd, with one
// key per live worker under a lease. A Kubernetes backend implements the same
// Source interface.
package membership

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/granary-cache/granary/internal/placement"
)

// State is where a member stands.
type State int

// Member states.
const (
	// Live: in the ring and answering; it owns its share of the keys.
	Live State = iota
	// NotLive: in the ring but not heard from. Readers go to the next owner
	// of its keys; it keeps its place until the ring grace runs out.
	NotLive
	// Leaving: answering, but taken out of the ring (`granary member
	// remove`): it owns nothing and serves what it still holds until it
	// stops.
	Leaving
)

var stateNames = [...]string{Live: "live", NotLive: "not live", Leaving: "leaving"}

func (s State) String() string {
	if int(s) < len(stateNames) {
		return stateNames[s]
	}
	return "state(" + strconv.Itoa(int(s)) + ")"
}

// MarshalText implements encoding.TextMarshaler.
func (s State) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (s *State) UnmarshalText(b []byte) error {
	for i, n := range stateNames {
		if string(b) == n {
			*s = State(i)
			return nil
		}
	}
	return fmt.Errorf("unknown member state %q", b)
}

// Member is one worker as membership knows it.
type Member struct {
	ID     string  `json:"id"`
	Addr   string  `json:"addr"`             // data endpoint, host:port (for a member that is not live: its last one)
	Socket string  `json:"socket,omitempty"` // unix socket, for clients on its host
	Host   string  `json:"host,omitempty"`   // the machine it runs on: a client with the same host may read its block files
	Zone   string  `json:"zone,omitempty"`
	Weight float64 `json:"weight"` // share of the keys, relative to the others (<= 0 means 1)
	State  State   `json:"state"`
	// Since is when the member registered (Live, Leaving) or was first seen
	// down (NotLive); zero when unknown.
	Since time.Time `json:"since,omitzero"`
}

func (m Member) placement() placement.Member {
	return placement.Member{ID: m.ID, Addr: m.Addr, Weight: m.Weight}
}

func (m Member) equal(o Member) bool {
	return m.ID == o.ID && m.Addr == o.Addr && m.Socket == o.Socket && m.Host == o.Host && m.Zone == o.Zone &&
		m.Weight == o.Weight && m.State == o.State && m.Since.Equal(o.Since)
}

// View is an immutable snapshot of the members, safe for concurrent use. A
// nil *View is an empty view.
type View struct {
	members []Member // sorted by ID
	byID    map[string]int
	table   *placement.Table // the live ring members: where keys go
}

// NewView builds a view from members, which it copies. Members are ordered by
// ID; if two share an ID, the last wins.
func NewView(members []Member) *View {
	ms := slices.Clone(members)
	slices.SortStableFunc(ms, func(a, b Member) int { return strings.Compare(a.ID, b.ID) })
	out := ms[:0]
	for i := range ms {
		if i+1 < len(ms) && ms[i+1].ID == ms[i].ID {
			continue
		}
		out = append(out, ms[i])
	}
	v := &View{members: slices.Clip(out), byID: make(map[string]int, len(out))}
	var live []placement.Member
	for i, m := range v.members {
		v.byID[m.ID] = i
		if m.State == Live {
			live = append(live, m.placement())
		}
	}
	v.table = placement.New(live)
	return v
}

// Members returns every member (ring members, live or not, and leaving
// ones), sorted by ID.
func (v *View) Members() []Member {
	if v == nil {
		return nil
	}
	return slices.Clone(v.members)
}

// Member returns the member called id.
func (v *View) Member(id string) (Member, bool) {
	if v == nil {
		return Member{}, false
	}
	i, ok := v.byID[id]
	if !ok {
		return Member{}, false
	}
	return v.members[i], true
}

// Table is the placement table of the live ring members.
func (v *View) Table() *placement.Table {
	if v == nil {
		return nil
	}
	return v.table
}

// Len is the number of live ring members: those that own keys.
func (v *View) Len() int { return v.Table().Len() }

// Owners appends to dst the first n live ring members for key, best first
// (see placement.Table.Owners).
func (v *View) Owners(dst []placement.Member, key string, n int) []placement.Member {
	return v.Table().Owners(dst, key, n)
}

// Count returns how many members are in each state.
func (v *View) Count() map[State]int {
	out := map[State]int{Live: 0, NotLive: 0, Leaving: 0}
	if v != nil {
		for _, m := range v.members {
			out[m.State]++
		}
	}
	return out
}

// Equal reports whether two views hold the same members in the same states.
func (v *View) Equal(o *View) bool {
	a, b := v.Members(), o.Members()
	return slices.EqualFunc(a, b, Member.equal)
}

// Source tells who the workers are.
type Source interface {
	// Current returns the current view (never nil; may be empty).
	Current() *View
	// Watch calls fn with the current view and then with each new one until
	// ctx ends or the source is closed. It returns ctx.Err() or ErrClosed.
	Watch(ctx context.Context, fn func(*View)) error
	// Health says whether the source is in touch with its backend. A source
	// that lost it keeps the last view it had.
	Health() Health
	Close() error
}

// Health is the state of a Source's link to its backend.
type Health struct {
	Backend string    `json:"backend"` // static, etcd, kubernetes
	OK      bool      `json:"ok"`
	Error   string    `json:"error,omitempty"` // why not, when not OK
	Since   time.Time `json:"since"`           // when it entered this state
}

// String says it in a line, for /healthz and logs.
func (h Health) String() string {
	if h.OK {
		return fmt.Sprintf("membership %s: ok", h.Backend)
	}
	return fmt.Sprintf("membership %s: unreachable since %s (%s); serving with the last member set",
		h.Backend, h.Since.UTC().Format(time.RFC3339), h.Error)
}

// ErrClosed is returned by Watch once the source has been closed, so that a
// watcher blocked on a source being shut down is released even if its
// context lives on.
var ErrClosed = errors.New("membership: source closed")

// MemberError reports what is wrong with one member of a configured list.
type MemberError struct {
	Index int    // position in the list
	ID    string // the member's ID as given, possibly empty
	Err   error  // what is wrong
}

func (e *MemberError) Error() string {
	return fmt.Sprintf("member %d (%q): %v", e.Index, e.ID, e.Err)
}

func (e *MemberError) Unwrap() error { return e.Err }

// Validate checks a member list strictly: an empty or duplicate ID, an
// address that is not host:port, a weight that is negative or not finite.
// Every problem is reported, each as a *MemberError. A typo in a list would
// otherwise send keys to a worker nobody can reach.
func Validate(members []Member) error {
	var errs []error
	bad := func(i int, m Member, format string, args ...any) {
		errs = append(errs, &MemberError{Index: i, ID: m.ID, Err: fmt.Errorf(format, args...)})
	}
	first := make(map[string]int, len(members))
	for i, m := range members {
		if err := CheckID(m.ID); err != nil {
			bad(i, m, "%w", err)
		} else if j, dup := first[m.ID]; dup {
			bad(i, m, "duplicate ID, already used by member %d", j)
		} else {
			first[m.ID] = i
		}
		if err := CheckAddr(m.Addr); err != nil {
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

// CheckID accepts a member ID: 1 to 128 bytes, none of them a slash, a
// space or a control character (IDs are parts of etcd keys and of names on
// Kubernetes).
func CheckID(id string) error {
	if id == "" {
		return errors.New("empty ID")
	}
	if len(id) > 128 {
		return fmt.Errorf("ID of %d bytes is longer than 128", len(id))
	}
	for _, r := range id {
		if r == '/' || r <= ' ' || r == 0x7f {
			return fmt.Errorf("ID %q has a slash, a space or a control character", id)
		}
	}
	return nil
}

// CheckAddr accepts host:port with a non-empty host and a numeric port in
// 1-65535. An empty host (":7070") is refused: it would make every client dial
// itself. Named ports ("host:http") are refused too, because resolving them
// depends on each machine's services database.
func CheckAddr(addr string) error {
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
