// Package cache keeps cached UFS data on a worker's tiers: directories with
// quotas (a tmpfs for MEM, local disks for SSD and HDD). A file is cut into
// blocks, the unit of placement, and each block into pages, the unit of
// fetching and checksumming. A block is one plain file on one tier, named from
// the dataset, path, UFS version and block index, so a changed UFS file never
// meets its old bytes, and so a block can be sent from its file, read directly
// by a reader on the same node, or handed to the kernel for FUSE passthrough.
//
// Page presence and a CRC32C per page are kept in a journal per tier (see
// journal.go) that survives restarts. A page is checked against its CRC at
// every read (ReadPage), never trusted because it was checked once, and a
// background scrub (scrub.go) checks the pages nobody reads; a page that
// fails is dropped, to be fetched again. Tiers are kept under their high
// watermark by evicting least-recently-used blocks down to the low one; MEM
// demotes to the next tier rather than dropping.
package cache

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"github.com/granary-cache/granary/internal/block"
)

// Default sizes.
const (
	DefaultBlockSize = 64 << 20
	DefaultPageSize  = 4 << 20
)

// Layout is how files are cut into blocks and blocks into pages.
type Layout struct {
	BlockSize int64
	PageSize  int64
}

// Check reports a layout that cannot work.
func (l Layout) Check() error {
	if l.PageSize <= 0 || l.BlockSize <= 0 {
		return fmt.Errorf("block_size %d and page_size %d must be positive", l.BlockSize, l.PageSize)
	}
	if l.BlockSize%l.PageSize != 0 {
		return fmt.Errorf("block_size %d must be a multiple of page_size %d", l.BlockSize, l.PageSize)
	}
	return nil
}

// Blocks is the number of blocks of a file of size bytes (a file of 0 bytes
// has none).
func (l Layout) Blocks(size int64) int64 {
	return (size + l.BlockSize - 1) / l.BlockSize
}

// BlockLen is the length of block idx of a file of size bytes.
func (l Layout) BlockLen(size, idx int64) int64 {
	return max(0, min(l.BlockSize, size-idx*l.BlockSize))
}

// Pages is the number of pages of a block of blockLen bytes.
func (l Layout) Pages(blockLen int64) int {
	return int((blockLen + l.PageSize - 1) / l.PageSize)
}

// PageLen is the length of page p of a block of blockLen bytes.
func (l Layout) PageLen(blockLen int64, p int) int64 {
	return max(0, min(l.PageSize, blockLen-int64(p)*l.PageSize))
}

// digest is a block's ID in 16 bytes, the name of its file: file names
// and journal records stay small whatever the path length, and no path
// character ever reaches the tier's file system.
type digest [16]byte

func digestOf(k block.ID) digest {
	h := sha256.New()
	for _, s := range []string{k.Dataset, k.Path, k.Version} {
		var n [binary.MaxVarintLen64]byte
		h.Write(n[:binary.PutUvarint(n[:], uint64(len(s)))])
		h.Write([]byte(s))
	}
	var nums [16]byte
	binary.LittleEndian.PutUint64(nums[:8], uint64(k.Index))
	binary.LittleEndian.PutUint64(nums[8:], uint64(k.BlockSize))
	h.Write(nums[:])
	var id digest
	copy(id[:], h.Sum(nil))
	return id
}

func (id digest) String() string { return hex.EncodeToString(id[:]) }

// relPath is where a block lives inside its tier: 256 subdirectories keep any
// one directory small.
func (id digest) relPath() string {
	s := id.String()
	return "blocks/" + s[:2] + "/" + s
}
