package cache

import (
	"bytes"
	"testing"
)

// TestSharedHandles: the readers of a block share one descriptor, kept
// open while idle (within the bound) and closed when the block is dropped
// or moved; a File closed twice does not close it under the others.
func TestSharedHandles(t *testing.T) {
	mem, ssd := t.TempDir(), t.TempDir()
	s := openStore(t, tierCfg("MEM", mem, 4*testBlock), tierCfg("SSD", ssd, 100*testBlock))
	defer s.Close()
	k := key("ds", 1)
	b := fill(t, s, k, testBlock)
	want := wantBlock(k, testBlock)
	read := func(f *File) {
		t.Helper()
		got := make([]byte, len(want))
		if _, err := f.ReadAt(got, 0); err != nil || !bytes.Equal(got, want) {
			t.Fatalf("read through %s: %v (equal %v)", f.Path, err, bytes.Equal(got, want))
		}
	}
	f1, err := s.OpenShared(b)
	if err != nil {
		t.Fatal(err)
	}
	f2, err := s.OpenShared(b)
	if err != nil {
		t.Fatal(err)
	}
	if f1.File != f2.File {
		t.Fatal("two readers of a block got two descriptors")
	}
	read(f1)
	f1.Close()
	f1.Close() // twice: must not close it under f2
	read(f2)
	f2.Close()
	if idleLen(s) != 1 {
		t.Fatalf("%d idle handles after the last reader; want 1", idleLen(s))
	}
	f3, _ := s.OpenShared(b)
	if f3.File != f2.File || idleLen(s) != 0 {
		t.Fatalf("an idle handle was not reused (idle %d)", idleLen(s))
	}
	// Moved to SSD while read: the reader keeps its file; the next one
	// opens the new one, and the old descriptor closes with its reader.
	for i := 2; i <= 4; i++ {
		fill(t, s, key("ds", i), testBlock)
	}
	old := f3.File
	s.evict() // MEM is full: its least recently used block, b, goes to SSD
	if got := s.TierOf(b); got != "SSD" {
		t.Fatalf("the oldest block is on %s after an eviction pass; want SSD", got)
	}
	read(f3)
	f4, err := s.OpenShared(b)
	if err != nil {
		t.Fatal(err)
	}
	if f4.File == old {
		t.Fatal("a reader after the move got the old file's descriptor")
	}
	read(f4)
	f3.Close()
	if _, err := old.Stat(); err == nil {
		t.Error("the old file's descriptor is still open after its last reader left")
	}
	// Dropped while idle: closed at once.
	f4.Close()
	idle := f4.File
	s.drop(b, "test")
	if _, err := idle.Stat(); err == nil {
		t.Error("a dropped block's idle descriptor is still open")
	}
	if _, err := s.OpenShared(b); err != ErrGone {
		t.Errorf("OpenShared of a dropped block: %v, want ErrGone", err)
	}
}

// TestIdleHandlesBounded: no more than maxIdleHandles descriptors stay
// open for no reader; the least recently used go first.
func TestIdleHandlesBounded(t *testing.T) {
	s := openStore(t, tierCfg("MEM", t.TempDir(), int64(4*maxIdleHandles)*testPage))
	defer s.Close()
	var first *File
	for i := range maxIdleHandles + 10 {
		b := fill(t, s, key("ds", i), testPage)
		f, err := s.OpenShared(b)
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			first = f
		}
		f.Close()
	}
	if n := idleLen(s); n != maxIdleHandles {
		t.Errorf("%d idle handles; want the bound, %d", n, maxIdleHandles)
	}
	if _, err := first.File.Stat(); err == nil {
		t.Error("the least recently used idle descriptor is still open")
	}
}

func idleLen(s *Store) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.idle.Len()
}
