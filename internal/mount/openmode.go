package mount

import (
	"fmt"

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
