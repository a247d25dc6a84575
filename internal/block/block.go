// Package block names a block, the unit granary caches, places and reads:
// a range of BlockSize bytes of one version of one file of a dataset. Every
// layer uses these names — the cache stores blocks by ID, placement puts
// them on workers by PlacementKey, a reader asks for one by Ref — so that a
// block is called one thing from the client to the tier it lives on.
package block

import (
	"fmt"
	"strconv"
)

// ID names one block: block Index, in blocks of BlockSize bytes, of one
// Version of the file at Path in Dataset. The block size is part of the
// name: block 3 of 64 MiB blocks is not block 3 of 1 GiB blocks, and a
// changed layout must never serve the old bytes.
type ID struct {
	Dataset   string
	Path      string
	Version   string
	BlockSize int64
	Index     int64
}

func (id ID) String() string {
	return fmt.Sprintf("/%s/%s@%s#%d/%d", id.Dataset, id.Path, id.Version, id.Index, id.BlockSize)
}

// PlacementKey is the key that decides the block's owners (see
// PlacementKey).
func (id ID) PlacementKey() string { return PlacementKey(id.Dataset, id.Path, id.Index) }

// PlacementKey is the placement key of block idx of a file. Blocks are
// placed by file and index only: a new version of a file, or a new block
// size, lands on the same workers as the old one.
func PlacementKey(ds, p string, idx int64) string {
	return "d\x00" + ds + "\x00" + p + "\x00" + strconv.FormatInt(idx, 10)
}

// Ref is what a reader asks a worker for: a block and the size of its
// file, which the reader knows from the file's metadata, so that any worker
// can fetch the block without asking the file's metadata owner.
type Ref struct {
	ID
	Size int64 // the file's
}

// Len is the block's length: the block size, or less for the last block
// of the file (0 past its end).
func (r Ref) Len() int64 {
	if r.BlockSize <= 0 {
		return 0
	}
	return max(0, min(r.BlockSize, r.Size-r.Index*r.BlockSize))
}

// SizeFor is the block size of a file of size bytes in a dataset of
// blocks of bs bytes whose files up to whole bytes are one block each
// (config.Dataset.WholeFile; 0: none is). Such a file's block size is its
// size rounded up to a multiple of bs, so that it still fits the worker's
// pages; every other file is in blocks of bs. Every reader and loader of
// the dataset computes it the same way, from the file's size.
func SizeFor(size, bs, whole int64) int64 {
	if size > bs && size <= whole {
		return (size + bs - 1) / bs * bs
	}
	return bs
}
