// Package placement decides which workers own a key. granary has no master:
// every client and every worker computes owners locally from the same member
// list, so placement must be a pure, deterministic function of (members, key).
//
// It uses weighted rendezvous hashing (highest random weight, HRW): each
// member scores every key with -weight/ln(h), h being a uniform number in
// (0, 1) derived from a stable hash of (member ID, key), and the key's owners
// are the members with the highest scores, best first. This gives:
//
//   - minimal movement: adding or removing a member only moves the keys that
//     the member gains or loses, and nothing else;
//   - replica stability: removing a key's first owner promotes its second
//     owner, so a replica already holds the data when a worker dies;
//   - weights: a member of weight w owns a share w/sum(weights) of the keys;
//   - spread: the keys of a departed member are split among all the others in
//     proportion to their weights, not dumped on a neighbour.
//
// Lookups cost O(len(members)), which is cheap for the tens to hundreds of
// workers a cache cluster has.
package placement

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
)

// Member is one worker as placement sees it.
type Member struct {
	ID     string  // stable, unique name of the worker (e.g. "w1" or a hostname)
	Addr   string  // host:port of its data endpoint
	Weight float64 // relative capacity; <= 0 means 1
}

// Table is an immutable snapshot of the members, safe for concurrent use.
// The zero value and a nil *Table are empty tables.
type Table struct {
	members []Member  // sorted by ID, unique IDs, effective weights
	seeds   []uint64  // memberSeed(members[i].ID)
	scale   []float64 // members[i].Weight / max weight, in (0, 1]
	uniform bool      // all weights equal: rank by h alone, no logarithm
}

// New builds a table from members, which it copies; the caller may reuse the
// slice. Members are ordered by ID so that the input order never matters.
// New never fails, so that a table can always be built from whatever a
// membership backend reports: if two members share an ID the last one in the
// slice wins, and a weight that is not a finite positive number counts as 1.
// Use NewChecked to reject such input instead.
func New(members []Member) *Table {
	ms := slices.Clone(members)
	for i := range ms {
		ms[i].Weight = effectiveWeight(ms[i].Weight)
	}
	// Stable, so that among equal IDs the input order survives and the
	// dedup below can keep the last one.
	slices.SortStableFunc(ms, func(a, b Member) int { return strings.Compare(a.ID, b.ID) })
	out := ms[:0]
	for i := range ms {
		if i+1 < len(ms) && ms[i+1].ID == ms[i].ID {
			continue
		}
		out = append(out, ms[i])
	}
	ms = slices.Clip(out)

	t := &Table{
		members: ms,
		seeds:   make([]uint64, len(ms)),
		scale:   make([]float64, len(ms)),
		uniform: true,
	}
	maxW := 0.0
	for i, m := range ms {
		t.seeds[i] = memberSeed(m.ID)
		maxW = max(maxW, m.Weight)
		if m.Weight != ms[0].Weight {
			t.uniform = false
		}
	}
	// Scores are scale-invariant; dividing by the largest weight keeps
	// -w/ln(h) finite even for absurd weights like 1e308.
	for i, m := range ms {
		t.scale[i] = m.Weight / maxW
	}
	return t
}

// NewChecked is New for input that should be well formed, such as a
// configuration file: it reports an empty ID, a duplicate ID or a weight that
// is NaN or infinite instead of silently fixing it. Weights <= 0 still mean 1.
func NewChecked(members []Member) (*Table, error) {
	var errs []error
	first := make(map[string]int, len(members))
	for i, m := range members {
		if m.ID == "" {
			errs = append(errs, fmt.Errorf("member %d (%q): empty ID", i, m.ID))
		} else if j, dup := first[m.ID]; dup {
			errs = append(errs, fmt.Errorf("member %d (%q): duplicate ID, also member %d", i, m.ID, j))
		} else {
			first[m.ID] = i
		}
		if math.IsNaN(m.Weight) || math.IsInf(m.Weight, 0) {
			errs = append(errs, fmt.Errorf("member %d (%q): weight %v is not a finite number", i, m.ID, m.Weight))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("placement: %w", err)
	}
	return New(members), nil
}

func effectiveWeight(w float64) float64 {
	if !(w > 0) || math.IsInf(w, 1) {
		return 1
	}
	return w
}

// Members returns a copy of the members, sorted by ID, with effective
// weights (a weight that was <= 0 or not finite reads as 1).
func (t *Table) Members() []Member {
	if t == nil {
		return nil
	}
	return slices.Clone(t.members)
}

// Len returns the number of members.
func (t *Table) Len() int {
	if t == nil {
		return 0
	}
	return len(t.members)
}

// Equal reports whether two tables hold the same members (IDs, addresses and
// effective weights), and so place every key identically. Membership backends
// use it to avoid announcing a table that did not change.
func (t *Table) Equal(o *Table) bool {
	if t.Len() != o.Len() {
		return false
	}
	for i := range t.Len() {
		if t.members[i] != o.members[i] {
			return false
		}
	}
	return true
}

// score is member i's bid for the key whose hash is kh; the highest bid wins.
func (t *Table) score(i int, kh uint64) float64 {
	h := unit(combine(kh, t.seeds[i]))
	if t.uniform {
		// -w/ln(h) is increasing in h for a fixed w, so with equal weights
		// h ranks members exactly as the full formula does, minus a
		// logarithm per member.
		return h
	}
	// math.Log is assembly on amd64 and Go elsewhere, so two architectures
	// may disagree in the last bit. That can only swap two members whose
	// scores are within an ulp of each other, roughly one key in 2^50;
	// with equal weights (above) placement uses no floating-point rounding
	// at all.
	return -t.scale[i] / math.Log(h)
}

// candidate is a member index with its score for the current key.
type candidate struct {
	score float64
	idx   int
}

// before orders candidates best first. Ties (equal float scores, about one
// chance in 2^52 per pair) go to the lower index, i.e. the smaller ID, so
// that every process still agrees.
func (c candidate) before(d candidate) bool {
	return c.score > d.score || (c.score == d.score && c.idx < d.idx)
}

// Owner returns the preferred member for key, or false if the table is
// empty.
func (t *Table) Owner(key string) (Member, bool) {
	if t.Len() == 0 {
		return Member{}, false
	}
	return t.members[t.best(hashString(key))], true
}

func (t *Table) best(kh uint64) int {
	best := candidate{score: t.score(0, kh), idx: 0}
	for i := 1; i < len(t.members); i++ {
		if c := (candidate{t.score(i, kh), i}); c.before(best) {
			best = c
		}
	}
	return best.idx
}

// maxPartial is the largest n that Owners ranks in a fixed array on the
// stack. Replication factors are small, so this covers every real call
// without allocating; beyond it Owners sorts a heap-allocated slice.
const maxPartial = 16

// Owners appends to dst the first n members for key in preference order and
// returns the extended slice; n is capped at Len(). The first is always
// Owner(key); the others are where replicas go and, in order, who takes over
// when the ones before them leave. key is any string; callers build e.g.
// "meta\x00dataset\x00dir" or "data\x00dataset\x00path\x00version\x00block".
// Owners does not allocate when n <= 16 and dst has room for n more members.
func (t *Table) Owners(dst []Member, key string, n int) []Member {
	n = min(n, t.Len())
	if n <= 0 {
		return dst
	}
	kh := hashString(key)
	if n == 1 {
		return append(dst, t.members[t.best(kh)])
	}
	if n > maxPartial {
		all := make([]candidate, len(t.members))
		for i := range all {
			all[i] = candidate{t.score(i, kh), i}
		}
		slices.SortFunc(all, func(a, b candidate) int {
			if a.before(b) {
				return -1
			}
			return 1 // indices are distinct, so never equal
		})
		for _, c := range all[:n] {
			dst = append(dst, t.members[c.idx])
		}
		return dst
	}

	// Partial selection: keep the n best seen so far, sorted, in an
	// insertion-sorted array. For the small n used for replicas this is
	// O(len(members)*n) comparisons with no allocation.
	var buf [maxPartial]candidate
	top := buf[:0]
	for i := range t.members {
		c := candidate{t.score(i, kh), i}
		j := len(top)
		if j < n {
			top = append(top, c)
		} else if c.before(top[n-1]) {
			j = n - 1
			top[j] = c
		} else {
			continue
		}
		for ; j > 0 && top[j].before(top[j-1]); j-- {
			top[j], top[j-1] = top[j-1], top[j]
		}
	}
	for _, c := range top {
		dst = append(dst, t.members[c.idx])
	}
	return dst
}
