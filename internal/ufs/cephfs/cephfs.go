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
//   - The client's object cache is off (client_oc): it would hold a second
//     copy of what the worker stores, in memory that is new for every read.
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
	"context"
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

	mu         sync.Mutex
	cur        *handle       // nil while idle-unmounted
	connecting *mountAttempt // non-nil while a mount is under way
	closed     bool

	lastUse   atomic.Int64 // unix nanoseconds
	mounts    atomic.Int64
	live      atomic.Int64 // clients mounted and not yet shut down
	stuck     atomic.Int64 // calls given up on that are still inside libcephfs
	realDirs  sync.Map     // directories known not to be links: path → struct{}
	stop      chan struct{}
	janitorW  sync.WaitGroup
	closeOnce sync.Once
	closeErr  error
}

// handle is one mounted libcephfs client. Every call and open file holds a
// reference to the handle it started on; a retired handle (idle, or the
// dataset closed) takes no new references and is shut down by its last
// one, so a call still running in libcephfs never loses its client, and no
// lock is held across a call.
type handle struct {
	m       *C.struct_ceph_mount_info
	refs    int           // guarded by FS.mu
	retired bool          // guarded by FS.mu
	gone    chan struct{} // closed once the client is shut down

	dmu  sync.Mutex
	dirs map[string]*dirState // what this client knows of each directory (see warmDir)
}

// dirState is what one client session knows of a directory: nothing yet
// but one read in it (listed nil), or a listing under way or done (listed
// closed when it ended).
type dirState struct {
	listed chan struct{}
}

// mountAttempt is a mount under way. Callers that find one wait for it and
// share its outcome, so that a cluster that does not answer costs each of
// them one op timeout, not one per caller queued ahead of it.
type mountAttempt struct {
	done chan struct{}
	err  error
}

// maxStuck bounds the calls left running in libcephfs after their callers
// gave up on them (each pins a thread): past it, calls fail at once until
// the cluster answers again.
const maxStuck = 64

// Open mounts root (an absolute path inside the file system) with libcephfs.
// Mounting here, rather than at the first call, reports a wrong monitor, key
// or path when the dataset is opened; an idle worker gives the session back
// after Options.IdleUnmount.
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
	f.cur = f.newHandle(m)
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

// Mounted reports whether a client of this dataset holds a session now: the
// current handle, or a retired one not yet shut down.
func (f *FS) Mounted() bool { return f.live.Load() > 0 }

// newHandle wraps a mounted client.
func (f *FS) newHandle(m *C.struct_ceph_mount_info) *handle {
	f.live.Add(1)
	return &handle{m: m, gone: make(chan struct{}), dirs: map[string]*dirState{}}
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
				C.ceph_shutdown(r.m)
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
	switch {
	case o.Conf != "":
		cconf := C.CString(o.Conf)
		rc := C.ceph_conf_read_file(m, cconf)
		C.free(unsafe.Pointer(cconf))
		if rc < 0 {
			return fail("read the conf "+o.Conf, rc)
		}
	case o.Monitors == "":
		// Neither: the places every Ceph client looks ($CEPH_CONF,
		// /etc/ceph/ceph.conf, ~/.ceph/config, ./ceph.conf).
		if rc := C.ceph_conf_read_file(m, nil); rc < 0 {
			return fail("read the default ceph.conf ($CEPH_CONF or /etc/ceph/ceph.conf; or set the conf or monitors option)", rc)
		}
	}
	secs := fmt.Sprint(int(f.timeout.Seconds() + 0.5))
	for _, kv := range [][2]string{
		{"mon_host", o.Monitors}, {"keyring", o.Keyring}, {"key", o.Secret},
		// Bound the mount itself: without these a wrong monitor address or
		// key waits five minutes.
		{"client_mount_timeout", secs}, {"rados_mon_op_timeout", secs},
		// No object cache in the client: granary caches the bytes itself,
		// and reads each file once. With it, every reply landed in new
		// memory kept for the cacher (up to 200 MiB a handle), a page
		// fault per 4 KiB read: 40 % of a worker's CPU on a cold epoch of
		// small files. Reads then go to the OSD as asked, one a page.
		{"client_oc", "false"},
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

// acquire returns the mounted handle with a reference the caller must give
// back with f.release, mounting it again after an idle unmount.
func (f *FS) acquire(ctx context.Context) (*handle, error) {
	if f.stuck.Load() >= maxStuck {
		return nil, ufs.NewError("call", f.root, ufs.ClassRetryable,
			fmt.Errorf("cephfs: %d calls still waiting on the cluster; not adding more (is the MDS or an OSD down?)", maxStuck))
	}
	for {
		f.mu.Lock()
		if f.closed {
			f.mu.Unlock()
			return nil, ufs.NewError("call", f.root, ufs.ClassFatal, errors.New("cephfs: the dataset is closed"))
		}
		if h := f.cur; h != nil {
			h.refs++
			f.mu.Unlock()
			f.lastUse.Store(time.Now().UnixNano())
			return h, nil
		}
		a := f.connecting
		if a == nil {
			a = &mountAttempt{done: make(chan struct{})}
			f.connecting = a
			go f.remount(a)
		}
		f.mu.Unlock()
		select {
		case <-a.done:
		case <-ctx.Done():
			return nil, ufs.NewError("call", f.root, ufs.ClassCanceled, ctx.Err())
		}
		if a.err != nil {
			return nil, a.err
		}
	}
}

// remount mounts a new handle after an idle unmount, for every caller
// waiting on a.
func (f *FS) remount(a *mountAttempt) {
	m, err := f.connect()
	f.mu.Lock()
	defer f.mu.Unlock()
	f.connecting, a.err = nil, err
	close(a.done)
	if err != nil {
		return
	}
	h := f.newHandle(m)
	if f.closed {
		h.retired = true
		go f.shutdown(h)
		return
	}
	// What the last session knew of the tree may be stale by now.
	f.realDirs.Clear()
	f.cur = h
}

// release gives back a reference taken by acquire.
func (f *FS) release(h *handle) {
	f.lastUse.Store(time.Now().UnixNano())
	f.mu.Lock()
	h.refs--
	last := h.retired && h.refs == 0
	f.mu.Unlock()
	if last {
		go f.shutdown(h) // the cluster may not answer: never on a caller's time
	}
}

// retire takes h out of use; with f.mu held. It is shut down now if
// nothing holds it, else by its last release.
func (f *FS) retire(h *handle) {
	if f.cur == h {
		f.cur = nil
	}
	h.retired = true
	if h.refs == 0 {
		go f.shutdown(h)
	}
}

// shutdown unmounts the client and frees it. ceph_shutdown does both
// whatever state the mount is in, and closes the MDS session: the caps go
// with it.
func (f *FS) shutdown(h *handle) {
	C.ceph_shutdown(h.m)
	f.live.Add(-1)
	close(h.gone)
}

// janitor unmounts the handle when nothing used it for idleAfter. It never
// waits on the cluster itself: the shutdown runs on its own, and a call
// arriving meanwhile mounts a new handle.
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
		f.mu.Lock()
		// Calls and open files hold references: an open file keeps the
		// handle, and with it the caps of what it reads.
		if h := f.cur; h != nil && h.refs == 0 && time.Since(time.Unix(0, f.lastUse.Load())) >= f.idleAfter {
			f.retire(h)
		}
		f.mu.Unlock()
	}
}

// Close unmounts. If calls are still stuck in libcephfs after the op
// timeout, it returns an error and the handle is unmounted when they end.
func (f *FS) Close() error {
	f.closeOnce.Do(func() { f.closeErr = f.close() })
	return f.closeErr
}

// close retires the handle and waits, at most the op timeout, until every
// client of the dataset is shut down: the current one, one retired by the
// janitor, and one a remount under way is making.
func (f *FS) close() error {
	close(f.stop)
	f.janitorW.Wait()
	f.mu.Lock()
	f.closed = true
	if h := f.cur; h != nil {
		f.retire(h)
	}
	a := f.connecting
	f.mu.Unlock()
	deadline := time.After(f.timeout)
	late := fmt.Errorf("cephfs: close %s: calls still waiting on the cluster after %v; it unmounts when they end", f.root, f.timeout)
	if a != nil {
		select {
		case <-a.done:
		case <-deadline:
			return late
		}
	}
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for f.live.Load() > 0 {
		select {
		case <-tick.C:
		case <-deadline:
			return late
		}
	}
	return nil
}

func errno(rc C.int) error { return syscall.Errno(-rc) }
