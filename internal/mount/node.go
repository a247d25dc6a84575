package mount

import (
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"path"
	"sync"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/granary-cache/granary/internal/client"
	"github.com/granary-cache/granary/internal/ufs"
)

// node is a file or directory of the namespace. The namespace root (when
// every dataset is mounted) has ds == "".
type node struct {
	gofs.Inode
	m  *Mount
	ds string // dataset
	p  string // path inside the dataset
}

var (
	_ gofs.NodeLookuper  = (*node)(nil)
	_ gofs.NodeGetattrer = (*node)(nil)
	_ gofs.NodeReaddirer = (*node)(nil)
	_ gofs.NodeOpener    = (*node)(nil)
	_ gofs.NodeFlusher   = (*node)(nil)
	_ gofs.NodeStatfser  = (*node)(nil)
)

// nsPath is the node's path in the client's namespace.
func (n *node) nsPath() string {
	if n.ds == "" {
		return "/"
	}
	return "/" + n.ds + "/" + n.p
}

func (n *node) child(name string) *node {
	if n.ds == "" {
		return &node{m: n.m, ds: name}
	}
	return &node{m: n.m, ds: n.ds, p: path.Join(n.p, name)}
}

func (n *node) isRoot() bool { return n.ds == "" }

func fill(out *fuse.Attr, fi ufs.FileInfo, ino uint64) {
	out.Ino = ino
	out.Size = uint64(fi.Size)
	out.Blocks = (out.Size + 511) / 512
	out.Blksize = 1 << 20
	out.Nlink = 1
	mode := uint32(fi.Mode.Perm())
	if fi.IsDir() {
		mode |= syscall.S_IFDIR
		out.Nlink = 2
	} else {
		mode |= syscall.S_IFREG
	}
	out.Mode = mode
	if !fi.ModTime.IsZero() {
		out.SetTimes(nil, &fi.ModTime, &fi.ModTime)
	}
}

func (n *node) stat(ctx context.Context) (ufs.FileInfo, syscall.Errno) {
	if n.isRoot() {
		return ufs.FileInfo{Mode: fs.ModeDir | 0o555}, 0
	}
	fi, err := n.m.opts.Client.Stat(ctx, n.nsPath())
	if err != nil {
		return fi, n.m.failed("stat", n.nsPath(), err)
	}
	return fi, 0
}

// Lookup answers from the client's metadata cache: after a directory was
// listed, every child's attributes are already there.
func (n *node) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	n.m.lookups.Add(1)
	c := n.child(name)
	fi, errno := c.stat(ctx)
	if errno != 0 {
		return nil, errno
	}
	id := ino(c.ds, c.p)
	fill(&out.Attr, fi, id)
	t := n.m.timeout(c.ds)
	out.SetEntryTimeout(t)
	out.SetAttrTimeout(t)
	mode := uint32(syscall.S_IFREG)
	if fi.IsDir() {
		mode = syscall.S_IFDIR
	}
	return n.NewInode(ctx, c, gofs.StableAttr{Mode: mode, Ino: id}), 0
}

// Getattr implements gofs.NodeGetattrer.
func (n *node) Getattr(ctx context.Context, _ gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	fi, errno := n.stat(ctx)
	if errno != 0 {
		return errno
	}
	id := uint64(fuse.FUSE_ROOT_ID)
	if !n.isRoot() {
		id = ino(n.ds, n.p)
	}
	fill(&out.Attr, fi, id)
	out.SetTimeout(n.m.timeout(n.ds))
	return 0
}

// Readdir lists the directory from the client (one request to its owner,
// or none when cached).
func (n *node) Readdir(ctx context.Context) (gofs.DirStream, syscall.Errno) {
	entries, err := n.m.opts.Client.List(ctx, n.nsPath())
	if err != nil {
		return nil, n.m.failed("readdir", n.nsPath(), err)
	}
	out := make([]fuse.DirEntry, 0, len(entries))
	for _, e := range entries {
		c := n.child(e.Name)
		mode := uint32(syscall.S_IFREG)
		if e.IsDir() {
			mode = syscall.S_IFDIR
		}
		out = append(out, fuse.DirEntry{Name: e.Name, Mode: mode, Ino: ino(c.ds, c.p)})
	}
	return gofs.NewListDirStream(out), 0
}

// Flush answers ENOSYS, after which the kernel stops sending it: a
// read-only file has nothing to flush, and a round trip per close is not
// free.
func (n *node) Flush(context.Context, gofs.FileHandle) syscall.Errno { return syscall.ENOSYS }

// Statfs reports a read-only file system.
func (n *node) Statfs(_ context.Context, out *fuse.StatfsOut) syscall.Errno {
	out.Bsize = 1 << 20
	out.Frsize = 1 << 20
	out.NameLen = 255
	return 0
}

// Open opens a file: as a passthrough to its local block file when it is
// one block cached on this host, else as a handle whose reads go through
// the client.
func (n *node) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	if flags&(syscall.O_WRONLY|syscall.O_RDWR|syscall.O_TRUNC|syscall.O_APPEND) != 0 {
		return nil, 0, syscall.EROFS
	}
	if n.isRoot() {
		return nil, 0, syscall.EISDIR
	}
	m := n.m
	m.opens.Add(1)
	f, err := m.opts.Client.Open(ctx, n.nsPath())
	if err != nil {
		return nil, 0, m.failed("open", n.nsPath(), err)
	}
	if m.passthrough {
		if fd, err := f.LocalFile(ctx); err == nil {
			m.ptOpens.Add(1)
			return &passthroughHandle{fd: fd, h: handle{n: n, f: f}}, fuse.FOPEN_KEEP_CACHE, 0
		}
	}
	return &handle{n: n, f: f}, fuse.FOPEN_KEEP_CACHE, 0
}

// handle reads a file through the client, with read-ahead windows for
// sequential readers.
type handle struct {
	n *node
	f *client.File

	mu        sync.Mutex
	cur, next *window // being read, and fetched ahead of it
	pos       int64   // where a sequential reader reads next
}

var (
	_ gofs.FileReader   = (*handle)(nil)
	_ gofs.FileReleaser = (*handle)(nil)
)

// window is a prefetched range of a file.
type window struct {
	off  int64
	data []byte
	done chan struct{}
	err  error
}

func (w *window) covers(off int64) bool {
	return w != nil && off >= w.off && off < w.off+int64(len(w.data))
}

// readAheadSize is fetched at once for a sequential reader: several kernel
// READs (128 KiB to 1 MiB each) come out of one fetch, and the next window
// is fetched while this one is read.
const readAheadSize = 8 << 20

// Read implements gofs.FileReader.
func (h *handle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	m := h.n.m
	m.reads.Add(1)
	n, err := h.read(ctx, dest, off)
	if err != nil && err != io.EOF {
		return nil, m.failed("read", h.n.nsPath(), err)
	}
	m.readBytes.Add(int64(n))
	return fuse.ReadResultData(dest[:n]), 0
}

func (h *handle) read(ctx context.Context, dest []byte, off int64) (int, error) {
	size := h.f.Size()
	if off >= size {
		return 0, io.EOF
	}
	want := min(int64(len(dest)), size-off)
	h.mu.Lock()
	sequential := off == h.pos && off > 0
	h.pos = off + want
	switch {
	case h.cur.covers(off):
	case h.next.covers(off):
		h.cur, h.next = h.next, nil
	case sequential:
		h.cur, h.next = h.prefetch(off), nil
	default:
		h.mu.Unlock()
		return h.f.ReadAtContext(ctx, dest, off)
	}
	w := h.cur
	// Past half of this window: fetch the next one.
	if h.next == nil && off+want > w.off+int64(len(w.data))/2 && w.off+int64(len(w.data)) < size {
		h.next = h.prefetch(w.off + int64(len(w.data)))
	}
	h.mu.Unlock()
	select {
	case <-w.done:
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	if w.err == nil || w.err == io.EOF {
		if in := w.data[off-w.off:]; int64(len(in)) >= want {
			return copy(dest, in), nil
		}
	}
	// The window failed or ends inside this read: read directly.
	return h.f.ReadAtContext(ctx, dest, off)
}

// prefetch starts fetching a window at off. Called with h.mu held.
func (h *handle) prefetch(off int64) *window {
	w := &window{off: off, data: make([]byte, min(int64(readAheadSize), h.f.Size()-off)), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		_, w.err = h.f.ReadAtContext(ctx, w.data, off)
	}()
	return w
}

// Release implements gofs.FileReleaser.
func (h *handle) Release(context.Context) syscall.Errno { return 0 }

// passthroughHandle gives the kernel the block file: reads never reach us.
// If the kernel declines it after all, reads fall back to the client.
type passthroughHandle struct {
	fd *os.File
	h  handle
}

var (
	_ gofs.FilePassthroughFder = (*passthroughHandle)(nil)
	_ gofs.FileReader          = (*passthroughHandle)(nil)
	_ gofs.FileReleaser        = (*passthroughHandle)(nil)
)

// PassthroughFd implements gofs.FilePassthroughFder.
func (p *passthroughHandle) PassthroughFd() (int, bool) { return int(p.fd.Fd()), true }

// Read serves a read the kernel sent anyway (passthrough refused).
func (p *passthroughHandle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	return p.h.Read(ctx, dest, off)
}

// Release closes the block file.
func (p *passthroughHandle) Release(context.Context) syscall.Errno {
	p.fd.Close()
	return 0
}

// toErrno maps an error of the client to what a reader should see.
func toErrno(err error) syscall.Errno {
	switch ufs.ClassOf(err) {
	case ufs.ClassNotExist:
		return syscall.ENOENT
	case ufs.ClassPermission:
		return syscall.EACCES
	case ufs.ClassInvalid:
		if errors.Is(err, ufs.ErrInvalidPath) {
			return syscall.ENOENT
		}
		return syscall.EINVAL
	case ufs.ClassCanceled:
		return syscall.EINTR
	case ufs.ClassVersionChanged:
		return syscall.ESTALE
	}
	return syscall.EIO // the UFS failed after retries, or no worker answered
}
