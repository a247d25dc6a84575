package mount

import (
	"context"
	"fmt"
	"io"
	"io/fs"
	"path"
	"sync"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/granary-cache/granary/internal/ufs"
)

// FS is granary's FUSE file system on go-fuse's raw protocol API. It keeps
// no per-open state that a restarted process could not rebuild: a node id
// names a path (see nodes.go), a file handle only says whether the open is a
// passthrough one, and reads are served by path.
type FS struct {
	fuse.RawFileSystem // ENOSYS for everything a read-only file system does not do
	m                  *Mount
	server             *fuse.Server
	nodes              *nodeTable

	readersMu sync.Mutex
	readers   map[uint64]*reader
}

// File handle flags: fhPassthrough marks a file handle whose reads the
// kernel does itself; fhDirect, one opened with direct I/O.
const (
	fhPassthrough = 1 << iota
	fhDirect
)

func newFS(m *Mount, nodes *nodeTable) *FS {
	return &FS{RawFileSystem: fuse.NewDefaultRawFileSystem(), m: m, nodes: nodes, readers: map[uint64]*reader{}}
}

// Init implements fuse.RawFileSystem.
func (f *FS) Init(s *fuse.Server) { f.server = s }

// String implements fuse.RawFileSystem.
func (f *FS) String() string { return "granary" }

func ctxOf(cancel <-chan struct{}) (context.Context, func()) {
	ctx, stop := context.WithCancel(context.Background())
	go func() {
		select {
		case <-cancel:
			stop()
		case <-ctx.Done():
		}
	}()
	return ctx, stop
}

// nsPath is a node's path in the client's namespace.
func nsPath(n *nodeInfo) string {
	if n.ds == "" {
		return "/"
	}
	return "/" + n.ds + "/" + n.path
}

func (f *FS) childOf(parent *nodeInfo, name string) (ds, p string) {
	if parent.ds == "" { // the namespace root: its children are datasets
		return name, ""
	}
	return parent.ds, path.Join(parent.path, name)
}

// stat returns the attributes of a node's path.
func (f *FS) stat(ctx context.Context, ds, p string) (ufs.FileInfo, fuse.Status) {
	if ds == "" {
		return ufs.FileInfo{Mode: fs.ModeDir | 0o555}, fuse.OK
	}
	ns := "/" + ds + "/" + p
	fi, err := f.m.opts.Client.Stat(ctx, ns)
	if err != nil {
		return fi, fuse.Status(f.m.failed("stat", ns, err))
	}
	return fi, fuse.OK
}

func fillAttr(out *fuse.Attr, fi ufs.FileInfo, id uint64) {
	out.Ino = id
	out.Size = uint64(fi.Size)
	out.Blocks = (out.Size + 511) / 512
	out.Blksize = 1 << 20
	out.Nlink = 1
	out.Mode = uint32(fi.Mode.Perm()) | syscall.S_IFREG
	if fi.IsDir() {
		out.Mode = uint32(fi.Mode.Perm()) | syscall.S_IFDIR
		out.Nlink = 2
	}
	if !fi.ModTime.IsZero() {
		out.SetTimes(nil, &fi.ModTime, &fi.ModTime)
	}
}

func (f *FS) fillEntry(out *fuse.EntryOut, ds, p string, fi ufs.FileInfo) uint64 {
	id := ino(ds, p)
	out.NodeId = id
	out.Generation = 1
	fillAttr(&out.Attr, fi, id)
	t := f.m.timeout(ds)
	out.SetEntryTimeout(t)
	out.SetAttrTimeout(f.m.attrTimeout(ds))
	f.nodes.lookedUp(id, ds, p)
	return id
}

// root is the node the mount point shows: the namespace, or one dataset.
func (f *FS) resolve(id uint64) (*nodeInfo, fuse.Status) {
	n, ok := f.nodes.get(id)
	if !ok {
		return nil, fuse.Status(syscall.ESTALE)
	}
	if id == fuse.FUSE_ROOT_ID && f.m.opts.Dataset != "" {
		return &nodeInfo{ds: f.m.opts.Dataset, path: f.m.opts.Dir}, fuse.OK
	}
	return n, fuse.OK
}

// Lookup implements fuse.RawFileSystem: answered from the client's metadata
// cache, where one listing holds every child's attributes.
func (f *FS) Lookup(cancel <-chan struct{}, h *fuse.InHeader, name string, out *fuse.EntryOut) fuse.Status {
	f.m.lookups.Add(1)
	parent, st := f.resolve(h.NodeId)
	if !st.Ok() {
		return st
	}
	ctx, stop := ctxOf(cancel)
	defer stop()
	ds, p := f.childOf(parent, name)
	fi, st := f.stat(ctx, ds, p)
	if st == fuse.ENOENT {
		// A negative entry: node id 0 with a timeout, so that the kernel
		// remembers the miss instead of asking again.
		*out = fuse.EntryOut{}
		out.SetEntryTimeout(f.m.timeout(ds))
		return fuse.OK
	}
	if !st.Ok() {
		return st
	}
	f.fillEntry(out, ds, p, fi)
	return fuse.OK
}

// Forget implements fuse.RawFileSystem.
func (f *FS) Forget(nodeid, nlookup uint64) {
	if id, ok := f.nodes.forget(nodeid, nlookup); ok {
		f.server.UnregisterBackingFd(id)
	}
}

// GetAttr implements fuse.RawFileSystem.
func (f *FS) GetAttr(cancel <-chan struct{}, in *fuse.GetAttrIn, out *fuse.AttrOut) fuse.Status {
	n, st := f.resolve(in.NodeId)
	if !st.Ok() {
		return st
	}
	ctx, stop := ctxOf(cancel)
	defer stop()
	fi, st := f.stat(ctx, n.ds, n.path)
	if !st.Ok() {
		return st
	}
	id := in.NodeId
	fillAttr(&out.Attr, fi, id)
	out.SetTimeout(f.m.attrTimeout(n.ds))
	return fuse.OK
}

// Access implements fuse.RawFileSystem: the mode bits are checked by the
// kernel (default_permissions); writes are refused by the read-only mount.
func (f *FS) Access(cancel <-chan struct{}, in *fuse.AccessIn) fuse.Status {
	if in.Mask&2 != 0 { // W_OK
		return fuse.EROFS
	}
	return fuse.OK
}

// StatFs implements fuse.RawFileSystem.
func (f *FS) StatFs(cancel <-chan struct{}, in *fuse.InHeader, out *fuse.StatfsOut) fuse.Status {
	out.Bsize, out.Frsize, out.NameLen = 1<<20, 1<<20, 255
	return fuse.OK
}

// OpenDir implements fuse.RawFileSystem; listings may be cached by the
// kernel for as long as their entries are.
func (f *FS) OpenDir(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	if _, st := f.resolve(in.NodeId); !st.Ok() {
		return st
	}
	out.OpenFlags = fuse.FOPEN_CACHE_DIR | fuse.FOPEN_KEEP_CACHE
	return fuse.OK
}

// ReleaseDir implements fuse.RawFileSystem.
func (f *FS) ReleaseDir(*fuse.ReleaseIn) {}

// ReadDir implements fuse.RawFileSystem.
func (f *FS) ReadDir(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	return f.readDir(cancel, in, out, false)
}

// ReadDirPlus implements fuse.RawFileSystem: names and attributes in one
// round trip, so `ls -l` and os.walk cost one request per directory page.
func (f *FS) ReadDirPlus(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	return f.readDir(cancel, in, out, true)
}

func (f *FS) readDir(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList, plus bool) fuse.Status {
	n, st := f.resolve(in.NodeId)
	if !st.Ok() {
		return st
	}
	ctx, stop := ctxOf(cancel)
	defer stop()
	entries, err := f.m.opts.Client.List(ctx, nsPath(n))
	if err != nil {
		return fuse.Status(f.m.failed("readdir", nsPath(n), err))
	}
	// The offset of an entry is its index + 1 in the (sorted, cached) listing.
	for i := int(in.Offset); i < len(entries); i++ {
		e := entries[i]
		ds, p := f.childOf(n, e.Name)
		mode := uint32(syscall.S_IFREG)
		if e.IsDir() {
			mode = syscall.S_IFDIR
		}
		de := fuse.DirEntry{Name: e.Name, Mode: mode, Ino: ino(ds, p), Off: uint64(i + 1)}
		if !plus {
			if !out.AddDirEntry(de) {
				break
			}
			continue
		}
		eo := out.AddDirLookupEntry(de)
		if eo == nil {
			break
		}
		f.fillEntry(eo, ds, p, e)
	}
	return fuse.OK
}

// Open implements fuse.RawFileSystem: a file that is one block cached on
// this host is handed to the kernel (passthrough); a large one not cached
// yet is read through the client by direct I/O (directIOMin); others are
// read through the client, their pages kept in the kernel cache across
// opens.
func (f *FS) Open(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	if in.Flags&(syscall.O_WRONLY|syscall.O_RDWR|syscall.O_TRUNC|syscall.O_APPEND) != 0 {
		return fuse.EROFS
	}
	n, st := f.resolve(in.NodeId)
	if !st.Ok() {
		return st
	}
	if n.ds == "" || in.NodeId == fuse.FUSE_ROOT_ID {
		return fuse.Status(syscall.EISDIR)
	}
	m := f.m
	m.opens.Add(1)
	if m.opts.ZeroMessageOpens {
		// The kernel then opens every file of this mount without asking
		// us, keeping its page cache: a warm open costs no round trip at
		// all. Passthrough, which is set up at open, is then out.
		return fuse.ENOSYS
	}
	if id, ok := f.nodes.registered(in.NodeId); ok { // the warm path: no context, no request
		m.ptOpens.Add(1)
		out.Fh, out.BackingID, out.OpenFlags = fhPassthrough, id, fuse.FOPEN_PASSTHROUGH
		return fuse.OK
	}
	ctx, stop := ctxOf(cancel)
	defer stop()
	r, err := f.reader(ctx, in.NodeId, n)
	if err != nil {
		return fuse.Status(m.failed("open", nsPath(n), err))
	}
	allowed := m.passthrough.Load() && m.fixed[n.ds]
	// The registration is not cut short when the kernel interrupts the
	// open: a signal the process handles (Go's preemption SIGURG, a timer)
	// leaves the open waiting for its answer, and an open answered without
	// passthrough would make this inode's every read a daemon READ until
	// the kernel forgets it. LocalFile bounds the wait by itself.
	regCtx := context.WithoutCancel(ctx)
	mode := f.nodes.openMode(in.NodeId, allowed, func() (int32, bool) { return f.registerBacking(regCtx, r) })
	if mode.passthrough {
		m.ptOpens.Add(1)
		out.Fh, out.BackingID, out.OpenFlags = fhPassthrough, mode.backing, fuse.FOPEN_PASSTHROUGH
		return fuse.OK
	}
	if mode.first && allowed && m.directIO.Load() && r.size >= directIOMin && r.file != nil && r.file.MayBeLocal() {
		m.dioOpens.Add(1)
		out.Fh, out.OpenFlags = fhDirect, fuse.FOPEN_DIRECT_IO
		return fuse.OK
	}
	out.OpenFlags = fuse.FOPEN_KEEP_CACHE
	return fuse.OK
}

// smallDirectRead: a read of a file opened with direct I/O smaller than
// this is one round trip for few bytes (the kernel's read-ahead would have
// asked for 1 MiB at once).
const smallDirectRead = 64 << 10

// smallDirectReads counts a small read of a file opened with direct I/O,
// and says once what to do about it.
func (m *Mount) smallDirectReads(p string, size uint32) {
	if m.smallDIO.Add(1) == 1 {
		m.log.Warn("a reader reads a large file not cached yet, opened with direct I/O, in small reads: each is a round trip to granary; read in chunks of 1 MiB (as Python's buffered files and NumPy do), or mount with --no-direct-io to keep the page cache", "path", p, "read_bytes", size)
	}
}

// directIOMin is the size from which a cold open of a file that will be
// read by passthrough once cached is answered with direct I/O: the
// reader's reads come to this process and are copied into its buffers
// with no page cache in between. The bytes are in the worker's block
// file, where every later open reads them by passthrough, so a copy in
// the page cache of the mount's inode would be a second copy in memory,
// written once and never read again (on a cold epoch of 1 GiB files from
// S3: 3 of the 8 CPU-seconds per GB, and the memory of the copy).
//
// Only a node's first open read through granary gets it: a file whose
// next open is not passthrough either (its block found no room) keeps the
// page cache, its only warm copy then. A smaller file keeps it too: a
// reader's small reads then cost one request for the kernel's read-ahead
// rather than one each (and a file up to the worker's fixed block size is
// fetched whole at its first open, then read by passthrough). So does a
// file whose block will not be on this host.
const directIOMin = 8 << 20

// registerBacking opens the local block file of a node and registers it
// with the kernel.
func (f *FS) registerBacking(ctx context.Context, r *reader) (int32, bool) {
	fd, err := r.file.LocalFile(ctx)
	if err != nil {
		return 0, false
	}
	defer fd.Close() // the kernel keeps its own reference
	id, errno := f.server.RegisterBackingFd(&fuse.BackingMap{Fd: int32(fd.Fd())})
	if errno != 0 {
		f.m.log.Warn("FUSE passthrough refused by the kernel; reads go through granary", "errno", errno.Error())
		f.m.passthrough.Store(false)
		return 0, false
	}
	return id, true
}

// Release implements fuse.RawFileSystem. A passthrough backing id outlives
// the open: it goes when the kernel forgets the node. The last release of
// a file read through granary frees its read-ahead windows.
func (f *FS) Release(cancel <-chan struct{}, in *fuse.ReleaseIn) {
	if in.Fh&fhPassthrough != 0 || !f.nodes.closed(in.NodeId) {
		return
	}
	f.readersMu.Lock()
	r := f.readers[in.NodeId]
	delete(f.readers, in.NodeId)
	f.readersMu.Unlock()
	if r != nil {
		r.close()
	}
}

// Flush implements fuse.RawFileSystem. ENOSYS stops the kernel from
// sending it at every close: a read-only file has nothing to flush.
func (f *FS) Flush(cancel <-chan struct{}, in *fuse.FlushIn) fuse.Status { return fuse.ENOSYS }

// Ioctl implements fuse.RawFileSystem: no ioctl does anything here (a
// terminal's, asked by isatty, least of all), but each is counted, and the
// first one logged: they are round trips a reader can do without.
func (f *FS) Ioctl(cancel <-chan struct{}, in *fuse.IoctlIn, inbuf []byte, out *fuse.IoctlOut, outbuf []byte) fuse.Status {
	if f.m.ioctls.Add(1) == 1 {
		f.m.log.Warn("a reader asks files for ioctls (Python's open() asks each file isatty, unless unbuffered): each is a round trip to this process; open files with buffering=0",
			"cmd", fmt.Sprintf("%#x", in.Cmd))
	}
	return fuse.Status(syscall.ENOTTY)
}

// Read implements fuse.RawFileSystem.
func (f *FS) Read(cancel <-chan struct{}, in *fuse.ReadIn, buf []byte) (fuse.ReadResult, fuse.Status) {
	m := f.m
	m.reads.Add(1)
	n, st := f.resolve(in.NodeId)
	if !st.Ok() {
		return nil, st
	}
	ctx, stop := ctxOf(cancel)
	defer stop()
	r, err := f.reader(ctx, in.NodeId, n)
	if err != nil {
		return nil, fuse.Status(m.failed("read", nsPath(n), err))
	}
	k, err := r.read(ctx, buf[:in.Size], int64(in.Offset))
	if err != nil && err != io.EOF {
		return nil, fuse.Status(m.failed("read", nsPath(n), err))
	}
	m.readBytes.Add(int64(k))
	if in.Fh&fhDirect != 0 && in.Size < smallDirectRead && int64(in.Offset)+int64(k) < r.size {
		m.smallDirectReads(nsPath(n), in.Size)
	}
	return fuse.ReadResultData(buf[:k]), fuse.OK
}

// cachedReader returns the node's reader if this process has a fresh one.
func (f *FS) cachedReader(id uint64, n *nodeInfo) *reader {
	f.readersMu.Lock()
	r := f.readers[id]
	f.readersMu.Unlock()
	if r != nil && time.Since(r.opened) < f.m.timeout(n.ds) {
		return r
	}
	return nil
}

// reader returns the reader of a node, opening it through the client when
// this process has none (first open, or after a restart).
func (f *FS) reader(ctx context.Context, id uint64, n *nodeInfo) (*reader, error) {
	if r := f.cachedReader(id, n); r != nil {
		return r, nil
	}
	file, err := f.m.opts.Client.Open(ctx, nsPath(n))
	if err != nil {
		return nil, err
	}
	r := newReader(file)
	f.readersMu.Lock()
	defer f.readersMu.Unlock()
	if len(f.readers) >= maxReaders {
		for k, old := range f.readers { // drop any: they are cheap to open again
			old.close()
			delete(f.readers, k)
			break
		}
	}
	f.readers[id] = r
	return r, nil
}

// maxReaders bounds the open files (and read-ahead windows) kept; an
// evicted one is reopened from the client's metadata cache, without a
// request.
const maxReaders = 1 << 16
