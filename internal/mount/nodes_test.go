package mount

import (
	"os"
	"path/filepath"
	"testing"
)

func TestNodeTableSurvivesRestart(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "state"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	a := newNodeTable(f)
	id := ino("d", "dir/file name.jpg")
	a.lookedUp(id, "d", "dir/file name.jpg")
	other := ino("d", "other")
	a.lookedUp(other, "d", "other")
	// One file gets passthrough, the other is read through granary.
	if m := a.openMode(id, true, func() (int32, bool) { return 7, true }); !m.passthrough || m.backing != 7 {
		t.Fatalf("openMode = %+v; want passthrough with backing 7", m)
	}
	if m := a.openMode(other, true, func() (int32, bool) { return 0, false }); m.passthrough || !m.first {
		t.Fatal("a refused registration must give a normal open, the node's first")
	}
	// Once a node has normal opens, a later open must not be passthrough
	// (the kernel fails the mix with EIO), even if registration would work.
	if m := a.openMode(other, true, func() (int32, bool) { return 9, true }); m.passthrough || m.first {
		t.Fatal("passthrough mixed with a normal open (or a second normal open said to be the first)")
	}
	f.WriteString("N 12") // a line torn by a crash

	b := newNodeTable(f)
	if err := b.load(); err != nil {
		t.Fatalf("load: %v", err)
	}
	n, ok := b.get(id)
	if !ok || n.path != "dir/file name.jpg" || !n.hasBacking || n.backing != 7 {
		t.Fatalf("reloaded node = %+v, %v", n, ok)
	}
	if o, _ := b.get(other); o.opens != 2 {
		t.Errorf("reloaded normal opens = %d; want 2", o.opens)
	}
	if last := b.closed(other); last {
		t.Error("the first of two releases reported as the last")
	}
	if last := b.closed(other); !last {
		t.Error("the last release not reported")
	}
	// Reloaded nodes are never forgotten (their kernel counts died with
	// the old process); nodes looked up by this one are.
	if _, unregister := b.forget(id, 1); unregister {
		t.Error("a reloaded node was forgotten")
	}
	fresh := ino("d", "new")
	b.lookedUp(fresh, "d", "new")
	b.forget(fresh, 1)
	if _, ok := b.get(fresh); ok {
		t.Error("a node with no references left was kept")
	}
}
