package placement

import (
	"fmt"
	"testing"
)

func TestOwnersDoesNotAllocate(t *testing.T) {
	for _, n := range []int{1, 3, maxPartial} {
		tab := New(members(100))
		dst := make([]Member, 0, n)
		if a := testing.AllocsPerRun(100, func() { dst = tab.Owners(dst[:0], "data\x00ds\x00a/b\x00v1\x007", n) }); a != 0 {
			t.Errorf("Owners(n=%d) with room in dst: %v allocations, want 0", n, a)
		}
	}
}

func BenchmarkOwners(b *testing.B) {
	ks := keys(1024)
	for _, n := range []int{3, 16, 100} {
		for _, weighted := range []bool{false, true} {
			ms := members(n)
			if weighted {
				for i := range ms {
					ms[i].Weight = float64(1 + i%4)
				}
			}
			tab := New(ms)
			b.Run(fmt.Sprintf("members=%d/weighted=%v/replicas=3", n, weighted), func(b *testing.B) {
				dst := make([]Member, 0, 3)
				i := 0
				for b.Loop() {
					dst = tab.Owners(dst[:0], ks[i&1023], 3)
					i++
				}
			})
		}
	}
}

func BenchmarkOwner(b *testing.B) {
	ks := keys(1024)
	for _, n := range []int{3, 16, 100} {
		tab := New(members(n))
		b.Run(fmt.Sprintf("members=%d", n), func(b *testing.B) {
			i := 0
			for b.Loop() {
				tab.Owner(ks[i&1023])
				i++
			}
		})
	}
}
