//go:build cephfs

package cephfs_test

import (
	"context"
	"fmt"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/granary-cache/granary/internal/cephtest"
	"github.com/granary-cache/granary/internal/ufs"
	"github.com/granary-cache/granary/internal/ufs/cephfs"
	"github.com/granary-cache/granary/internal/ufs/ufstest"
)

func TestConformance(t *testing.T) {
	dir := cephtest.Dir(t)
	conf := cephtest.Conf(dir)
	mnt := cephtest.FuseMount(t, dir)
	root := fmt.Sprintf("/conformance-%d", time.Now().UnixNano())
	if err := ufstest.Populate(context.Background(), ufstest.DirFixture(filepath.Join(mnt, root))); err != nil {
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
	conf := cephtest.Conf(cephtest.Dir(t))
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
