//go:build cephfs

package cephfs_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/granary-cache/granary/internal/ufs"
	"github.com/granary-cache/granary/internal/ufs/cephfs"
	"github.com/granary-cache/granary/internal/ufs/ufstest"
)

// cluster returns the directory of a cluster started by test/ceph/start.sh.
func cluster(t *testing.T) string {
	dir := os.Getenv("GRANARY_CEPH_DIR")
	if dir == "" {
		if os.Getenv("GRANARY_REQUIRE_SERVERS") != "" {
			t.Fatal("GRANARY_CEPH_DIR is not set")
		}
		t.Skip("no Ceph cluster: run test/ceph/start.sh DIR and set GRANARY_CEPH_DIR")
	}
	return dir
}

// dirFixture writes the tree through a ceph-fuse mount: CephFS's own client.
type dirFixture string

func (d dirFixture) WriteFile(_ context.Context, name string, data []byte) error {
	p := filepath.Join(string(d), name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	return os.WriteFile(p, data, 0o644)
}

func (d dirFixture) Mkdir(_ context.Context, name string) error {
	return os.MkdirAll(filepath.Join(string(d), name), 0o755)
}

func TestConformance(t *testing.T) {
	dir := cluster(t)
	conf := filepath.Join(dir, "ceph.conf")
	mnt := t.TempDir()
	if out, err := exec.Command("ceph-fuse", "-c", conf, "-n", "client.admin", mnt).CombinedOutput(); err != nil {
		t.Fatalf("ceph-fuse: %v: %s", err, out)
	}
	t.Cleanup(func() { syscall.Unmount(mnt, syscall.MNT_DETACH) })
	root := fmt.Sprintf("/conformance-%d", time.Now().UnixNano())
	if err := ufstest.Populate(context.Background(), dirFixture(filepath.Join(mnt, root))); err != nil {
		t.Fatal(err)
	}
	// Unmounting the writer flushes its sizes to the MDS: until then another
	// client's readdirplus may see a file still being written as empty.
	if err := syscall.Unmount(mnt, 0); err != nil {
		t.Fatal(err)
	}
	fsys, err := cephfs.Open(root, cephfs.Options{Conf: conf, FSName: "cephfs"})
	if err != nil {
		t.Fatal(err)
	}
	defer fsys.Close()
	ufstest.Run(t, fsys)
}

func TestOpenErrors(t *testing.T) {
	dir := cluster(t)
	conf := filepath.Join(dir, "ceph.conf")
	for _, c := range []struct {
		root string
		o    cephfs.Options
	}{
		{"/does-not-exist", cephfs.Options{Conf: conf}},
		{"/", cephfs.Options{Conf: conf, FSName: "nosuchfs"}},
		{"/", cephfs.Options{Conf: conf, Secret: "AQBbadbadbadbadbadbadbadbadbadbadbadbadbad=="}},
	} {
		if fsys, err := cephfs.Open(c.root, c.o); err == nil {
			fsys.Close()
			t.Errorf("Open(%q, %+v) succeeded", c.root, c.o)
		} else if ufs.ClassOf(err) == ufs.ClassNone {
			t.Errorf("no error class")
		}
	}
}
