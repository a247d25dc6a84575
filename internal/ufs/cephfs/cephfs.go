//go:build cephfs

// Package cephfs is the cephfs:// UFS backend: a directory of a CephFS file
// system read natively through libcephfs (cgo; build with -tags cephfs and
// Debian's libcephfs-dev), without a kernel or ceph-fuse mount.
//
// One mount handle per dataset is shared by every reader: libcephfs
// serialises on its client lock, and a single client session keeps the MDS
// load (sessions, capabilities) independent of the number of readers.
// Listings use readdirplus, so one listing also yields every child's
// attributes without a getattr each.
package cephfs

/*
#cgo CFLAGS: -D_FILE_OFFSET_BITS=64
#cgo LDFLAGS: -lcephfs
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
	"sync"
	"syscall"
	"time"
	"unsafe"

	"github.com/granary-cache/granary/internal/ufs"
)

// Options say how to reach the cluster.
type Options struct {
	Conf     string // a ceph.conf; may be empty when Monitors is set
	Monitors string // mon_host, e.g. "127.0.0.1:6789"
	User     string // cephx user without "client.", default "admin"
	Keyring  string // keyring file
	Secret   string // or the key itself
	FSName   string // the file system; empty for the default one
}

// FS is a read-only UFS over one CephFS directory.
type FS struct {
	mount *C.struct_ceph_mount_info
	root  string
	mu    sync.Mutex // guards mount against Close
}

// Open mounts root (an absolute path inside the file system) with libcephfs.
func Open(root string, o Options) (*FS, error) {
	user := o.User
	if user == "" {
		user = "admin"
	}
	cuser := C.CString(user)
	defer C.free(unsafe.Pointer(cuser))
	var m *C.struct_ceph_mount_info
	if rc := C.ceph_create(&m, cuser); rc < 0 {
		return nil, fmt.Errorf("cephfs: create a client: %w", errno(rc))
	}
	f := &FS{mount: m, root: root}
	fail := func(what string, rc C.int) (*FS, error) {
		C.ceph_release(m)
		return nil, fmt.Errorf("cephfs: %s: %w", what, errno(rc))
	}
	if o.Conf != "" {
		cconf := C.CString(o.Conf)
		rc := C.ceph_conf_read_file(m, cconf)
		C.free(unsafe.Pointer(cconf))
		if rc < 0 {
			return fail("read "+o.Conf, rc)
		}
	}
	for _, kv := range [][2]string{{"mon_host", o.Monitors}, {"keyring", o.Keyring}, {"key", o.Secret}, {"client_fs", o.FSName}} {
		if kv[1] == "" {
			continue
		}
		k, v := C.CString(kv[0]), C.CString(kv[1])
		rc := C.ceph_conf_set(m, k, v)
		C.free(unsafe.Pointer(k))
		C.free(unsafe.Pointer(v))
		if rc < 0 && kv[0] != "client_fs" {
			what := kv[0]
			if kv[0] == "key" {
				what = "the secret" // never its value
			}
			return fail("set "+what, rc)
		}
	}
	if o.FSName != "" {
		cfs := C.CString(o.FSName)
		rc := C.ceph_select_filesystem(m, cfs)
		C.free(unsafe.Pointer(cfs))
		if rc < 0 {
			return fail("select file system "+o.FSName, rc)
		}
	}
	croot := C.CString(root)
	defer C.free(unsafe.Pointer(croot))
	if rc := C.ceph_mount(m, croot); rc < 0 {
		return fail("mount "+root+" (check monitors, user and key)", rc)
	}
	return f, nil
}

// Close unmounts.
func (f *FS) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.mount == nil {
		return nil
	}
	C.ceph_unmount(f.mount)
	C.ceph_release(f.mount)
	f.mount = nil
	return nil
}

func errno(rc C.int) error { return syscall.Errno(-rc) }

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
	p := cpath(name)
	defer C.free(unsafe.Pointer(p))
	var stx C.struct_ceph_statx
	if rc := C.ceph_statx(f.mount, p, &stx, want, 0); rc < 0 {
		err := wrap("stat", name, rc)
		if syscall.Errno(-rc) == syscall.EACCES && name != "" && f.underFile(ctx, name) {
			// libcephfs answers EACCES, not ENOTDIR, for a path through a file.
			err = ufs.NewError("stat", name, ufs.ClassNotExist, syscall.ENOENT)
		}
		return ufs.FileInfo{}, err
	}
	fi := info(&stx)
	fi.Name = name
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
		p := cpath(dir)
		defer C.free(unsafe.Pointer(p))
		var d *C.struct_ceph_dir_result
		if rc := C.ceph_opendir(f.mount, p, &d); rc < 0 {
			yield(nil, wrap("list", dir, rc))
			return
		}
		defer C.ceph_closedir(f.mount, d)
		var de C.struct_dirent
		var stx C.struct_ceph_statx
		for {
			if err := ctx.Err(); err != nil {
				yield(nil, ufs.NewError("list", dir, ufs.ClassCanceled, err))
				return
			}
			page := make([]ufs.FileInfo, 0, 1000)
			for len(page) < cap(page) {
				rc := C.ceph_readdirplus_r(f.mount, d, &de, &stx, want, 0, nil)
				if rc < 0 {
					yield(nil, wrap("list", dir, rc))
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
				fi := info(&stx)
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
	p := cpath(name)
	defer C.free(unsafe.Pointer(p))
	fd := C.ceph_open(f.mount, p, C.O_RDONLY, 0)
	if fd < 0 {
		return nil, wrap("read", name, fd)
	}
	var stx C.struct_ceph_statx
	if rc := C.ceph_fstatx(f.mount, fd, &stx, want, 0); rc < 0 {
		C.ceph_close(f.mount, fd)
		return nil, wrap("read", name, rc)
	}
	fi := info(&stx)
	if fi.IsDir() {
		C.ceph_close(f.mount, fd)
		return nil, ufs.NewError("read", name, ufs.ClassInvalid, errors.New("is a directory"))
	}
	if r.IfVersion != "" && fi.Version != r.IfVersion {
		C.ceph_close(f.mount, fd)
		return nil, ufs.NewError("read", name, ufs.ClassVersionChanged, ufs.ErrVersionChanged)
	}
	end := fi.Size
	if r.Len >= 0 {
		end = min(end, r.Off+r.Len)
	}
	return &reader{f: f, fd: fd, name: name, off: r.Off, end: max(end, r.Off), ctx: ctx}, nil
}

type reader struct {
	f        *FS
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
	if err := r.ctx.Err(); err != nil {
		return 0, ufs.NewError("read", r.name, ufs.ClassCanceled, err)
	}
	n := min(int64(len(p)), r.end-r.off, 64<<20)
	if n == 0 {
		return 0, nil
	}
	rc := C.ceph_read(r.f.mount, r.fd, (*C.char)(unsafe.Pointer(&p[0])), C.int64_t(n), C.int64_t(r.off))
	if rc < 0 {
		return 0, wrap("read", r.name, rc)
	}
	if rc == 0 {
		return 0, io.EOF
	}
	r.off += int64(rc)
	return int(rc), nil
}

func (r *reader) Close() error {
	if r.closed {
		return nil
	}
	r.closed = true
	C.ceph_close(r.f.mount, r.fd)
	return nil
}
