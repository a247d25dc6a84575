package local_test

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/granary-cache/granary/internal/ufs"
	"github.com/granary-cache/granary/internal/ufs/local"
	"github.com/granary-cache/granary/internal/ufs/ufstest"
)

func TestConformance(t *testing.T) {
	dir := t.TempDir()
	if err := ufstest.Populate(context.Background(), ufstest.DirFixture(dir)); err != nil {
		t.Fatal(err)
	}
	fsys, err := local.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer fsys.Close()
	ufstest.Run(t, fsys)
}

func TestOpenErrors(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "f")
	os.WriteFile(file, nil, 0o644)
	for _, p := range []string{"relative/path", filepath.Join(dir, "missing"), file} {
		if _, err := local.Open(p); err == nil {
			t.Errorf("Open(%q) succeeded", p)
		}
	}
}

// TestSymlinks checks that links inside the root are followed and links that
// leave it are refused: in listings, stats and reads.
func TestSymlinks(t *testing.T) {
	outside := t.TempDir()
	os.WriteFile(filepath.Join(outside, "secret"), []byte("do not read"), 0o644)
	root := t.TempDir()
	os.WriteFile(filepath.Join(root, "real"), []byte("inside"), 0o644)
	os.Mkdir(filepath.Join(root, "dir"), 0o755)
	must(t, os.Symlink("real", filepath.Join(root, "inside-link")))
	must(t, os.Symlink(filepath.Join(outside, "secret"), filepath.Join(root, "abs-out")))
	must(t, os.Symlink("../"+filepath.Base(outside)+"/secret", filepath.Join(root, "rel-out")))
	must(t, os.Symlink(outside, filepath.Join(root, "dir-out")))
	must(t, os.Symlink("../real", filepath.Join(root, "dir", "up-inside")))

	fsys, err := local.Open(root)
	if err != nil {
		t.Fatal(err)
	}
	defer fsys.Close()
	ctx := context.Background()

	for _, p := range []string{"inside-link", "dir/up-inside"} {
		fi, err := fsys.Stat(ctx, p)
		if err != nil || fi.Size != 6 {
			t.Errorf("Stat(%q) = %+v, %v; want the 6-byte target", p, fi, err)
		}
	}
	for _, p := range []string{"abs-out", "rel-out", "dir-out/secret"} {
		_, err := fsys.Stat(ctx, p)
		if !errors.Is(err, fs.ErrPermission) {
			t.Errorf("Stat(%q) = %v; want a permission error (escapes the root)", p, err)
		}
		if _, err := fsys.ReadRange(ctx, p, ufs.Range{Len: -1}); !errors.Is(err, fs.ErrPermission) {
			t.Errorf("ReadRange(%q) = %v; want a permission error", p, err)
		}
	}
	var listed []string
	for page, err := range fsys.List(ctx, "") {
		if err != nil {
			t.Fatal(err)
		}
		for _, fi := range page {
			listed = append(listed, fi.Name)
		}
	}
	for _, n := range listed {
		if n == "abs-out" || n == "rel-out" || n == "dir-out" {
			t.Errorf("listing shows %q, a link out of the root", n)
		}
	}
	if len(listed) != 3 {
		t.Errorf("listed %q; want real, dir, inside-link", listed)
	}
	for _, err := range fsys.List(ctx, "dir-out") {
		if !errors.Is(err, fs.ErrPermission) {
			t.Errorf("List(dir-out) = %v; want a permission error", err)
		}
	}
}

func TestErrorsHideHostPath(t *testing.T) {
	root := t.TempDir()
	fsys, err := local.Open(root)
	if err != nil {
		t.Fatal(err)
	}
	defer fsys.Close()
	_, err = fsys.Stat(context.Background(), "missing/file")
	if err == nil || strings.Contains(err.Error(), root) {
		t.Errorf("error %q reveals the dataset's host path", err)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
