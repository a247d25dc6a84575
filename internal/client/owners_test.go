package client

import (
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/granary-cache/granary/internal/block"
	"github.com/granary-cache/granary/internal/placement"
)

func ownerIDs(ms []placement.Member) []string {
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = m.ID
	}
	return out
}

func testKeys(n int) []string {
	keys := make([]string, n)
	for i := range keys {
		keys[i] = block.PlacementKey("a", fmt.Sprintf("dir%d/file-%d.jpg", i%17, i), int64(i%5))
	}
	return keys
}

// owners returns replicas+1 owners: the replicas of placement in an order of
// the client's own, then the next owner, the same every time.
func TestOwnersAreTheReplicasThenOneMore(t *testing.T) {
	e := newEnv(t, envOpts{workers: 5, datasets: map[string]string{"a": ""}})
	c := e.c
	for _, replicas := range []int{0, 1, 2, 3, 4, 5, 20} {
		for _, key := range testKeys(200) {
			got := c.owners(key, replicas)
			r := min(max(replicas, 1), 5)
			want := min(r+1, 5)
			if len(got) != want {
				t.Fatalf("replicas %d: %d owners %v, want %d", replicas, len(got), ownerIDs(got), want)
			}
			ring := ownerIDs(c.members.Current().Owners(nil, key, want))
			ids := ownerIDs(got)
			if a, b := slices.Sorted(slices.Values(ids[:r])), slices.Sorted(slices.Values(ring[:r])); !slices.Equal(a, b) {
				t.Fatalf("replicas %d, key %q: first %d owners %v, want the replicas %v in any order", replicas, key, r, ids[:r], ring[:r])
			}
			if !slices.Equal(ids[r:], ring[r:]) {
				t.Fatalf("replicas %d, key %q: owners after the replicas %v, want %v", replicas, key, ids[r:], ring[r:])
			}
			if replicas <= 1 && !slices.Equal(ids, ring) {
				t.Fatalf("replicas %d: owners %v, want placement's order %v", replicas, ids, ring)
			}
			if again := ownerIDs(c.owners(key, replicas)); !slices.Equal(again, ids) {
				t.Fatalf("owners of %q changed from %v to %v", key, ids, again)
			}
		}
	}
}

// With replicas 2, one client reads about half the keys from each replica;
// clients with other seeds pick other replicas for the same key.
func TestOwnersSpreadOverReplicas(t *testing.T) {
	e := newEnv(t, envOpts{workers: 5, datasets: map[string]string{"a": ""}})
	c := e.c
	keys := testKeys(2000)
	// One client, many keys: each replica is first for a fair share.
	first := 0
	for _, key := range keys {
		if c.owners(key, 2)[0].ID == c.members.Current().Owners(nil, key, 1)[0].ID {
			first++
		}
	}
	if first < len(keys)*3/10 || first > len(keys)*7/10 {
		t.Errorf("the client reads %d of %d keys from placement's first owner; want about half", first, len(keys))
	}
	// Many clients (seeds), each key: both replicas are someone's first
	// pick, and each client keeps its pick.
	// 32 seeds: the chance that all pick the same of two replicas for a
	// key is 2^-31.
	seeds := []uint64{0, 1, 2, 3, 0xdeadbeef, 0x123456789, 1 << 40, 1<<63 | 5}
	for i := range uint64(24) {
		seeds = append(seeds, mix64(i+100))
	}
	for _, key := range keys[:200] {
		picked := map[string]bool{}
		for _, s := range seeds {
			c.seed = s
			first := c.owners(key, 2)[0].ID
			picked[first] = true
			if again := c.owners(key, 2)[0].ID; again != first {
				t.Fatalf("seed %x: the first owner of %q changed between calls", s, key)
			}
		}
		if len(picked) != 2 {
			t.Fatalf("key %q: every client reads it from the same replica %v", key, picked)
		}
	}
}

// Two clients pick independently: for replicas 2 they differ on about half
// the keys (the seed is mixed into every bit of the choice).
func TestOwnersSeedsPickIndependently(t *testing.T) {
	e := newEnv(t, envOpts{workers: 5, datasets: map[string]string{"a": ""}})
	c := e.c
	keys := testKeys(2000)
	for _, pair := range [][2]uint64{{1, 3}, {1, 2}, {0x1234567, 0x7654321}, {10, 12}} {
		differ := 0
		for _, key := range keys {
			c.seed = pair[0]
			a := c.owners(key, 2)[0].ID
			c.seed = pair[1]
			if c.owners(key, 2)[0].ID != a {
				differ++
			}
		}
		if differ < len(keys)*3/10 || differ > len(keys)*7/10 {
			t.Errorf("seeds %x and %x pick different first owners for %d of %d keys; want about half", pair[0], pair[1], differ, len(keys))
		}
	}
}

// Workers marked down go last, in their order; Owners leaves them out.
func TestOwnersMarkedDownGoLast(t *testing.T) {
	e := newEnv(t, envOpts{workers: 5, datasets: map[string]string{"a": ""}})
	c := e.c
	// Their pings fail, so that they stay down while the test runs.
	e.setAll(pingAnswer, answerBusy)
	key := testKeys(1)[0]
	before := ownerIDs(c.owners(key, 2))
	down1, down2 := before[0], before[2]
	c.reach.MarkDown(down1, e.byID[down1].addr(), errors.New("test"))
	got := ownerIDs(c.owners(key, 2))
	if want := []string{before[1], before[2], before[0]}; !slices.Equal(got, want) {
		t.Errorf("with %s down: owners %v, want %v", down1, got, want)
	}
	c.reach.MarkDown(down2, e.byID[down2].addr(), errors.New("test"))
	got = ownerIDs(c.owners(key, 2))
	if want := []string{before[1], before[0], before[2]}; !slices.Equal(got, want) {
		t.Errorf("with %s and %s down: owners %v, want %v", down1, down2, got, want)
	}

	// Owners: the first n live owners in placement's order, without the
	// workers marked down.
	ring := ownerIDs(c.members.Current().Owners(nil, key, 5))
	var live []string
	for _, id := range ring {
		if id != down1 && id != down2 {
			live = append(live, id)
		}
	}
	for n := 1; n <= 5; n++ {
		got := ownerIDs(c.Owners(key, n))
		if want := live[:min(n, len(live))]; !slices.Equal(got, want) {
			t.Errorf("Owners(key, %d) = %v, want %v (ring %v, down %s %s)", n, got, want, ring, down1, down2)
		}
	}
}

// A client without workers has no owners, and a read says so.
func TestOwnersEmptyMembership(t *testing.T) {
	e := newEnv(t, envOpts{datasets: map[string]string{"a": "fallback: none"}})
	if got := e.c.owners("k", 2); len(got) != 0 {
		t.Fatalf("owners with no workers: %v", ownerIDs(got))
	}
	e.write("a", "f", 10)
	_, err := e.c.Open(t.Context(), "/a/f")
	if !errors.Is(err, errAllOwnersFailed) {
		t.Fatalf("open with no workers: %v, want every owner failed", err)
	}
}
