//go:build cephfs

package cephfs

/*
#include <stdlib.h>
#include <dirent.h>
#include <fcntl.h>
#include <cephfs/libcephfs.h>
*/
import "C"

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"iter"
	"path"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/granary-cache/granary/internal/ufs"
)

// A lease keeps the mount handle, and whatever was opened on it, alive for
// as long as its owner or any of its calls still uses them: a call that the
// caller stopped waiting for still runs in libcephfs.
type lease struct {
	f      *FS
	h      *handle
	m      *C.struct_ceph_mount_info
	refs   atomic.Int32
	onLast func() // closes what the owner opened; runs before the handle is released
}

func (f *FS) lease(ctx context.Context) (*lease, error) {
	h, err := f.acquire(ctx)
	if err != nil {
		return nil, err
	}
	l := &lease{f: f, h: h, m: h.m}
	l.refs.Store(1)
	return l, nil
}

func (l *lease) put() {
	if l.refs.Add(-1) == 0 {
		if l.onLast != nil {
			l.onLast()
		}
		l.f.release(l.h)
	}
}

// call runs fn and waits for it at most the op timeout, or until ctx ends.
// A call given up on finishes in the background, and then undo (if not nil)
// disposes of its result.
func (l *lease) call(ctx context.Context, op, name string, fn func() C.int, undo func(C.int)) (C.int, error) {
	// A call given up on because it timed out counts as stuck until it
	// ends; one whose caller went away says nothing about the cluster.
	const waiting, answered, timedOut, canceled = 0, 1, 2, 3
	var state atomic.Int32
	done := make(chan C.int, 1)
	l.refs.Add(1)
	go func() {
		defer l.put()
		rc := fn()
		if state.CompareAndSwap(waiting, answered) {
			done <- rc
			return
		}
		if state.Load() == timedOut {
			l.f.stuck.Add(-1)
		}
		if undo != nil {
			undo(rc)
		}
	}()
	timer := time.NewTimer(l.f.timeout)
	defer timer.Stop()
	var err error
	gaveUp := int32(canceled)
	select {
	case rc := <-done:
		return rc, nil
	case <-ctx.Done():
		err = ufs.NewError(op, name, ufs.ClassCanceled, ctx.Err())
	case <-timer.C:
		gaveUp = timedOut
		err = ufs.NewError(op, name, ufs.ClassRetryable,
			fmt.Errorf("cephfs: no answer within %v (is the MDS or an OSD down?)", l.f.timeout))
		l.f.stuck.Add(1) // before the swap: the call's goroutine may end at once
	}
	if !state.CompareAndSwap(waiting, gaveUp) {
		if gaveUp == timedOut {
			l.f.stuck.Add(-1)
		}
		return <-done, nil // it answered as we gave up
	}
	return 0, err
}

// wrap classifies a libcephfs result.
func wrap(op, name string, rc C.int) error {
	e := syscall.Errno(-rc)
	var cls ufs.Class
	switch e {
	case syscall.ENOENT, syscall.ENOTDIR:
		cls = ufs.ClassNotExist
	case syscall.EACCES, syscall.EPERM:
		cls = ufs.ClassPermission
	case syscall.EINVAL, syscall.ENAMETOOLONG, syscall.ELOOP, syscall.EISDIR:
		cls = ufs.ClassInvalid
	case syscall.EIO, syscall.EAGAIN, syscall.ETIMEDOUT, syscall.ESHUTDOWN, syscall.ENOTCONN:
		cls = ufs.ClassRetryable
	default:
		cls = ufs.ClassFatal
	}
	return ufs.NewError(op, name, cls, e)
}

// cpath is the path libcephfs resolves inside the mounted root.
func cpath(name string) *C.char {
	if name == "" {
		return C.CString("/")
	}
	return C.CString("/" + name)
}

const want = C.CEPH_STATX_MODE | C.CEPH_STATX_SIZE | C.CEPH_STATX_MTIME

// info converts a statx. Symbolic links and special files keep their type
// bits, so that callers can leave them out: cephfs:// does not follow links
// (see notRegular).
func info(stx *C.struct_ceph_statx) ufs.FileInfo {
	mode := fs.FileMode(stx.stx_mode & 0o777)
	fi := ufs.FileInfo{ModTime: time.Unix(int64(stx.stx_mtime.tv_sec), int64(stx.stx_mtime.tv_nsec))}
	switch stx.stx_mode & C.S_IFMT {
	case C.S_IFDIR:
		fi.Mode = fs.ModeDir | mode
		return fi
	case C.S_IFREG:
		fi.Mode = mode
	case C.S_IFLNK:
		fi.Mode = fs.ModeSymlink | mode
	default:
		fi.Mode = fs.ModeIrregular | mode
	}
	fi.Size = int64(stx.stx_size)
	fi.Version = strconv.FormatInt(fi.Size, 36) + "-" + strconv.FormatInt(fi.ModTime.UnixNano(), 36)
	return fi
}

// notRegular is the error for a symbolic link or special file. Links are
// not followed: where they lead is resolved by libcephfs, which granary
// cannot confine to the dataset the way file:// does. A dataset that needs
// them can be read through a ceph-fuse or kernel mount with file://.
func notRegular(op, name string, fi ufs.FileInfo) error {
	what := "a special file"
	if fi.Mode&fs.ModeSymlink != 0 {
		what = "a symbolic link (cephfs:// does not follow links; use file:// over a ceph-fuse or kernel mount for datasets that need them)"
	}
	return ufs.NewError(op, name, ufs.ClassNotExist, fmt.Errorf("%s: %w", what, fs.ErrNotExist))
}

func regularOrDir(fi ufs.FileInfo) bool { return fi.Mode&(fs.ModeSymlink|fs.ModeIrregular) == 0 }

// Stat implements ufs.FS: one statx, which does not follow a final link.
func (f *FS) Stat(ctx context.Context, name string) (ufs.FileInfo, error) {
	if err := ctx.Err(); err != nil {
		return ufs.FileInfo{}, ufs.NewError("stat", name, ufs.ClassCanceled, err)
	}
	l, err := f.lease(ctx)
	if err != nil {
		return ufs.FileInfo{}, err
	}
	defer l.put()
	if err := f.confined(ctx, l, "stat", name, false); err != nil {
		return ufs.FileInfo{}, err
	}
	fi, err := l.lstat(ctx, "stat", name)
	if err != nil {
		return ufs.FileInfo{}, err
	}
	if !regularOrDir(fi) {
		return ufs.FileInfo{}, notRegular("stat", name, fi)
	}
	return fi, nil
}

// lstat is one statx of name that does not follow a final link.
func (l *lease) lstat(ctx context.Context, op, name string) (ufs.FileInfo, error) {
	p := cpath(name)
	stx := (*C.struct_ceph_statx)(C.calloc(1, C.sizeof_struct_ceph_statx))
	free := func() { C.free(unsafe.Pointer(p)); C.free(unsafe.Pointer(stx)) }
	rc, err := l.call(ctx, op, name, func() C.int { return C.ceph_statx(l.m, p, stx, want, C.AT_SYMLINK_NOFOLLOW) }, func(C.int) { free() })
	if err != nil {
		return ufs.FileInfo{}, err // freed by the call, when it ends
	}
	defer free()
	if rc < 0 {
		return ufs.FileInfo{}, wrap(op, name, rc)
	}
	fi := info(stx)
	fi.Name = name
	return fi, nil
}

// confined checks that no directory on the way to name (nor name itself,
// when self) is a symbolic link or a file: libcephfs follows links in the
// middle of a path, and a relative one can lead out of the dataset.
// Directories seen in a listing, or checked once, are known to be real, so
// on the paths granary walks (listed first) this costs nothing.
func (f *FS) confined(ctx context.Context, l *lease, op, name string, self bool) error {
	check := func(dir string) error {
		if _, ok := f.realDirs.Load(dir); ok {
			return nil
		}
		fi, err := l.lstat(ctx, op, dir)
		if err != nil {
			return err
		}
		if !fi.IsDir() {
			what := "not a directory"
			if fi.Mode&fs.ModeSymlink != 0 {
				what = "a symbolic link (cephfs:// does not follow links)"
			}
			return ufs.NewError(op, name, ufs.ClassNotExist, fmt.Errorf("%s is %s: %w", dir, what, fs.ErrNotExist))
		}
		f.realDirs.Store(dir, struct{}{})
		return nil
	}
	for i := range len(name) {
		if name[i] == '/' {
			if err := check(name[:i]); err != nil {
				return err
			}
		}
	}
	if self && name != "" {
		return check(name)
	}
	return nil
}

// List implements ufs.FS with readdirplus: names and attributes together.
func (f *FS) List(ctx context.Context, dir string) iter.Seq2[[]ufs.FileInfo, error] {
	return func(yield func([]ufs.FileInfo, error) bool) {
		l, err := f.lease(ctx)
		if err != nil {
			yield(nil, err)
			return
		}
		defer l.put()
		if err := f.confined(ctx, l, "list", dir, true); err != nil {
			yield(nil, err)
			return
		}
		p := cpath(dir)
		// C memory: a call given up on may still write to it.
		de := (*C.struct_dirent)(C.calloc(1, C.sizeof_struct_dirent))
		stx := (*C.struct_ceph_statx)(C.calloc(1, C.sizeof_struct_ceph_statx))
		dp := (**C.struct_ceph_dir_result)(C.calloc(1, C.size_t(unsafe.Sizeof(uintptr(0)))))
		l.onLast = func() {
			if *dp != nil {
				C.ceph_closedir(l.m, *dp)
			}
			for _, m := range []unsafe.Pointer{unsafe.Pointer(p), unsafe.Pointer(de), unsafe.Pointer(stx), unsafe.Pointer(dp)} {
				C.free(m)
			}
		}
		rc, err := l.call(ctx, "list", dir, func() C.int {
			rc := C.ceph_opendir(l.m, p, dp)
			if rc == 0 {
				// Start past "." and "..": filling them in asks the MDS for
				// the recursive stats of the directory and of its parent.
				C.ceph_seekdir(l.m, *dp, 2)
			}
			return rc
		}, nil)
		if err == nil && rc < 0 {
			*dp = nil
			err = wrap("list", dir, rc)
		}
		if err != nil {
			yield(nil, err)
			return
		}
		for {
			page := make([]ufs.FileInfo, 0, 1000)
			for len(page) < cap(page) {
				rc, err := l.call(ctx, "list", dir, func() C.int { return C.ceph_readdirplus_r(l.m, *dp, de, stx, want, 0, nil) }, nil)
				if err == nil && rc < 0 {
					err = wrap("list", dir, rc)
				}
				if err != nil {
					yield(nil, err)
					return
				}
				if rc == 0 {
					l.h.listed(dir) // before the last page: its reader may open at once
					if len(page) > 0 {
						yield(page, nil)
					}
					return
				}
				name := C.GoString(&de.d_name[0])
				if !ufs.ValidName(name) {
					continue
				}
				fi := info(stx)
				if !regularOrDir(fi) {
					continue
				}
				if fi.IsDir() {
					f.realDirs.Store(path.Join(dir, name), struct{}{})
				}
				fi.Name = name
				page = append(page, fi)
			}
			if !yield(page, nil) {
				return
			}
		}
	}
}

// warmDir lists dir, once per client session, before the second file of it
// is opened. Opening a file costs the MDS a lookup unless this session
// listed its directory (readdirplus hands the client every entry with its
// capabilities). A new session (after an idle unmount, say) knows no
// directory, while granary's own metadata cache may still answer every
// listing, so without this a cold epoch would cost a lookup per file; with
// it, a directory costs one lookup and one listing. The first read of a
// directory does not list it: one file read from a large directory is
// cheaper as a lookup. Reads that find a listing under way wait for it.
func (f *FS) warmDir(ctx context.Context, h *handle, dir string) {
	dir = dirKey(dir)
	h.dmu.Lock()
	d := h.dirs[dir]
	switch {
	case d == nil:
		h.dirs[dir] = &dirState{}
		h.dmu.Unlock()
		return
	case d.listed != nil:
		h.dmu.Unlock()
		select {
		case <-d.listed:
		case <-ctx.Done():
		}
		return
	}
	d.listed = make(chan struct{})
	h.dmu.Unlock()
	defer close(d.listed)
	for _, err := range f.List(ctx, dir) {
		if err != nil {
			return // the reads look the files up one by one
		}
	}
}

// listed records that h listed dir in full.
func (h *handle) listed(dir string) {
	dir = dirKey(dir)
	h.dmu.Lock()
	defer h.dmu.Unlock()
	if d := h.dirs[dir]; d == nil || d.listed == nil {
		done := make(chan struct{})
		close(done)
		h.dirs[dir] = &dirState{listed: done}
	}
}

// dirKey is a directory's name in handle.dirs: "" for the root.
func dirKey(dir string) string { return strings.TrimPrefix(path.Clean("/"+dir), "/") }

// ReadRange implements ufs.FS with pread on a file opened for the range.
func (f *FS) ReadRange(ctx context.Context, name string, r ufs.Range) (io.ReadCloser, error) {
	if err := ctx.Err(); err != nil {
		return nil, ufs.NewError("read", name, ufs.ClassCanceled, err)
	}
	if r.Off < 0 {
		return nil, ufs.NewError("read", name, ufs.ClassInvalid, fmt.Errorf("negative offset %d", r.Off))
	}
	l, err := f.lease(ctx)
	if err != nil {
		return nil, err
	}
	if err := f.confined(ctx, l, "read", name, false); err != nil {
		l.put()
		return nil, err
	}
	f.warmDir(ctx, l.h, path.Dir(name))
	p := cpath(name)
	stx := (*C.struct_ceph_statx)(C.calloc(1, C.sizeof_struct_ceph_statx))
	fd := C.int(-1)
	l.onLast = func() {
		if fd >= 0 {
			C.ceph_close(l.m, fd)
		}
		C.free(unsafe.Pointer(p))
		C.free(unsafe.Pointer(stx))
	}
	fail := func(err error) (io.ReadCloser, error) {
		l.put()
		return nil, err
	}
	// Open and fstatx in one call: the version is checked on the file
	// that will be read.
	rc, err := l.call(ctx, "read", name, func() C.int {
		fd = C.ceph_open(l.m, p, C.O_RDONLY|C.O_NOFOLLOW, 0)
		if fd < 0 {
			return fd
		}
		return C.ceph_fstatx(l.m, fd, stx, want, 0)
	}, nil)
	if err != nil {
		return fail(err)
	}
	if rc < 0 {
		return fail(wrap("read", name, rc))
	}
	fi := info(stx)
	if fi.IsDir() {
		return fail(ufs.NewError("read", name, ufs.ClassInvalid, errors.New("is a directory")))
	}
	if !regularOrDir(fi) {
		return fail(notRegular("read", name, fi))
	}
	if r.IfVersion != "" && fi.Version != r.IfVersion {
		return fail(ufs.NewError("read", name, ufs.ClassVersionChanged, ufs.ErrVersionChanged))
	}
	end := fi.Size
	if r.Len >= 0 {
		end = min(end, r.Off+r.Len)
	}
	return &reader{l: l, fd: fd, name: name, off: r.Off, end: max(end, r.Off), ctx: ctx}, nil
}

type reader struct {
	l        *lease
	fd       C.int
	name     string
	off, end int64 // the next byte to ask libcephfs for, and the range's end
	ctx      context.Context
	closed   bool
	ahead    []byte // read from the file past what the caller took
}

// minRead is the least a reader asks libcephfs for while the range goes
// on. The client has no object cache (see connectNow), so each call is an
// OSD request: a caller reading in small pieces (io.ReadAll starts at 512
// bytes) would otherwise cost one per piece.
const minRead = 1 << 20

func (r *reader) Read(p []byte) (int, error) {
	if r.closed {
		return 0, ufs.NewError("read", r.name, ufs.ClassInvalid, fs.ErrClosed)
	}
	if len(r.ahead) > 0 {
		k := copy(p, r.ahead)
		r.ahead = r.ahead[k:]
		return k, nil
	}
	if r.off >= r.end {
		return 0, io.EOF
	}
	if len(p) == 0 {
		return 0, nil
	}
	n := min(max(int64(len(p)), minRead), r.end-r.off, 64<<20)
	// The read lands in C memory: a read given up on may still write.
	buf := C.malloc(C.size_t(n))
	rc, err := r.l.call(r.ctx, "read", r.name, func() C.int {
		return C.ceph_read(r.l.m, r.fd, (*C.char)(buf), C.int64_t(n), C.int64_t(r.off))
	}, func(C.int) { C.free(buf) })
	if err != nil {
		return 0, err // buf is freed by undo
	}
	defer C.free(buf)
	if rc < 0 {
		return 0, wrap("read", r.name, rc)
	}
	if rc == 0 {
		return 0, io.EOF
	}
	got := unsafe.Slice((*byte)(buf), int(rc))
	k := copy(p, got)
	if k < len(got) {
		r.ahead = append(r.ahead[:0], got[k:]...)
	}
	r.off += int64(rc)
	return k, nil
}

func (r *reader) Close() error {
	if r.closed {
		return nil
	}
	r.closed = true
	r.l.put()
	return nil
}
