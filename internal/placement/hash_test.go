package placement

import (
	"hash/fnv"
	"slices"
	"testing"
)

// TestHashIsFNV1a pins the first stage of the hash to the standard FNV-1a 64,
// a published algorithm that any other implementation can reproduce.
func TestHashIsFNV1a(t *testing.T) {
	for _, s := range []string{"", "a", "w1", "data\x00ds\x00a/b.jpg\x00v1\x003", string(make([]byte, 300))} {
		f := fnv.New64a()
		f.Write([]byte(s))
		if got, want := hashString(s), mix64(f.Sum64()); got != want {
			t.Errorf("hashString(%q) = %#x, want splitmix64(fnv1a) = %#x", s, got, want)
		}
	}
}

// TestMix64 checks the finalizer against the published splitmix64 sequence
// for seed 0 (each output is mix64 of the state after one more increment).
func TestMix64(t *testing.T) {
	var state uint64
	for i, want := range []uint64{0xe220a8397b1dcdaf, 0x6e789e6aa1b965f4, 0x06c45d188009454f} {
		state += 0x9e3779b97f4a7c15
		if got := mix64(state); got != want {
			t.Errorf("splitmix64 output %d = %#x, want %#x", i, got, want)
		}
	}
}

// TestGolden pins placement itself. Every process in a cluster, whatever its
// version, must place keys identically; if this test fails, the change would
// silently move almost every cached block during a rolling upgrade.
func TestGolden(t *testing.T) {
	ms := members(5)
	ms[1].Weight = 2
	tab := New(ms)
	for _, tc := range []struct {
		key  string
		want []string
	}{
		{"", []string{"w3", "w1", "w4"}},
		{"w1", []string{"w2", "w5", "w4"}},
		{"meta\x00imagenet\x00train", []string{"w2", "w5", "w1"}},
		{"data\x00imagenet\x00train/a.jpg\x00v1\x000", []string{"w5", "w3", "w1"}},
		{"data\x00imagenet\x00train/a.jpg\x00v1\x001", []string{"w1", "w5", "w4"}},
		{"data\x00imagenet\x00train/a.jpg\x00v1\x002", []string{"w1", "w2", "w3"}},
		{"data\x00imagenet\x00train/a.jpg\x00v2\x000", []string{"w2", "w4", "w1"}},
	} {
		if got := ids(tab.Owners(nil, tc.key, 3)); !slices.Equal(got, tc.want) {
			t.Errorf("Owners(%q) = %q, want %q", tc.key, got, tc.want)
		}
	}
}
