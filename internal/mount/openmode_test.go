package mount

import (
	"fmt"
	"strings"
	"testing"

	"github.com/granary-cache/granary/internal/client"
	"github.com/granary-cache/granary/internal/config"
)

func TestChooseOpenMode(t *testing.T) {
	const block = 64 << 20
	for _, c := range []struct {
		name  string
		sizes client.FileSizes
		mode  string
		why   string
	}{
		{"imagenet-like", client.FileSizes{Files: 2000, Dirs: 3, Median: 110 << 10}, config.OpenZeroMessage, "median size 110KiB"},
		{"shards", client.FileSizes{Files: 40, Dirs: 1, Median: 50 << 20}, config.OpenPassthrough, "passthrough"},
		{"just at the limit", client.FileSizes{Files: 10, Dirs: 1, Median: SmallFile}, config.OpenPassthrough, "passthrough"},
		{"huge files", client.FileSizes{Files: 4, Dirs: 1, Median: 1 << 30}, config.OpenZeroMessage, "more than a block"},
		{"empty", client.FileSizes{Dirs: 1}, config.OpenPassthrough, "no files seen"},
	} {
		t.Run(c.name, func(t *testing.T) {
			got := ChooseOpenMode(c.sizes, block)
			if got.Mode != c.mode || !strings.Contains(got.Reason, c.why) {
				t.Errorf("ChooseOpenMode = %+v; want mode %s, a reason with %q", got, c.mode, c.why)
			}
		})
	}
}

func TestSplitOpenModes(t *testing.T) {
	const block = 64 << 20
	small := func(files int) client.FileSizes {
		return client.FileSizes{Files: files, Dirs: 1, Median: 100 << 10, Total: int64(files) * 100 << 10}
	}
	large := func(files int) client.FileSizes {
		return client.FileSizes{Files: files, Dirs: 1, Median: 8 << 20, Total: int64(files) * 8 << 20}
	}
	t.Run("checkpoints among images", func(t *testing.T) {
		s := client.FileSizes{Files: 1004, Median: 100 << 10, TopDirs: map[string]client.FileSizes{
			"train": small(900), "val": small(100), "ckpt": large(4), "empty": {Dirs: 1}}}
		ds := ChooseOpenMode(s, block)
		got := SplitOpenModes(ds, s, block)
		if ds.Mode != config.OpenZeroMessage || len(got) != 1 || got["ckpt"].Mode != config.OpenPassthrough {
			t.Fatalf("dataset %+v, split %+v; want zero-message with ckpt on passthrough", ds, got)
		}
		if r := got["ckpt"].Reason; !strings.Contains(r, "directory ckpt differs") || !strings.Contains(r, "median size 8MiB") {
			t.Errorf("reason %q", r)
		}
	})
	t.Run("images among shards", func(t *testing.T) {
		s := client.FileSizes{Files: 60, Median: 8 << 20, TopDirs: map[string]client.FileSizes{"shards": large(50), "thumbs": small(10)}}
		got := SplitOpenModes(ChooseOpenMode(s, block), s, block)
		if len(got) != 1 || got["thumbs"].Mode != config.OpenZeroMessage {
			t.Fatalf("split %+v; want thumbs on zero-message", got)
		}
	})
	t.Run("uniform: no split", func(t *testing.T) {
		s := client.FileSizes{Files: 200, Median: 100 << 10, TopDirs: map[string]client.FileSizes{"a": small(100), "b": small(100)}}
		if got := SplitOpenModes(ChooseOpenMode(s, block), s, block); len(got) != 0 {
			t.Errorf("split %+v; want none", got)
		}
	})
	t.Run("bounded, largest first", func(t *testing.T) {
		s := client.FileSizes{Files: 10000, Median: 100 << 10, TopDirs: map[string]client.FileSizes{}}
		for i := range MaxSplitDirs + 3 {
			s.TopDirs[fmt.Sprintf("c%02d", i)] = large(i + 1)
		}
		got := SplitOpenModes(ChooseOpenMode(s, block), s, block)
		if len(got) != MaxSplitDirs {
			t.Fatalf("%d directories split, want %d", len(got), MaxSplitDirs)
		}
		for i := range 3 {
			if _, ok := got[fmt.Sprintf("c%02d", i)]; ok {
				t.Errorf("c%02d (%d files) split ahead of larger ones", i, i+1)
			}
		}
	})
}
