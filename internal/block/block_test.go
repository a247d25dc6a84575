package block

import "testing"

func TestLen(t *testing.T) {
	for _, c := range []struct {
		size, bs, idx, want int64
	}{
		{size: 10, bs: 4, idx: 0, want: 4},
		{size: 10, bs: 4, idx: 2, want: 2},
		{size: 10, bs: 4, idx: 3, want: 0},
		{size: 8, bs: 4, idx: 1, want: 4},
		{size: 0, bs: 4, idx: 0, want: 0},
		{size: 10, bs: 0, idx: 0, want: 0},
	} {
		r := Ref{ID: ID{BlockSize: c.bs, Index: c.idx}, Size: c.size}
		if got := r.Len(); got != c.want {
			t.Errorf("block %d of %d-byte blocks of a %d-byte file: %d bytes, want %d", c.idx, c.bs, c.size, got, c.want)
		}
	}
}

func TestPlacementKey(t *testing.T) {
	a := ID{Dataset: "d", Path: "x/y", Version: "v1", BlockSize: 4 << 20, Index: 2}
	b := a
	b.Version, b.BlockSize = "v2", 64<<20
	if a.PlacementKey() != b.PlacementKey() {
		t.Error("a new version or block size moved the block to other workers")
	}
	if PlacementKey("d", "p", 1) == PlacementKey("d", "p", 10) || PlacementKey("d", "p1", 0) == PlacementKey("d", "p", 10) {
		t.Error("distinct blocks share a placement key")
	}
}

func TestString(t *testing.T) {
	id := ID{Dataset: "imagenet", Path: "train/a.jpg", Version: "e1", BlockSize: 1 << 20, Index: 3}
	if got, want := id.String(), "/imagenet/train/a.jpg@e1#3/1048576"; got != want {
		t.Errorf("%q, want %q", got, want)
	}
}

func TestSizeFor(t *testing.T) {
	const mib = 1 << 20
	for _, c := range []struct{ size, bs, whole, want int64 }{
		{0, 64 * mib, 1024 * mib, 64 * mib},
		{100 << 10, 64 * mib, 1024 * mib, 64 * mib},    // a small file: the plain block size, as before
		{64 * mib, 64 * mib, 1024 * mib, 64 * mib},     // one block already
		{64*mib + 1, 64 * mib, 1024 * mib, 128 * mib},  // one block, rounded up to the block size
		{1024 * mib, 64 * mib, 1024 * mib, 1024 * mib}, // the bound itself
		{1024*mib + 1, 64 * mib, 1024 * mib, 64 * mib}, // past it: blocks of bs
		{300 * mib, 64 * mib, 0, 64 * mib},             // whole files off
		{300 * mib, 64 * mib, 100 * mib, 64 * mib},     // larger than the bound
		{5 * mib, 4 * mib, 1024 * mib, 8 * mib},        // a small block size
	} {
		got := SizeFor(c.size, c.bs, c.whole)
		if got != c.want {
			t.Errorf("SizeFor(%d, %d, %d) = %d, want %d", c.size, c.bs, c.whole, got, c.want)
		}
		if n := (Ref{ID: ID{BlockSize: got}, Size: c.size}); c.size > 0 && c.size <= c.whole && n.Len() != c.size {
			t.Errorf("a whole file of %d bytes: its one block has %d", c.size, n.Len())
		}
	}
}
