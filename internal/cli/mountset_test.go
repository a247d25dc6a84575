package cli

import (
	"errors"
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/granary-cache/granary/internal/client"
	"github.com/granary-cache/granary/internal/config"
	"github.com/granary-cache/granary/internal/mount"
)

func TestPlanMounts(t *testing.T) {
	cfg := func(modes ...string) *config.Config {
		c := &config.Config{}
		for i, m := range modes {
			c.Datasets = append(c.Datasets, config.Dataset{Name: string(rune('a' + i)), OpenMode: m})
		}
		return c
	}
	const pt, zm = config.OpenPassthrough, config.OpenZeroMessage
	choice := func(mode string) mount.OpenChoice { return mount.OpenChoice{Mode: mode} }
	for _, c := range []struct {
		name         string
		cfg          *config.Config
		root, subdir string
		flag         bool
		modes        map[string]mount.OpenChoice
		want         []plannedMount
	}{
		{name: "all passthrough", cfg: cfg(pt, pt),
			want: []plannedMount{{dir: "/m", parent: -1}}},
		{name: "all zero-message: the whole mount", cfg: cfg(zm, zm),
			want: []plannedMount{{dir: "/m", zeroMessage: true, parent: -1}}},
		{name: "mixed: connections of their own for zero-message", cfg: cfg(pt, zm, pt, zm),
			want: []plannedMount{{dir: "/m", parent: -1}, {dir: "/m/b", dataset: "b", zeroMessage: true}, {dir: "/m/d", dataset: "d", zeroMessage: true}}},
		{name: "the flag sets every dataset", cfg: cfg(pt, zm), flag: true,
			want: []plannedMount{{dir: "/m", zeroMessage: true, parent: -1}}},
		{name: "the flag sets a directory mount too", cfg: cfg(pt), root: "a", subdir: "x/y", flag: true,
			modes: map[string]mount.OpenChoice{"a/z": choice(pt)},
			want:  []plannedMount{{dir: "/m", dataset: "a", subdir: "x/y", zeroMessage: true, parent: -1}}},
		{name: "one dataset at the root: its mode", cfg: cfg(pt, zm), root: "b",
			want: []plannedMount{{dir: "/m", dataset: "b", zeroMessage: true, parent: -1}}},
		{name: "one dataset at the root: passthrough", cfg: cfg(pt, zm), root: "a",
			want: []plannedMount{{dir: "/m", dataset: "a", parent: -1}}},
		{name: "the choices of auto override the configuration", cfg: cfg("", ""),
			modes: map[string]mount.OpenChoice{"a": choice(pt), "b": choice(zm)},
			want:  []plannedMount{{dir: "/m", parent: -1}, {dir: "/m/b", dataset: "b", zeroMessage: true}}},
		{name: "directories split off, inside the connection that serves their dataset", cfg: cfg("", "", ""),
			modes: map[string]mount.OpenChoice{"a": choice(pt), "a/imgs": choice(zm), "a/more": choice(pt),
				"b": choice(zm), "b/ckpt": choice(pt), "c": choice(pt), "c/thumbs": choice(zm)},
			want: []plannedMount{{dir: "/m", parent: -1}, {dir: "/m/b", dataset: "b", zeroMessage: true},
				{dir: "/m/a/imgs", dataset: "a", subdir: "imgs", zeroMessage: true},
				{dir: "/m/b/ckpt", dataset: "b", subdir: "ckpt", parent: 1},
				{dir: "/m/c/thumbs", dataset: "c", subdir: "thumbs", zeroMessage: true}}},
		{name: "a directory of the dataset at the root", cfg: cfg("", ""), root: "b",
			modes: map[string]mount.OpenChoice{"b": choice(zm), "b/ckpt": choice(pt), "a/x": choice(pt)},
			want: []plannedMount{{dir: "/m", dataset: "b", zeroMessage: true, parent: -1},
				{dir: "/m/ckpt", dataset: "b", subdir: "ckpt"}}},
		{name: "a mount of a directory splits nothing", cfg: cfg(""), root: "a", subdir: "x",
			modes: map[string]mount.OpenChoice{"a": choice(zm), "a/ckpt": choice(pt)},
			want:  []plannedMount{{dir: "/m", dataset: "a", subdir: "x", zeroMessage: true, parent: -1}}},
	} {
		t.Run(c.name, func(t *testing.T) {
			got := planMounts(c.cfg, c.root, c.subdir, "/m", mountFlags{zeroMessageOpens: c.flag}, c.modes)
			if !slices.Equal(got, c.want) {
				t.Errorf("planMounts =\n%+v\nwant\n%+v", got, c.want)
			}
		})
	}
}

func TestChooseOpenModes(t *testing.T) {
	cfg := &config.Config{Datasets: []config.Dataset{
		{Name: "small", OpenMode: config.OpenAuto, BlockSize: 64 << 20},
		{Name: "large", OpenMode: config.OpenAuto, BlockSize: 64 << 20},
		{Name: "set", OpenMode: config.OpenZeroMessage},
		{Name: "down", OpenMode: config.OpenAuto, BlockSize: 64 << 20},
	}}
	var asked []string
	sample := func(ds string) (client.FileSizes, error) {
		asked = append(asked, ds)
		switch ds {
		case "small":
			return client.FileSizes{Files: 500, Dirs: 2, Median: 100 << 10}, nil
		case "large":
			return client.FileSizes{Files: 8, Dirs: 1, Median: 40 << 20}, nil
		}
		return client.FileSizes{}, errors.New("no live workers")
	}
	got := chooseOpenModes(cfg, "", "", false, sample)
	want := map[string]string{"small": config.OpenZeroMessage, "large": config.OpenPassthrough, "set": config.OpenZeroMessage, "down": config.OpenPassthrough}
	for ds, mode := range want {
		if got[ds].Mode != mode {
			t.Errorf("%s: %+v, want %s", ds, got[ds], mode)
		}
	}
	if !strings.Contains(got["down"].Reason, "no live workers") || !strings.Contains(got["set"].Reason, "configuration") || !strings.HasPrefix(got["small"].Reason, "auto: ") {
		t.Errorf("reasons: %+v", got)
	}
	if slices.Contains(asked, "set") {
		t.Error("a dataset with its mode set was sampled")
	}
	asked = nil
	if got := chooseOpenModes(cfg, "large", "", false, sample); len(got) != 1 || got["large"].Mode != config.OpenPassthrough || !slices.Equal(asked, []string{"large"}) {
		t.Errorf("one dataset at the root: %+v (sampled %v)", got, asked)
	}
	// The servers get the choices for their status.
	t.Setenv(openModesVar, strings.TrimPrefix(openModesEnv(got), openModesVar+"="))
	if back := openModesFromEnv(); back["large"] != got["large"] {
		t.Errorf("through the environment: %+v", back)
	}
}

func TestChooseOpenModesSplit(t *testing.T) {
	cfg := &config.Config{Datasets: []config.Dataset{{Name: "d", OpenMode: config.OpenAuto, BlockSize: 64 << 20}}}
	var asked []string
	sample := func(p string) (client.FileSizes, error) {
		asked = append(asked, p)
		return client.FileSizes{Files: 504, Dirs: 3, Median: 100 << 10, TopDirs: map[string]client.FileSizes{
			"imgs": {Files: 500, Dirs: 1, Median: 100 << 10}, "ckpt": {Files: 4, Dirs: 1, Median: 8 << 20}}}, nil
	}
	got := chooseOpenModes(cfg, "", "", true, sample)
	if len(got) != 2 || got["d"].Mode != config.OpenZeroMessage || got["d/ckpt"].Mode != config.OpenPassthrough ||
		!strings.HasPrefix(got["d/ckpt"].Reason, "auto: directory ckpt") {
		t.Errorf("split: %+v", got)
	}
	if got := chooseOpenModes(cfg, "", "", false, sample); len(got) != 1 {
		t.Errorf("without split: %+v", got)
	}
	asked = nil
	if got := chooseOpenModes(cfg, "d", "a/b", false, sample); len(got) != 1 || !slices.Equal(asked, []string{"d/a/b"}) {
		t.Errorf("a directory at the root: %+v (sampled %v)", got, asked)
	}
}

func TestSplitByOpenMode(t *testing.T) {
	for _, c := range []struct {
		f    mountFlags
		want bool
	}{
		{mountFlags{}, true},
		{mountFlags{noPassthrough: true}, false},
		{mountFlags{subdir: "train"}, false},
		{mountFlags{oneConnection: true}, false}, // Fluid
	} {
		if got := c.f.splitByOpenMode(); got != c.want {
			t.Errorf("%+v: splitByOpenMode = %v, want %v", c.f, got, c.want)
		}
	}
}

func TestSplitDirs(t *testing.T) {
	got := splitDirs(map[string]mount.OpenChoice{
		"imgs": {Mode: config.OpenZeroMessage}, "imgs/ckpt": {Mode: config.OpenPassthrough}, "imgs/best": {Mode: config.OpenPassthrough},
		"shards/thumbs": {Mode: config.OpenZeroMessage}, "other": {Mode: config.OpenPassthrough},
	})
	want := map[string][]string{"imgs": {"best", "ckpt"}, "shards": {"thumbs"}}
	if !maps.EqualFunc(got, want, slices.Equal) {
		t.Errorf("splitDirs = %v, want %v", got, want)
	}
}

// A split directory whose connection is not mounted (it failed) is served,
// and so prefetched, by the server around it.
func TestServedElsewhereNeedsTheMount(t *testing.T) {
	skip := servedElsewhere(t.TempDir(), "imgs", map[string][]string{"imgs": {"ckpt"}})
	if got := skip("imgs"); len(got) != 0 {
		t.Errorf("skipped %v; no connection of its own is mounted", got)
	}
	if got := skip("other"); len(got) != 0 {
		t.Errorf("skipped %v of a dataset with no split directory", got)
	}
}
