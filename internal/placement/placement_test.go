package placement

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
)

// testKeys are shaped like the block keys callers build, so that the
// statistics below are measured on realistic, highly similar strings.
var testKeys = sync.OnceValue(func() []string {
	keys := make([]string, 200_000)
	for i := range keys {
		keys[i] = fmt.Sprintf("data\x00imagenet\x00train/n%08d/img_%d.jpg\x00v1\x00%d", i/7, i, i%7)
	}
	return keys
})

func keys(n int) []string { return testKeys()[:n] }

func members(n int) []Member {
	ms := make([]Member, n)
	for i := range ms {
		ms[i] = Member{ID: fmt.Sprintf("w%d", i+1), Addr: fmt.Sprintf("10.0.0.%d:7070", i+1), Weight: 1}
	}
	return ms
}

func without(ms []Member, id string) []Member {
	return slices.DeleteFunc(slices.Clone(ms), func(m Member) bool { return m.ID == id })
}

func owner(t *testing.T, tab *Table, key string) string {
	t.Helper()
	m, ok := tab.Owner(key)
	if !ok {
		t.Fatalf("Owner(%q): no owner in a table of %d", key, tab.Len())
	}
	return m.ID
}

func ids(ms []Member) []string {
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = m.ID
	}
	return out
}

func TestDeterministicAndOrderIndependent(t *testing.T) {
	ms := members(12)
	ms[3].Weight, ms[7].Weight = 2.5, 0.5
	ref := New(ms)
	rng := rand.New(rand.NewPCG(1, 2))
	for round := range 5 {
		shuffled := slices.Clone(ms)
		rng.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
		tab := New(shuffled)
		for _, k := range keys(2000) {
			want := ids(ref.Owners(nil, k, 4))
			if got := ids(tab.Owners(nil, k, 4)); !slices.Equal(got, want) {
				t.Fatalf("round %d, key %q: owners %v after shuffling, %v before", round, k, got, want)
			}
			if again := ids(ref.Owners(nil, k, 4)); !slices.Equal(again, want) {
				t.Fatalf("key %q: owners %v then %v from the same table", k, want, again)
			}
		}
	}
}

// TestRemoveMovesOnlyItsKeys checks the property that makes a worker failure
// cheap: only the keys of the departed worker change owner.
func TestRemoveMovesOnlyItsKeys(t *testing.T) {
	for _, n := range []int{3, 5, 10, 20} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			ms := members(n)
			gone := ms[n/2].ID
			before, after := New(ms), New(without(ms, gone))
			moved := 0
			for _, k := range keys(100_000) {
				was, is := owner(t, before, k), owner(t, after, k)
				if was == is {
					continue
				}
				moved++
				if was != gone {
					t.Fatalf("key %q moved from %s to %s although only %s left", k, was, is, gone)
				}
			}
			frac, bound := float64(moved)/100_000, 1/float64(n)+0.02
			t.Logf("%d workers, removed %s: %.4f of keys moved (expected %.4f)", n, gone, frac, 1/float64(n))
			if frac > bound {
				t.Errorf("%.4f of keys moved, want <= %.4f", frac, bound)
			}
			if frac < 1/float64(n)-0.02 {
				t.Errorf("%.4f of keys moved, want about %.4f: the removed worker owned too few", frac, 1/float64(n))
			}
		})
	}
}

func TestAddMovesOnlyToNewMember(t *testing.T) {
	for _, n := range []int{3, 5, 10, 20} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			ms := members(n)
			newcomer := Member{ID: "new", Addr: "10.0.1.1:7070"}
			before, after := New(ms), New(append(slices.Clone(ms), newcomer))
			moved := 0
			for _, k := range keys(100_000) {
				was, is := owner(t, before, k), owner(t, after, k)
				if was == is {
					continue
				}
				moved++
				if is != newcomer.ID {
					t.Fatalf("key %q moved from %s to %s, not to the new member", k, was, is)
				}
			}
			frac, want := float64(moved)/100_000, 1/float64(n+1)
			t.Logf("%d+1 workers: %.4f of keys moved (expected %.4f)", n, frac, want)
			if math.Abs(frac-want) > 0.02 {
				t.Errorf("%.4f of keys moved to the new member, want %.4f ± 0.02", frac, want)
			}
		})
	}
}

func TestWeightsHonoured(t *testing.T) {
	for _, tc := range []struct {
		name    string
		weights []float64
		want    []float64 // expected relative weights; nil means weights
	}{
		{name: "1-2-3-4", weights: []float64{1, 2, 3, 4}},
		{name: "equal", weights: []float64{1, 1, 1, 1, 1}},
		{name: "skewed", weights: []float64{10, 1, 1}},
		{name: "huge", weights: []float64{3e300, 1e300}},
		{name: "non-positive-is-1", weights: []float64{0, -4, 1, 2}, want: []float64{1, 1, 1, 2}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ms := members(len(tc.weights))
			for i, w := range tc.weights {
				ms[i].Weight = w
			}
			want := tc.want
			if want == nil {
				want = tc.weights
			}
			var sum float64
			for _, w := range want {
				sum += w
			}
			tab := New(ms)
			count := map[string]int{}
			for _, k := range keys(200_000) {
				count[owner(t, tab, k)]++
			}
			for i, m := range ms {
				share := float64(count[m.ID]) / 200_000
				expected := want[i] / sum
				if dev := share/expected - 1; math.Abs(dev) > 0.05 {
					t.Errorf("%s (weight %v): share %.4f, want %.4f (off by %+.1f%%)", m.ID, m.Weight, share, expected, 100*dev)
				}
			}
		})
	}
}

// TestSecondOwnerSpread checks that the replicas of one worker's keys are
// spread over all the others, so that its failure loads them evenly.
func TestSecondOwnerSpread(t *testing.T) {
	const n = 5
	tab := New(members(n))
	pairs := map[[2]string]int{}
	var dst []Member
	for _, k := range keys(200_000) {
		dst = tab.Owners(dst[:0], k, 2)
		pairs[[2]string{dst[0].ID, dst[1].ID}]++
	}
	want := 200_000.0 / (n * (n - 1))
	for _, a := range tab.Members() {
		for _, b := range tab.Members() {
			if a.ID == b.ID {
				continue
			}
			if got := float64(pairs[[2]string{a.ID, b.ID}]); math.Abs(got/want-1) > 0.05 {
				t.Errorf("(first %s, second %s): %v keys, want %.0f ± 5%%", a.ID, b.ID, got, want)
			}
		}
	}
}

func TestOwners(t *testing.T) {
	for _, tc := range []struct{ members, r int }{
		{1, 1}, {3, 2}, {3, 3}, {3, 10}, {10, 3}, {40, 16}, {40, 17}, {40, 40}, {100, 25},
	} {
		t.Run(fmt.Sprintf("%d-of-%d", tc.r, tc.members), func(t *testing.T) {
			ms := members(tc.members)
			for i := range ms {
				ms[i].Weight = float64(1 + i%3)
			}
			tab := New(ms)
			wantLen := min(tc.r, tc.members)
			for _, k := range keys(500) {
				got := tab.Owners(nil, k, tc.r)
				if len(got) != wantLen {
					t.Fatalf("key %q: %d owners, want %d", k, len(got), wantLen)
				}
				if seen := slices.Compact(slices.Sorted(slices.Values(ids(got)))); len(seen) != len(got) {
					t.Fatalf("key %q: owners %v are not distinct", k, ids(got))
				}
				if first := owner(t, tab, k); got[0].ID != first {
					t.Fatalf("key %q: Owners starts with %s, Owner says %s", k, got[0].ID, first)
				}
				// The partial selection and the full sort must agree on
				// every prefix.
				all := tab.Owners(nil, k, tc.members)
				if !slices.Equal(got, all[:wantLen]) {
					t.Fatalf("key %q: Owners(%d) = %v, but the first %d of all are %v", k, tc.r, ids(got), wantLen, ids(all[:wantLen]))
				}
			}
		})
	}
}

func TestOwnersAppendsToDst(t *testing.T) {
	tab := New(members(5))
	dst := []Member{{ID: "keep"}}
	got := tab.Owners(dst, "k", 2)
	if len(got) != 3 || got[0].ID != "keep" {
		t.Fatalf("Owners(dst) = %v, want dst followed by 2 owners", ids(got))
	}
}

// TestReplicaPromotion is the HRW property that keeps data available: when a
// key's first owner leaves, its second owner (which holds a replica) takes
// over, and the remaining order is kept.
func TestReplicaPromotion(t *testing.T) {
	ms := members(10)
	ms[2].Weight = 3
	tab := New(ms)
	smaller := map[string]*Table{}
	for _, k := range keys(20_000) {
		old := tab.Owners(nil, k, 4)
		first := old[0].ID
		if smaller[first] == nil {
			smaller[first] = New(without(ms, first))
		}
		got := smaller[first].Owners(nil, k, 3)
		if !slices.Equal(ids(got), ids(old[1:])) {
			t.Fatalf("key %q: owners %v; without %s they are %v, want %v", k, ids(old), first, ids(got), ids(old[1:]))
		}
	}
}

func TestEmptyTable(t *testing.T) {
	for name, tab := range map[string]*Table{"New(nil)": New(nil), "nil": nil, "zero": {}} {
		t.Run(name, func(t *testing.T) {
			if m, ok := tab.Owner("k"); ok {
				t.Errorf("Owner = %v, true on an empty table", m)
			}
			dst := make([]Member, 1, 4)
			dst[0].ID = "keep"
			if got := tab.Owners(dst, "k", 3); len(got) != 1 || got[0].ID != "keep" {
				t.Errorf("Owners changed dst to %v", ids(got))
			}
			if tab.Len() != 0 || len(tab.Members()) != 0 {
				t.Errorf("Len = %d, Members = %v", tab.Len(), tab.Members())
			}
		})
	}
	// n <= 0 on a full table also leaves dst alone.
	if got := New(members(3)).Owners(nil, "k", 0); got != nil {
		t.Errorf("Owners(n=0) = %v", ids(got))
	}
	if got := New(members(3)).Owners(nil, "k", -1); got != nil {
		t.Errorf("Owners(n=-1) = %v", ids(got))
	}
}
