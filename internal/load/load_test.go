package load

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/granary-cache/granary/internal/client"
	"github.com/granary-cache/granary/internal/config"
	"github.com/granary-cache/granary/internal/granarytest"
	"github.com/granary-cache/granary/internal/localcluster"
	"github.com/granary-cache/granary/internal/wire"
)

// testClient serves a small tree from two in-process workers and returns a
// client of them.
func testClient(t *testing.T) *client.Client {
	t.Helper()
	dir := t.TempDir()
	for _, name := range []string{"labels.json", "a/labels.json", "a/x.jpg", "a/deep/y.jpg", "a/deep/labels.json",
		"b/z.jpg", "b/w.txt", "c/empty-dir/.keep"} {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(name), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ds, err := config.FromURI("ds", "file://"+dir)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Parse("test", nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Datasets = append(cfg.Datasets, ds)
	return granarytest.InProcess(t, localcluster.Options{Config: cfg, Workers: 2, MemQuota: 64 << 20})
}

func TestExpand(t *testing.T) {
	c := testClient(t)
	for _, tc := range []struct {
		targets []string
		want    []string // files; nil with err set
		err     string
	}{
		{targets: []string{"/ds/"}, want: []string{"a/deep/labels.json", "a/deep/y.jpg", "a/labels.json", "a/x.jpg", "b/w.txt", "b/z.jpg", "c/empty-dir/.keep", "labels.json"}},
		{targets: []string{"/ds/a"}, want: []string{"a/deep/labels.json", "a/deep/y.jpg", "a/labels.json", "a/x.jpg"}},
		{targets: []string{"/ds/a/x.jpg", "/ds/b/w.txt"}, want: []string{"a/x.jpg", "b/w.txt"}},
		{targets: []string{"/ds/*/labels.json"}, want: []string{"a/labels.json"}},
		{targets: []string{"/ds/**/labels.json"}, want: []string{"a/deep/labels.json", "a/labels.json", "labels.json"}},
		{targets: []string{"/ds/**/*.jpg", "/ds/a/**"}, want: []string{"a/deep/labels.json", "a/deep/y.jpg", "a/labels.json", "a/x.jpg", "b/z.jpg"}},
		{targets: []string{"/ds/?/*.txt"}, want: []string{"b/w.txt"}},
		{targets: []string{"/ds/nope"}, err: "/ds/nope: no such file or directory"},
		{targets: []string{"/ds/*/nope.json"}, err: "/ds/*/nope.json matches no file"},
		{targets: []string{"/ds/../x"}, err: ".. is not allowed"},
		{targets: []string{"/"}, err: "names no dataset"},
		{targets: []string{"/d*/x"}, err: "the dataset name cannot be a pattern"},
		{targets: []string{"/ds/a/["}, err: "bad pattern"},
	} {
		t.Run(strings.Join(tc.targets, ","), func(t *testing.T) {
			ds, patterns, err := parseTargets(c, tc.targets)
			if err == nil {
				var files []file
				files, _, err = expand(t.Context(), c, ds.Name, patterns, 4, nil)
				if err == nil {
					var got []string
					for _, f := range files {
						got = append(got, f.path)
					}
					slices.Sort(got)
					if !slices.Equal(got, tc.want) {
						t.Errorf("got %v, want %v", got, tc.want)
					}
				}
			}
			if tc.err == "" && err != nil || tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
				t.Errorf("error %v, want %q", err, tc.err)
			}
		})
	}
}

// TestExpandSkips: the directories of Skip are neither listed nor loaded
// (those of a dataset that have a FUSE connection, and prefetch, of their
// own), whatever the targets match.
func TestExpandSkips(t *testing.T) {
	c := testClient(t)
	for _, tc := range []struct {
		targets, skip []string
		want          []string
		dirs          int // directories listed
	}{
		{[]string{"/ds/"}, []string{"a/deep"}, []string{"a/labels.json", "a/x.jpg", "b/w.txt", "b/z.jpg", "c/empty-dir/.keep", "labels.json"}, 5},
		{[]string{"/ds/"}, []string{"/a/", "c"}, []string{"b/w.txt", "b/z.jpg", "labels.json"}, 2},
		{[]string{"/ds/**/*.jpg"}, []string{"b"}, []string{"a/deep/y.jpg", "a/x.jpg"}, 10},
		{[]string{"/ds/**/*.jpg"}, nil, []string{"a/deep/y.jpg", "a/x.jpg", "b/z.jpg"}, 12},
		{[]string{"/ds/a"}, []string{"a"}, nil, 0},
		{[]string{"/ds/"}, []string{"nope", ""}, []string{"a/deep/labels.json", "a/deep/y.jpg", "a/labels.json", "a/x.jpg", "b/w.txt", "b/z.jpg", "c/empty-dir/.keep", "labels.json"}, 6},
	} {
		ds, patterns, err := parseTargets(c, tc.targets)
		if err != nil {
			t.Fatal(err)
		}
		files, dirs, err := expand(t.Context(), c, ds.Name, patterns, 4, tc.skip)
		var got []string
		for _, f := range files {
			got = append(got, f.path)
		}
		slices.Sort(got)
		if err != nil || !slices.Equal(got, tc.want) || dirs != tc.dirs {
			t.Errorf("%v skipping %v: %v, %d directories listed, %v; want %v, %d", tc.targets, tc.skip, got, dirs, err, tc.want, tc.dirs)
		}
	}
}

func TestParseTargets(t *testing.T) {
	c := testClient(t)
	if _, _, err := parseTargets(c, nil); err == nil || !strings.Contains(err.Error(), "nothing to load") {
		t.Errorf("no targets: %v", err)
	}
	if _, _, err := parseTargets(c, []string{"/other/x"}); err == nil || !strings.Contains(err.Error(), `unknown dataset "other"`) {
		t.Errorf("unknown dataset: %v", err)
	}
}

// TestRunLoadsEveryBlockOnce: a load through two in-process workers loads
// every file, and a second run skips them all.
func TestRunLoadsEveryBlockOnce(t *testing.T) {
	c := testClient(t)
	var last int64
	res, err := Run(t.Context(), c, Options{Targets: []string{"/ds/"}, Progress: func(p wire.LoadProgress) { last = p.BytesDone }})
	if err != nil || res.Progress.FilesDone != 8 || res.Progress.Failed != 0 || res.Progress.BytesSkipped != 0 {
		t.Fatalf("first load: %v, %+v", err, res.Progress)
	}
	if last != res.Progress.Bytes {
		t.Errorf("the last progress said %d bytes done of %d", last, res.Progress.Bytes)
	}
	res, err = Run(t.Context(), c, Options{Targets: []string{"/ds/"}})
	if err != nil || res.Progress.FilesSkipped != 8 || res.Progress.BytesSkipped != res.Progress.Bytes {
		t.Fatalf("second load: %v, %+v", err, res.Progress)
	}
	loads, failed := List(t.Context(), c)
	if len(failed) != 0 || len(loads) != 2 || loads[0].State != "done" {
		t.Errorf("load status: %+v, %v", loads, failed)
	}
}
