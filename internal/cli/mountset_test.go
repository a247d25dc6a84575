package cli

import (
	"slices"
	"testing"

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
