package cli

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/granary-cache/granary/internal/client"
	"github.com/granary-cache/granary/internal/config"
)

func TestOpenModes(t *testing.T) {
	cfg := func(modes ...string) *config.Config {
		c := &config.Config{}
		for i, m := range modes {
			c.Datasets = append(c.Datasets, config.Dataset{Name: string(rune('a' + i)), OpenMode: m})
		}
		return c
	}
	const pt, zm = config.OpenPassthrough, config.OpenZeroMessage
	for _, c := range []struct {
		name        string
		cfg         *config.Config
		root        string
		flag        bool
		zeroMessage bool
		own         []string
	}{
		{"all passthrough", cfg(pt, pt), "", false, false, nil},
		{"all zero-message: the whole mount", cfg(zm, zm), "", false, true, nil},
		{"mixed: own mounts for zero-message", cfg(pt, zm, pt, zm), "", false, false, []string{"b", "d"}},
		{"the flag sets every dataset", cfg(pt, zm), "", true, true, nil},
		{"one dataset at the root: its mode", cfg(pt, zm), "b", false, true, nil},
		{"one dataset at the root: passthrough", cfg(pt, zm), "a", false, false, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			zeroMessage, own := openModes(c.cfg, c.root, mountFlags{zeroMessageOpens: c.flag})
			if zeroMessage != c.zeroMessage || !slices.Equal(own, c.own) {
				t.Errorf("openModes = %v, %v; want %v, %v", zeroMessage, own, c.zeroMessage, c.own)
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
	got := chooseOpenModes(cfg, "", sample)
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
	if got := chooseOpenModes(cfg, "large", sample); len(got) != 1 || got["large"].Mode != config.OpenPassthrough || !slices.Equal(asked, []string{"large"}) {
		t.Errorf("one dataset at the root: %+v (sampled %v)", got, asked)
	}
	// The servers get the choices for their status.
	t.Setenv(openModesVar, strings.TrimPrefix(openModesEnv(got), openModesVar+"="))
	if back := openModesFromEnv(); back["large"] != got["large"] {
		t.Errorf("through the environment: %+v", back)
	}
}
