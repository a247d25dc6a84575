package dataset_test

import (
	"errors"
	"io/fs"
	"strings"
	"testing"

	"github.com/granary-cache/granary/internal/config"
	"github.com/granary-cache/granary/internal/dataset"
	"github.com/granary-cache/granary/internal/ufs"
)

func TestResolve(t *testing.T) {
	dir := t.TempDir()
	cfg := &config.Config{}
	for _, name := range []string{"b", "a"} {
		ds, err := config.FromURI(name, "file://"+dir)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Add(ds)
	}
	set, err := dataset.OpenAll(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer set.Close()
	if got := strings.Join(set.Names(), ","); got != "a,b" {
		t.Errorf("Names = %s", got)
	}
	for in, want := range map[string][2]string{
		"/":             {"", ""},
		"":              {"", ""},
		"/a":            {"a", ""},
		"/a/":           {"a", ""},
		"a/x/y.jpg":     {"a", "x/y.jpg"},
		"/b/x/../y":     {"b", "y"},
		"/a/x%2F..%2Fy": {"a", "x%2F..%2Fy"},
		"/a/../b/x":     {"b", "x"},
	} {
		d, rel, err := set.Resolve(in)
		name := ""
		if d != nil {
			name = d.Name()
		}
		if err != nil || name != want[0] || rel != want[1] {
			t.Errorf("Resolve(%q) = %q, %q, %v; want %q, %q", in, name, rel, err, want[0], want[1])
		}
	}
	// Namespace paths are cleaned like POSIX paths ("/a/../b/x" is "/b/x"),
	// but nothing climbs above the namespace root into the host.
	for _, in := range []string{"/a/../../etc/passwd", "/..", "/a/\x00", "../a"} {
		if d, rel, err := set.Resolve(in); !errors.Is(err, ufs.ErrInvalidPath) {
			t.Errorf("Resolve(%q) = %v, %q, %v; want ErrInvalidPath", in, d, rel, err)
		}
	}
	_, _, err = set.Resolve("/nope/x")
	if !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), `no dataset named "nope" (datasets: a, b)`) {
		t.Errorf("Resolve of an unknown dataset: %v", err)
	}
}

func TestOpenErrors(t *testing.T) {
	for uri, want := range map[string]string{
		"file:///nonexistent/granary/dir": "dataset bad (file:///nonexistent/granary/dir)",
		"cephfs://cephfs/x":               "built without CephFS support",
	} {
		ds, err := config.FromURI("bad", uri)
		if err != nil {
			t.Fatal(err)
		}
		_, err = dataset.Open(ds, nil)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Open(%s) = %v; want an error containing %q", uri, err, want)
		}
	}
}
