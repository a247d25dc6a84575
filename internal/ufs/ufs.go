// Package ufs defines the read-only view granary has of an under file system
// (UFS): the storage where training data really lives (a POSIX path, an S3
// bucket, CephFS). Every backend implements FS; everything above it (the cache,
// the client, the CLI) sees only this interface.
//
// Paths given to an FS are relative to the dataset root, slash-separated and
// already cleaned with CleanPath: "" is the root itself, "a/b.jpg" a file below
// it. Backends must still refuse to leave their root whatever they are given.
package ufs

import (
	"context"
	"io"
	"io/fs"
	"iter"
	"time"
)

// FS is a read-only under file system.
type FS interface {
	// Stat returns the attributes of one path ("" is the root).
	Stat(ctx context.Context, name string) (FileInfo, error)

	// List yields the entries of directory dir in pages (in whatever order and
	// page size the backend finds natural, typically about 1000 entries), so that
	// a directory of a million entries never needs them all in memory at once.
	// Each page is a fresh slice that the caller may keep. Entries carry full
	// attributes, so one listing answers Stat for every child. Entries that
	// cannot be represented (an empty or "." name, a symlink leaving the root)
	// are skipped. Iteration stops at the first error, yielded with a nil page.
	List(ctx context.Context, dir string) iter.Seq2[[]FileInfo, error]

	// ReadRange returns a reader of the bytes [r.Off, r.Off+r.Len) of file name.
	// A range that crosses the end of the file is cut at the end; one that starts
	// at or past it reads nothing. If r.IfVersion is set and the file's version
	// differs, it fails with ErrVersionChanged instead of returning other bytes.
	// The caller must Close the reader.
	ReadRange(ctx context.Context, name string, r Range) (io.ReadCloser, error)

	// Close releases the backend's resources (connections, handles).
	Close() error
}

// Range is a byte range of one file and the version it must belong to.
type Range struct {
	Off int64
	// Len is the number of bytes wanted; a negative Len reads to the end.
	Len int64
	// IfVersion, when not empty, is the FileInfo.Version the bytes must come from.
	IfVersion string
}

// FileInfo holds the attributes of one file or directory.
type FileInfo struct {
	// Name is the base name in a List page and the cleaned path in Stat.
	Name    string
	Size    int64
	ModTime time.Time
	// Mode carries fs.ModeDir for directories and the permission bits.
	Mode fs.FileMode
	// Version identifies the content: an S3 ETag, or size and mtime for POSIX
	// backends. Empty for directories. Cached bytes are keyed by it, so a
	// changed file never meets its old bytes.
	Version string
}

// IsDir reports whether the entry is a directory.
func (fi FileInfo) IsDir() bool { return fi.Mode.IsDir() }

// DirAffine is implemented by backends where opening a file costs a
// metadata request unless the same client listed the file's directory
// before (CephFS: a listing gives the client every child's inode and caps).
// A cluster then reads small files through the worker that listed them.
type DirAffine interface {
	DirAffine() bool
}
