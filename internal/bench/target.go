package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/granary-cache/granary/internal/ufs"
)

// Target is what run reads: a directory (a granary mount, a local copy, a
// ceph-fuse or rclone mount) or a UFS read directly (an SDK baseline).
type Target interface {
	// Walk lists every file below the target's root with its size, the way a
	// training job builds its file list.
	Walk(ctx context.Context) ([]Entry, error)
	// Read reads n bytes at off of a file (n < 0: the whole file) into buf,
	// which it may grow, and says when the first byte came.
	Read(ctx context.Context, name string, off, n int64, buf *[]byte) (got int64, firstByte time.Duration, err error)
	Close() error
}

// Entry is one file of a target.
type Entry struct {
	Name string
	Size int64
}

// DirTarget reads a directory with plain system calls.
type DirTarget struct{ Root string }

// OpenDir checks that root is a readable directory.
func OpenDir(root string) (*DirTarget, error) {
	fi, err := os.Stat(root)
	if err != nil {
		return nil, err
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("%s is not a directory", root)
	}
	if _, err := os.ReadDir(root); err != nil {
		return nil, err
	}
	return &DirTarget{Root: root}, nil
}

// Walk implements Target.
func (d *DirTarget) Walk(ctx context.Context) ([]Entry, error) {
	var out []Entry
	err := filepath.WalkDir(d.Root, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if !e.Type().IsRegular() {
			return nil
		}
		fi, err := e.Info()
		if err != nil {
			return err
		}
		out = append(out, Entry{Name: strings.TrimPrefix(p, d.Root+"/"), Size: fi.Size()})
		return nil
	})
	return out, err
}

// Read implements Target: open, read (pread for a range), close.
func (d *DirTarget) Read(_ context.Context, name string, off, n int64, buf *[]byte) (int64, time.Duration, error) {
	start := time.Now()
	f, err := os.Open(filepath.Join(d.Root, name))
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	if n < 0 {
		return readAll(f, start, buf)
	}
	grow(buf, n)
	got, err := f.ReadAt((*buf)[:n], off)
	if err == io.EOF {
		err = nil
	}
	return int64(got), time.Since(start), err
}

// Close implements Target.
func (d *DirTarget) Close() error { return nil }

// readAll reads r to its end in chunks of up to 1 MiB, like a data loader
// reading a sample into memory, and times the first chunk.
func readAll(r io.Reader, start time.Time, buf *[]byte) (int64, time.Duration, error) {
	grow(buf, 1<<20)
	var got int64
	var first time.Duration
	for {
		n, err := r.Read((*buf)[:1<<20])
		if got == 0 && (n > 0 || err != nil) {
			first = time.Since(start)
		}
		got += int64(n)
		if err == io.EOF {
			return got, first, nil
		}
		if err != nil {
			return got, first, err
		}
	}
}

func grow(buf *[]byte, n int64) {
	if int64(cap(*buf)) < n {
		*buf = make([]byte, n)
	}
	*buf = (*buf)[:cap(*buf)]
}

// UFSTarget reads a UFS directly, without a cache: what a job using the
// storage's own SDK or client pays.
type UFSTarget struct{ FS ufs.FS }

// Walk implements Target.
func (u *UFSTarget) Walk(ctx context.Context) ([]Entry, error) {
	var out []Entry
	var walk func(dir string) error
	walk = func(dir string) error {
		for page, err := range u.FS.List(ctx, dir) {
			if err != nil {
				return err
			}
			for _, fi := range page {
				name := path.Join(dir, fi.Name)
				if fi.IsDir() {
					if err := walk(name); err != nil {
						return err
					}
				} else {
					out = append(out, Entry{Name: name, Size: fi.Size})
				}
			}
		}
		return nil
	}
	err := walk("")
	return out, err
}

// Read implements Target.
func (u *UFSTarget) Read(ctx context.Context, name string, off, n int64, buf *[]byte) (int64, time.Duration, error) {
	start := time.Now()
	r := ufs.Range{Off: off, Len: n}
	if n < 0 {
		r.Off = 0
	}
	rc, err := u.FS.ReadRange(ctx, name, r)
	if err != nil {
		return 0, 0, err
	}
	defer rc.Close()
	if n < 0 {
		return readAll(rc, start, buf)
	}
	grow(buf, n)
	got, err := io.ReadFull(rc, (*buf)[:n])
	if errors.Is(err, io.ErrUnexpectedEOF) || err == io.EOF {
		err = nil
	}
	return int64(got), time.Since(start), err
}

// Close implements Target.
func (u *UFSTarget) Close() error { return u.FS.Close() }
