package cache

import (
	"errors"
	"os"
	"slices"
	"testing"
)

// TestOwnWritesKeepTrust: a page the store writes is trusted at once (its
// CRC is of the very bytes written), and the store's own writes of other
// pages keep earlier checks — for handles opened before them too — while
// any other change to the file ends them all, even when the store writes
// again after it.
func TestOwnWritesKeepTrust(t *testing.T) {
	s, err := Open(Config{Tiers: []TierConfig{tierCfg("MEM", t.TempDir(), 1<<20)}, Layout: testLayout})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	k := key("ds", 1)
	b, err := s.Create(k, testBlock)
	if err != nil {
		t.Fatal(err)
	}
	write := func(p int) {
		t.Helper()
		if err := s.WritePage(b, p, pageData(k, p, testPage)); err != nil {
			t.Fatal(err)
		}
	}
	open := func() *File {
		t.Helper()
		f, err := s.Open(b)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		return f
	}
	trusted := func(f *File) (out []bool) {
		for p := range 4 {
			out = append(out, s.Trusted(f, p))
		}
		return out
	}
	want := func(what string, f *File, w ...bool) {
		t.Helper()
		if got := trusted(f); !slices.Equal(got, w) {
			t.Errorf("%s: trusted %v, want %v", what, got, w)
		}
	}

	write(0)
	f0 := open()
	want("after the first write", f0, true, false, false, false)
	write(1)
	f1 := open()
	want("a handle opened before the second write", f0, true, true, false, false)
	want("a handle opened after it", f1, true, true, false, false)

	// Another writer: nothing holds in the file as it is now, nor after
	// the store writes again.
	flip(t, f1.Path, 7)
	f2 := open()
	want("after a stray write", f2, false, false, false, false)
	write(2)
	f3 := open()
	want("the store's write after the stray one", f3, false, false, true, false)
	want("a handle from before the stray write", f0, false, false, false, false)
	buf := make([]byte, testPage)
	if _, err := s.ReadPage(f3, 0, buf); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("the flipped page read back: %v; want ErrCorrupt", err)
	}
	if _, err := s.ReadPage(f3, 1, buf); err != nil {
		t.Fatal(err)
	}
	want("page 1 checked again", f3, false, true, true, false)

	// A handle of another file (the block moved, or was made again) is
	// never trusted on the old file's checks.
	g, err := os.CreateTemp(t.TempDir(), "other")
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	other := &File{File: g, Block: b, Path: g.Name(), stamp: stampOf(g)}
	want("another file", other, false, false, false, false)
}
