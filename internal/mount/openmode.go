package mount

import (
	"cmp"
	"fmt"
	"slices"
	"strings"

	"github.com/granary-cache/granary/internal/client"
	"github.com/granary-cache/granary/internal/config"
)

// SmallFile is the size under which a dataset's files count as small for
// open_mode auto. A zero-message open saves the round trip to granary that
// every open costs otherwise (about as long as reading 100-200 KiB through
// the daemon on this kind of machine); passthrough saves the daemon's copy
// of every byte read, which outweighs that round trip from a few hundred
// KiB on.
const SmallFile = 256 << 10

// OpenChoice is the open mode a mount uses for a dataset, and why.
type OpenChoice struct {
	Mode   string `json:"mode"`
	Reason string `json:"reason"`
}

// ChooseOpenMode decides open_mode auto from the sizes of the files the
// first listings show: zero-message opens for a dataset of small files,
// passthrough for one of large files. Passthrough reads only files of one
// block, so a dataset whose typical file spans several blocks (is larger
// than maxBlock: its block_size, or whole_file when that is larger) gains
// nothing from it either.
func ChooseOpenMode(s client.FileSizes, maxBlock int64) OpenChoice {
	median := config.Size((s.Median + 512) &^ 1023) // to the KiB, for people
	seen := fmt.Sprintf("%d files in %d directories listed", s.Files, s.Dirs)
	switch {
	case s.Files == 0:
		return OpenChoice{config.OpenPassthrough, "no files seen in the first listings (" + seen + "): passthrough, the mode for large files"}
	case s.Median < SmallFile:
		return OpenChoice{config.OpenZeroMessage, fmt.Sprintf("%s, median size %s (under %s): small files open fastest without a round trip", seen, median, config.Size(SmallFile))}
	case s.Median > maxBlock:
		return OpenChoice{config.OpenZeroMessage, fmt.Sprintf("%s, median size %s (more than a block of %s): passthrough could not serve them", seen, median, config.Size(maxBlock))}
	}
	return OpenChoice{config.OpenPassthrough, fmt.Sprintf("%s, median size %s: large files read fastest by passthrough", seen, median)}
}

// MaxSplitDirs bounds the directories of one dataset that get a FUSE
// connection (and a serving process) of their own.
const MaxSplitDirs = 8

// SplitOpenModes picks the top-level directories of a dataset whose files
// call for the other open mode than the dataset as a whole got (dataset,
// from ChooseOpenMode on the whole sample): a directory of checkpoints in
// a dataset of images, say. Each gets a connection of its own, so that
// both kinds of files open the fastest way. At most MaxSplitDirs, the
// ones with the most bytes listed first; the keys are the directories'
// names.
func SplitOpenModes(dataset OpenChoice, s client.FileSizes, maxBlock int64) map[string]OpenChoice {
	type cand struct {
		name   string
		total  int64
		choice OpenChoice
	}
	var cands []cand
	for name, sub := range s.TopDirs {
		ch := ChooseOpenMode(sub, maxBlock)
		if sub.Files == 0 || ch.Mode == dataset.Mode {
			continue
		}
		ch.Reason = fmt.Sprintf("directory %s differs from the rest of its dataset (%s): %s", name, dataset.Mode, ch.Reason)
		cands = append(cands, cand{name, sub.Total, ch})
	}
	slices.SortFunc(cands, func(a, b cand) int {
		if c := cmp.Compare(b.total, a.total); c != 0 {
			return c
		}
		return strings.Compare(a.name, b.name)
	})
	out := map[string]OpenChoice{}
	for _, c := range cands[:min(len(cands), MaxSplitDirs)] {
		out[c.name] = c.choice
	}
	return out
}
