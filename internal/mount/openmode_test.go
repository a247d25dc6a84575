package mount

import (
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
