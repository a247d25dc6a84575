// Package local is the file:// UFS backend: a directory of the local file
// system, or of a mounted shared one (a kernel CephFS or ceph-fuse mount, NFS).
//
// All access goes through os.Root, so neither ".." nor a symlink can lead a
// read outside the dataset directory; symlinks that stay inside are followed.
package local

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"iter"
	"os"
	"path/filepath"
	"strconv"
	"syscall"

	"github.com/granary-cache/granary/internal/ufs"
)

// listPage is how many directory entries are read and returned at a time.
const listPage = 1000

// FS is a read-only UFS over one local directory.
type FS struct {
	dir  string
	root *os.Root
}

// Open opens the directory dir (an absolute path) as a UFS.
func Open(dir string) (*FS, error) {
	if !filepath.IsAbs(dir) {
		return nil, fmt.Errorf("file:// dataset root %q is not an absolute path", dir)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("open dataset root: %w", err)
	}
	st, err := root.Stat(".")
	if err != nil {
		root.Close()
		return nil, fmt.Errorf("open dataset root: %w", err)
	}
	if !st.IsDir() {
		root.Close()
		return nil, fmt.Errorf("open dataset root %s: not a directory", dir)
	}
	return &FS{dir: dir, root: root}, nil
}

// Close releases the root directory handle.
func (f *FS) Close() error { return f.root.Close() }

// rel maps a cleaned dataset path to a name os.Root accepts.
func rel(name string) string {
	if name == "" {
		return "."
	}
	return name
}

// Stat implements ufs.FS.
func (f *FS) Stat(ctx context.Context, name string) (ufs.FileInfo, error) {
	if err := ctx.Err(); err != nil {
		return ufs.FileInfo{}, ufs.NewError("stat", name, ufs.ClassCanceled, err)
	}
	st, err := f.root.Stat(rel(name))
	if err != nil {
		return ufs.FileInfo{}, wrap("stat", name, err)
	}
	fi := info(st)
	fi.Name = name
	return fi, nil
}

// List implements ufs.FS.
func (f *FS) List(ctx context.Context, dir string) iter.Seq2[[]ufs.FileInfo, error] {
	return func(yield func([]ufs.FileInfo, error) bool) {
		d, err := f.root.Open(rel(dir))
		if err != nil {
			yield(nil, wrap("list", dir, err))
			return
		}
		defer d.Close()
		for {
			if err := ctx.Err(); err != nil {
				yield(nil, ufs.NewError("list", dir, ufs.ClassCanceled, err))
				return
			}
			ents, err := d.ReadDir(listPage)
			if len(ents) > 0 {
				page := make([]ufs.FileInfo, 0, len(ents))
				for _, e := range ents {
					fi, ok := f.entryInfo(dir, e)
					if ok {
						page = append(page, fi)
					}
				}
				if len(page) > 0 && !yield(page, nil) {
					return
				}
			}
			if err == io.EOF {
				return
			}
			if errors.Is(err, syscall.ENOTDIR) {
				yield(nil, ufs.NewError("list", dir, ufs.ClassInvalid, errors.New("not a directory")))
				return
			}
			if err != nil {
				yield(nil, wrap("list", dir, err))
				return
			}
		}
	}
}

// entryInfo returns the attributes of one directory entry, following a
// symlink as long as its target stays inside the root. Entries that vanished
// since the directory was read, or point outside, are left out.
func (f *FS) entryInfo(dir string, e fs.DirEntry) (ufs.FileInfo, bool) {
	if !ufs.ValidName(e.Name()) {
		return ufs.FileInfo{}, false
	}
	var st fs.FileInfo
	var err error
	if e.Type()&fs.ModeSymlink != 0 {
		st, err = f.root.Stat(ufs.Join(dir, e.Name()))
	} else {
		st, err = e.Info()
	}
	if err != nil {
		return ufs.FileInfo{}, false
	}
	fi := info(st)
	fi.Name = e.Name()
	return fi, true
}

// ReadRange implements ufs.FS.
func (f *FS) ReadRange(ctx context.Context, name string, r ufs.Range) (io.ReadCloser, error) {
	if err := ctx.Err(); err != nil {
		return nil, ufs.NewError("read", name, ufs.ClassCanceled, err)
	}
	if r.Off < 0 {
		return nil, ufs.NewError("read", name, ufs.ClassInvalid, fmt.Errorf("negative offset %d", r.Off))
	}
	file, err := f.root.Open(rel(name))
	if err != nil {
		return nil, wrap("read", name, err)
	}
	st, err := file.Stat()
	if err != nil {
		file.Close()
		return nil, wrap("read", name, err)
	}
	if st.IsDir() {
		file.Close()
		return nil, ufs.NewError("read", name, ufs.ClassInvalid, errors.New("is a directory"))
	}
	if r.IfVersion != "" && version(st) != r.IfVersion {
		file.Close()
		return nil, ufs.NewError("read", name, ufs.ClassVersionChanged, ufs.ErrVersionChanged)
	}
	n := r.Len
	if rest := st.Size() - r.Off; n < 0 || n > rest {
		n = max(rest, 0)
	}
	return &rangeReader{SectionReader: io.NewSectionReader(file, r.Off, n), file: file}, nil
}

type rangeReader struct {
	*io.SectionReader
	file *os.File
}

func (r *rangeReader) Close() error { return r.file.Close() }

func info(st fs.FileInfo) ufs.FileInfo {
	fi := ufs.FileInfo{ModTime: st.ModTime(), Mode: st.Mode() & (fs.ModeDir | fs.ModePerm)}
	if !st.IsDir() {
		fi.Size = st.Size()
		fi.Version = version(st)
	}
	return fi
}

// version is size and mtime in nanoseconds: what a POSIX file system offers
// that changes whenever the content does.
func version(st fs.FileInfo) string {
	return strconv.FormatInt(st.Size(), 36) + "-" + strconv.FormatInt(st.ModTime().UnixNano(), 36)
}

// wrap classifies an error from the os package.
func wrap(op, name string, err error) error {
	var cls ufs.Class
	switch {
	case errors.Is(err, fs.ErrNotExist), errors.Is(err, syscall.ENOTDIR):
		cls = ufs.ClassNotExist
	case errors.Is(err, fs.ErrPermission), escapes(err):
		cls = ufs.ClassPermission
	case errors.Is(err, syscall.EINVAL), errors.Is(err, syscall.ENAMETOOLONG), errors.Is(err, syscall.ELOOP):
		cls = ufs.ClassInvalid
	case errors.Is(err, syscall.EIO), errors.Is(err, syscall.EAGAIN), errors.Is(err, syscall.EINTR),
		errors.Is(err, syscall.ESTALE), errors.Is(err, syscall.ETIMEDOUT):
		cls = ufs.ClassRetryable
	default:
		cls = ufs.ClassFatal
	}
	// Report the path inside the dataset, not the host path, so that errors
	// do not leak where the dataset lives.
	var pe *fs.PathError
	if errors.As(err, &pe) {
		err = pe.Err
	}
	if escapes(err) {
		err = fmt.Errorf("%w: a symlink leads out of the dataset root", fs.ErrPermission)
	}
	return ufs.NewError(op, name, cls, err)
}

// escapes reports os.Root's refusal to follow a path outside the root. The
// standard library keeps that error unexported, so it is matched by text; a
// test pins the behaviour.
func escapes(err error) bool {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		err = pe.Err
	}
	return err != nil && err.Error() == "path escapes from parent"
}
