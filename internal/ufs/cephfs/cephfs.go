//go:build cephfs

// Package cephfs is the cephfs:// UFS backend: a directory of a CephFS file
// system read natively through libcephfs (cgo; build with -tags cephfs and
// Debian's libcephfs-dev), without a kernel or ceph-fuse mount.
//
// What it costs the MDS is the point of granary, so the handle is managed
// for that:
//   - One mount handle per dataset is shared by every reader: libcephfs
//     serialises on its client lock, and a single client session keeps the
//     MDS load (sessions, capabilities) independent of the number of readers.
//   - Listings use readdirplus, so one listing also yields every child's
//     attributes, and later opens in that directory cost the MDS nothing.
//   - A handle idle for Options.IdleUnmount is unmounted, which closes the
//     session and returns every capability it held: once a dataset is
//     cached the MDS keeps nothing for granary. The next call mounts again.
//   - libcephfs calls cannot be interrupted and wait as long as the MDS or
//     an OSD does not answer. Each call is bounded by Options.OpTimeout: the
//     caller gets a retryable error and the call finishes in the background.
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
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/granary-cache/granary/internal/ufs"
)

// Options say how to reach the cluster and how to hold the handle.
type Options struct {
	Conf     string // a ceph.conf; may be empty when Monitors is set
	Monitors string // mon_host, e.g. "127.0.0.1:6789"
	User     string // cephx user without "client.", default "admin"
	Keyring  string // keyring file
	Secret   string // or the key itself
	FSName   string // the file system; empty for the default one
	// OpTimeout bounds each libcephfs call; 0 means 30 s.
	OpTimeout time.Duration
	// IdleUnmount unmounts the handle after this long without a call; 0
	// means 30 s, a negative value never.
	IdleUnmount time.Duration
}

// FS is a read-only UFS over one CephFS directory.
type FS struct {
	root      string
	o         Options
	timeout   time.Duration
	idleAfter time.Duration

	// mu is held shared by every call and open file that uses mount, and
	// exclusively to mount or unmount it.
	mu     sync.RWMutex
	mount  *C.struct_ceph_mount_info // nil while idle-unmounted
	closed bool

	lastUse   atomic.Int64 // unix nanoseconds
	mounts    atomic.Int64
	stop      chan struct{}
	janitorW  sync.WaitGroup
	closeOnce sync.Once
	closeErr  error
}

// Open mounts root (an absolute path inside the file system) with libcephfs.
// Mounting here, rather than at the first call, reports a wrong monitor, key
// or path when the dataset is opened.
func Open(root string, o Options) (*FS, error) {
	f := &FS{root: root, o: o, timeout: o.OpTimeout, idleAfter: o.IdleUnmount, stop: make(chan struct{})}
	if f.timeout <= 0 {
		f.timeout = 30 * time.Second
	}
	if f.idleAfter == 0 {
		f.idleAfter = 30 * time.Second
	}
	m, err := f.connect()
	if err != nil {
		return nil, err
	}
	f.mount = m
	f.lastUse.Store(time.Now().UnixNano())
	if f.idleAfter > 0 {
		f.janitorW.Add(1)
		go f.janitor()
	}
	return f, nil
}

// DirAffine implements ufs.DirAffine: an open costs the MDS a lookup unless
// this client listed the directory.
func (f *FS) DirAffine() bool { return true }

// Mounts reports how many times the handle was mounted (1 + the remounts
// after idle unmounts).
func (f *FS) Mounts() int64 { return f.mounts.Load() }

// Mounted reports whether the handle holds a session now.
func (f *FS) Mounted() bool {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.mount != nil
}

// connect creates, configures and mounts a client, bounded by the op timeout.
func (f *FS) connect() (*C.struct_ceph_mount_info, error) {
	type result struct {
		m   *C.struct_ceph_mount_info
		err error
	}
	done := make(chan result, 1)
	go func() {
		m, err := f.connectNow()
		done <- result{m, err}
	}()
	select {
	case r := <-done:
		if r.err == nil {
			f.mounts.Add(1)
		}
		return r.m, r.err
	case <-time.After(f.timeout + 5*time.Second):
		go func() { // release the client if the mount ever finishes
			if r := <-done; r.m != nil {
				C.ceph_unmount(r.m)
				C.ceph_release(r.m)
			}
		}()
		return nil, ufs.NewError("cephfs", strings.TrimPrefix(f.root, "/"), ufs.ClassRetryable,
			fmt.Errorf("mount: no answer from the cluster within %v (check monitors and that the MDS is up)", f.timeout))
	}
}

func (f *FS) connectNow() (*C.struct_ceph_mount_info, error) {
	o := f.o
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
	fail := func(what string, rc C.int) (*C.struct_ceph_mount_info, error) {
		C.ceph_release(m)
		return nil, mountError(f.root, what, rc)
	}
	if o.Conf != "" {
		cconf := C.CString(o.Conf)
		rc := C.ceph_conf_read_file(m, cconf)
		C.free(unsafe.Pointer(cconf))
		if rc < 0 {
			return fail("read the conf "+o.Conf, rc)
		}
	}
	secs := fmt.Sprint(int(f.timeout.Seconds() + 0.5))
	for _, kv := range [][2]string{
		{"mon_host", o.Monitors}, {"keyring", o.Keyring}, {"key", o.Secret},
		// Bound the mount itself: without these a wrong monitor address or
		// key waits five minutes.
		{"client_mount_timeout", secs}, {"rados_mon_op_timeout", secs},
	} {
		if kv[1] == "" {
			continue
		}
		k, v := C.CString(kv[0]), C.CString(kv[1])
		rc := C.ceph_conf_set(m, k, v)
		C.free(unsafe.Pointer(k))
		C.free(unsafe.Pointer(v))
		if rc < 0 {
			what := kv[0]
			if kv[0] == "key" {
				what = "the secret" // never its value
			}
			return fail("set "+what, rc)
		}
	}
	if rc := C.ceph_init(m); rc < 0 {
		return fail("connect to the monitors (check monitors, user and key)", rc)
	}
	if o.FSName != "" {
		cfs := C.CString(o.FSName)
		rc := C.ceph_select_filesystem(m, cfs)
		C.free(unsafe.Pointer(cfs))
		if rc < 0 {
			return fail("select file system "+o.FSName, rc)
		}
	}
	croot := C.CString(f.root)
	defer C.free(unsafe.Pointer(croot))
	if rc := C.ceph_mount(m, croot); rc < 0 {
		what := "mount"
		switch syscall.Errno(-rc) {
		case syscall.ENOENT:
			what += " (no such directory"
			if o.FSName != "" {
				what += ", or no file system named " + o.FSName
			}
			what += ")"
		default:
			what += " (check monitors, user, key and fs_name)"
		}
		return fail(what, rc)
	}
	return m, nil
}

// mountError classifies a failure to mount root.
func mountError(root, what string, rc C.int) error {
	e := syscall.Errno(-rc)
	cls := ufs.ClassFatal
	switch e {
	case syscall.ENOENT:
		cls = ufs.ClassNotExist
	case syscall.EACCES, syscall.EPERM:
		cls = ufs.ClassPermission
	case syscall.ETIMEDOUT, syscall.EAGAIN:
		cls = ufs.ClassRetryable
	}
	return ufs.NewError("cephfs", strings.TrimPrefix(root, "/"), cls, fmt.Errorf("%s: %w", what, e))
}

// acquire returns the mounted handle, mounting it again after an idle
// unmount, with mu held shared: the caller must call f.release.
func (f *FS) acquire() (*C.struct_ceph_mount_info, error) {
	for {
		f.mu.RLock()
		if f.closed {
			f.mu.RUnlock()
			return nil, ufs.NewError("call", f.root, ufs.ClassFatal, errors.New("cephfs: the dataset is closed"))
		}
		if m := f.mount; m != nil {
			f.lastUse.Store(time.Now().UnixNano())
			return m, nil
		}
		f.mu.RUnlock()
		f.mu.Lock()
		if f.mount == nil && !f.closed {
			m, err := f.connect()
			if err != nil {
				f.mu.Unlock()
				return nil, err
			}
			f.mount = m
		}
		f.mu.Unlock()
	}
}

func (f *FS) release() {
	f.lastUse.Store(time.Now().UnixNano())
	f.mu.RUnlock()
}

// janitor unmounts the handle when nothing used it for idleAfter.
func (f *FS) janitor() {
	defer f.janitorW.Done()
	tick := time.NewTicker(min(f.idleAfter/4+time.Millisecond, time.Second))
	defer tick.Stop()
	for {
		select {
		case <-f.stop:
			return
		case <-tick.C:
		}
		if time.Since(time.Unix(0, f.lastUse.Load())) < f.idleAfter {
			continue
		}
		// TryLock: a call or an open file holds mu shared, and a call stuck
		// on an unanswering MDS must not block the others behind a waiting
		// writer.
		if !f.mu.TryLock() {
			continue
		}
		if f.mount != nil && time.Since(time.Unix(0, f.lastUse.Load())) >= f.idleAfter {
			C.ceph_unmount(f.mount)
			C.ceph_release(f.mount)
			f.mount = nil
		}
		f.mu.Unlock()
	}
}

// Close unmounts. If calls are still stuck in libcephfs after the op
// timeout, it returns an error and unmounts when they finish.
func (f *FS) Close() error {
	f.closeOnce.Do(func() { f.closeErr = f.close() })
	return f.closeErr
}

func (f *FS) close() error {
	close(f.stop)
	f.janitorW.Wait()
	done := make(chan struct{})
	go func() {
		defer close(done)
		f.mu.Lock()
		defer f.mu.Unlock()
		f.closed = true
		if f.mount != nil {
			C.ceph_unmount(f.mount)
			C.ceph_release(f.mount)
			f.mount = nil
		}
	}()
	select {
	case <-done:
		return nil
	case <-time.After(f.timeout):
		return fmt.Errorf("cephfs: close %s: calls still waiting on the cluster after %v; it unmounts when they end", f.root, f.timeout)
	}
}

func errno(rc C.int) error { return syscall.Errno(-rc) }
