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
	"strconv"
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
	m      *C.struct_ceph_mount_info
	refs   atomic.Int32
	onLast func() // closes what the owner opened; runs before the handle is released
}

func (f *FS) lease() (*lease, error) {
	m, err := f.acquire()
	if err != nil {
		return nil, err
	}
	l := &lease{f: f, m: m}
	l.refs.Store(1)
	return l, nil
}

func (l *lease) put() {
	if l.refs.Add(-1) == 0 {
		if l.onLast != nil {
			l.onLast()
		}
		l.f.release()
	}
}

// call runs fn and waits for it at most the op timeout, or until ctx ends.
// A call given up on finishes in the background, and then undo (if not nil)
// disposes of its result.
func (l *lease) call(ctx context.Context, op, name string, fn func() C.int, undo func(C.int)) (C.int, error) {
	const waiting, answered, abandoned = 0, 1, 2
	var state atomic.Int32
	done := make(chan C.int, 1)
	l.refs.Add(1)
	go func() {
		defer l.put()
		rc := fn()
		if state.CompareAndSwap(waiting, answered) {
			done <- rc
		} else if undo != nil {
			undo(rc)
		}
	}()
	timer := time.NewTimer(l.f.timeout)
	defer timer.Stop()
	var err error
	select {
	case rc := <-done:
		return rc, nil
	case <-ctx.Done():
		err = ufs.NewError(op, name, ufs.ClassCanceled, ctx.Err())
	case <-timer.C:
		err = ufs.NewError(op, name, ufs.ClassRetryable,
			fmt.Errorf("cephfs: no answer within %v (is the MDS or an OSD down?)", l.f.timeout))
	}
	if !state.CompareAndSwap(waiting, abandoned) {
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

func info(stx *C.struct_ceph_statx) ufs.FileInfo {
	mode := fs.FileMode(stx.stx_mode & 0o777)
	fi := ufs.FileInfo{ModTime: time.Unix(int64(stx.stx_mtime.tv_sec), int64(stx.stx_mtime.tv_nsec))}
	if stx.stx_mode&C.S_IFMT == C.S_IFDIR {
		fi.Mode = fs.ModeDir | mode
		return fi
	}
	fi.Mode = mode
	fi.Size = int64(stx.stx_size)
	fi.Version = strconv.FormatInt(fi.Size, 36) + "-" + strconv.FormatInt(fi.ModTime.UnixNano(), 36)
	return fi
}

// Stat implements ufs.FS: one statx.
func (f *FS) Stat(ctx context.Context, name string) (ufs.FileInfo, error) {
	if err := ctx.Err(); err != nil {
		return ufs.FileInfo{}, ufs.NewError("stat", name, ufs.ClassCanceled, err)
	}
	l, err := f.lease()
	if err != nil {
		return ufs.FileInfo{}, err
	}
	p := cpath(name)
	stx := (*C.struct_ceph_statx)(C.calloc(1, C.sizeof_struct_ceph_statx))
	l.onLast = func() { C.free(unsafe.Pointer(p)); C.free(unsafe.Pointer(stx)) }
	rc, err := l.call(ctx, "stat", name, func() C.int { return C.ceph_statx(l.m, p, stx, want, 0) }, nil)
	var fi ufs.FileInfo
	if err == nil && rc >= 0 {
		fi = info(stx)
		fi.Name = name
	}
	l.put() // before underFile, which takes a lease of its own
	if err != nil {
		return ufs.FileInfo{}, err
	}
	if rc < 0 {
		err := wrap("stat", name, rc)
		if syscall.Errno(-rc) == syscall.EACCES && name != "" && f.underFile(ctx, name) {
			// libcephfs answers EACCES, not ENOTDIR, for a path through a file.
			err = ufs.NewError("stat", name, ufs.ClassNotExist, syscall.ENOENT)
		}
		return ufs.FileInfo{}, err
	}
	return fi, nil
}

// underFile reports whether some parent of name is not a directory.
func (f *FS) underFile(ctx context.Context, name string) bool {
	parent := name
	for i := len(parent) - 1; i >= 0; i-- {
		if parent[i] == '/' {
			parent = parent[:i]
			fi, err := f.Stat(ctx, parent)
			return err != nil && ufs.ClassOf(err) == ufs.ClassNotExist || err == nil && !fi.IsDir()
		}
	}
	return false
}

// List implements ufs.FS with readdirplus: names and attributes together.
func (f *FS) List(ctx context.Context, dir string) iter.Seq2[[]ufs.FileInfo, error] {
	return func(yield func([]ufs.FileInfo, error) bool) {
		l, err := f.lease()
		if err != nil {
			yield(nil, err)
			return
		}
		defer l.put()
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
				fi.Name = name
				page = append(page, fi)
			}
			if !yield(page, nil) {
				return
			}
		}
	}
}

// ReadRange implements ufs.FS with pread on a file opened for the range.
func (f *FS) ReadRange(ctx context.Context, name string, r ufs.Range) (io.ReadCloser, error) {
	if err := ctx.Err(); err != nil {
		return nil, ufs.NewError("read", name, ufs.ClassCanceled, err)
	}
	if r.Off < 0 {
		return nil, ufs.NewError("read", name, ufs.ClassInvalid, fmt.Errorf("negative offset %d", r.Off))
	}
	l, err := f.lease()
	if err != nil {
		return nil, err
	}
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
		fd = C.ceph_open(l.m, p, C.O_RDONLY, 0)
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
	off, end int64
	ctx      context.Context
	closed   bool
}

func (r *reader) Read(p []byte) (int, error) {
	if r.off >= r.end {
		return 0, io.EOF
	}
	if r.closed {
		return 0, ufs.NewError("read", r.name, ufs.ClassInvalid, fs.ErrClosed)
	}
	n := min(int64(len(p)), r.end-r.off, 64<<20)
	if n == 0 {
		return 0, nil
	}
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
	copy(p, unsafe.Slice((*byte)(buf), int(rc)))
	r.off += int64(rc)
	return int(rc), nil
}

func (r *reader) Close() error {
	if r.closed {
		return nil
	}
	r.closed = true
	r.l.put()
	return nil
}
