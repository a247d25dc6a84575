package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/granary-cache/granary/internal/block"
	"github.com/granary-cache/granary/internal/config"
	"github.com/granary-cache/granary/internal/meta"
	"github.com/granary-cache/granary/internal/placement"
	"github.com/granary-cache/granary/internal/regfile"
	"github.com/granary-cache/granary/internal/transport"
	"github.com/granary-cache/granary/internal/ufs"
	"github.com/granary-cache/granary/internal/wire"
)

// Stat returns the attributes of a namespace path "/<dataset>/<path>".
func (c *Client) Stat(ctx context.Context, p string) (ufs.FileInfo, error) {
	clean, err := ufs.CleanPath(p)
	if err != nil {
		return ufs.FileInfo{}, err
	}
	if clean == "" {
		return ufs.FileInfo{Name: "", Mode: fs.ModeDir | 0o555}, nil
	}
	ds, rel, err := c.resolve(clean)
	if err != nil {
		return ufs.FileInfo{}, err
	}
	return c.metas[ds.Name].Stat(ctx, source{c, ds}, rel)
}

// List returns the listing of a namespace directory; "/" lists the datasets.
func (c *Client) List(ctx context.Context, p string) ([]ufs.FileInfo, error) {
	clean, err := ufs.CleanPath(p)
	if err != nil {
		return nil, err
	}
	if clean == "" {
		var out []ufs.FileInfo
		for _, name := range c.Datasets() {
			out = append(out, ufs.FileInfo{Name: name, Mode: fs.ModeDir | 0o555})
		}
		return out, nil
	}
	ds, rel, err := c.resolve(clean)
	if err != nil {
		return nil, err
	}
	d, err := c.metas[ds.Name].List(ctx, source{c, ds}, rel)
	if err != nil {
		return nil, err
	}
	out := make([]ufs.FileInfo, 0, d.Len())
	for fi := range d.All() {
		out = append(out, fi)
	}
	return out, nil
}

// File is an open file of a dataset: its attributes, fixed at open, name the
// version every block is read at.
type File struct {
	c    *Client
	ds   config.Dataset
	path string
	info ufs.FileInfo
}

// Open opens a namespace path for reading.
func (c *Client) Open(ctx context.Context, p string) (*File, error) {
	clean, err := ufs.CleanPath(p)
	if err != nil {
		return nil, err
	}
	ds, rel, err := c.resolve(clean)
	if err != nil {
		return nil, err
	}
	c.touched(ds.Name)
	fi, err := c.metas[ds.Name].Stat(ctx, source{c, ds}, rel)
	if err != nil {
		return nil, err
	}
	if fi.IsDir() {
		return nil, &ufs.Error{Op: "open", Dataset: ds.Name, Path: rel, Class: ufs.ClassInvalid, Err: errors.New("is a directory")}
	}
	return &File{c: c, ds: ds, path: rel, info: fi}, nil
}

// blockSize is the file's block size: the dataset's, or the whole file
// rounded up to it (block.SizeFor).
func (f *File) blockSize() int64 {
	bs := int64(f.ds.BlockSize)
	if bs <= 0 {
		bs = f.c.layout.BlockSize
	}
	return block.SizeFor(f.info.Size, bs, int64(f.ds.WholeFile))
}

// Info returns the attributes the file was opened with.
func (f *File) Info() ufs.FileInfo { return f.info }

// Size is the file's size.
func (f *File) Size() int64 { return f.info.Size }

// ReadAt reads len(p) bytes at off, fetching the blocks it spans in
// parallel. Like io.ReaderAt it returns io.EOF when it reaches the end.
func (f *File) ReadAt(p []byte, off int64) (int, error) {
	return f.ReadAtContext(context.Background(), p, off)
}

// ReadAtContext is ReadAt with a context.
func (f *File) ReadAtContext(ctx context.Context, p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("read /%s/%s: negative offset", f.ds.Name, f.path)
	}
	if off >= f.info.Size {
		return 0, io.EOF
	}
	f.c.touched(f.ds.Name)
	n := min(int64(len(p)), f.info.Size-off)
	bs := f.blockSize()
	first, last := off/bs, (off+n-1)/bs
	var err error
	if first == last {
		err = f.readBlock(ctx, first, off-first*bs, p[:n])
	} else {
		var mu sync.Mutex
		var wg sync.WaitGroup
		for idx := first; idx <= last; idx++ {
			start := max(off, idx*bs)
			end := min(off+n, (idx+1)*bs)
			wg.Go(func() {
				if e := f.readBlock(ctx, idx, start-idx*bs, p[start-off:end-off]); e != nil {
					mu.Lock()
					err = errors.Join(err, e)
					mu.Unlock()
				}
			})
		}
		wg.Wait()
	}
	if err != nil {
		return 0, err
	}
	if n < int64(len(p)) {
		return int(n), io.EOF
	}
	return int(n), nil
}

// readBlock fills buf with bytes of block idx starting at off within it:
// from an owner's block file on this host, else from an owner over HTTP,
// else (if the dataset allows) straight from the UFS.
func (f *File) readBlock(ctx context.Context, idx, off int64, buf []byte) error {
	c := f.c
	ref := block.Ref{ID: block.ID{Dataset: f.ds.Name, Path: f.path, Version: f.info.Version, BlockSize: f.blockSize(), Index: idx}, Size: f.info.Size}
	owners := c.owners(block.PlacementKey(f.ds.Name, f.path, idx), f.ds.Replicas)
	if m, ok := c.nearWorker(f.ds, owners[:min(len(owners), max(f.ds.Replicas, 1))]); ok {
		if err := c.readNear(ctx, f.ds.Name, m, ref, off, buf); err == nil {
			c.short.Add(1)
			return nil
		}
	}
	err := c.try(ctx, owners, func(ctx context.Context, m placement.Member) error {
		if c.isLocal(m.ID) {
			if err := c.readLocal(ctx, m, ref, off, buf, false); err == nil {
				c.short.Add(1)
				return nil
			} else if !errors.Is(err, errNoShortCircuit) {
				return err
			}
		}
		return c.readRemote(ctx, m, ref, off, buf)
	})
	if err != nil && f.ds.Fallback == config.FallbackUFS && errors.Is(err, errAllOwnersFailed) {
		return c.fallbackRead(ctx, f.ds, f.path, f.info.Version, idx*f.blockSize()+off, buf)
	}
	return err
}

// readRemote reads a block range from worker m over the network, or over
// its unix socket when it is on this host (but would not hand out the
// block's file: a large block it is still fetching, say).
func (c *Client) readRemote(ctx context.Context, m placement.Member, ref block.Ref, off int64, buf []byte) error {
	req := wire.ReadRequest{Block: ref, Offset: off, Length: int64(len(buf))}
	err := transport.ErrHTTPOnly
	if sock, ok := c.unixClient(m.ID); ok && c.localFrames != nil {
		_, err = c.localFrames.Read(ctx, sock.path, req, buf)
	}
	if errors.Is(err, transport.ErrHTTPOnly) { // (or a worker older than the protocol)
		_, err = c.blocks.Read(ctx, m.Addr, req, buf)
	}
	if err != nil {
		return err
	}
	c.remote.Add(1)
	return nil
}

// errNoShortCircuit: the worker cannot hand out this block's file now (it
// could not cache it, or its pages keep failing their checks); read over
// HTTP instead, where the worker checks every page it sends.
var errNoShortCircuit = errors.New("no short-circuit for this block")

// errPageMismatch: a page of a block file does not match its CRC.
var errPageMismatch = errors.New("page fails its checksum")

// localBlockTTL bounds how long this client trusts a block file it opened:
// after it, the worker is asked for the block again and every page is
// checked again, so that bytes that changed on disk after their check are
// not served for as long as the file stays open.
const localBlockTTL = 30 * time.Second

// readLocal reads from the block file of a worker on this host, checking each
// page against its CRC the first time it reads it from that open file. When
// a page fails, the worker is asked to check the whole block itself (it
// counts the bad page, drops it and fetches it again) and the file is opened
// anew; a block that fails twice is read over HTTP.
func (c *Client) readLocal(ctx context.Context, m placement.Member, ref block.Ref, off int64, buf []byte, near bool) error {
	key := fmt.Sprintf("%s\x00%s\x00%s\x00%d", ref.Dataset, ref.Path, ref.Version, ref.Index)
	var err error
	for attempt := range 2 {
		var lb *localBlock
		verify := wire.VerifyNone
		if attempt > 0 {
			verify = wire.VerifyAll
		}
		if lb, err = c.localBlock(ctx, m, ref, key, verify, near); err != nil {
			return err
		}
		err = lb.readAt(buf, off)
		c.local.release(lb)
		if err == nil {
			return nil
		}
		c.local.drop(key, lb)
		if !errors.Is(err, errPageMismatch) {
			break
		}
	}
	return fmt.Errorf("%w: block %d of /%s/%s: %v", errNoShortCircuit, ref.Index, ref.Dataset, ref.Path, err)
}

// localBlock returns the block file of key, with a reference for the caller
// to release: the one this client has open, or else (and always when the
// worker is to verify) the one the worker names now. Unless verify is
// wire.VerifyNone, the worker checks the pages of the block before it
// answers (see wire.QueryVerify); this client checks them anyway.
func (c *Client) localBlock(ctx context.Context, m placement.Member, ref block.Ref, key, verify string, near bool) (*localBlock, error) {
	if verify == wire.VerifyNone {
		if lb := c.local.get(key); lb != nil {
			return lb, nil
		}
		if c.local.wasRefused(key) {
			return nil, fmt.Errorf("%w: refused less than %v ago", errNoShortCircuit, refusedFor)
		}
	}
	sock, ok := c.unixClient(m.ID)
	if !ok {
		return nil, fmt.Errorf("%w: worker %s is not on this host", errNoShortCircuit, m.ID)
	}
	info, err := c.askLocal(ctx, sock, ref, verify, near)
	if err != nil {
		var ue *ufs.Error
		if errors.As(err, &ue) {
			return nil, err // an error of the UFS: the same over HTTP
		}
		if ctx.Err() == nil {
			c.local.refuse(key)
		}
		return nil, fmt.Errorf("%w: %v", errNoShortCircuit, err)
	}
	fd, err := regfile.Open(info.File)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errNoShortCircuit, err) // evicted meanwhile
	}
	return c.local.put(key, &localBlock{f: fd, info: info, verified: make([]bool, len(info.CRCs)), expires: time.Now().Add(localBlockTTL)}), nil
}

// askLocal asks a worker on this host, at its unix socket, where the file
// of a block is: on the block protocol, or over HTTP with client.protocol
// http or a worker older than the protocol.
func (c *Client) askLocal(ctx context.Context, sock *localSocket, ref block.Ref, verify string, near bool) (wire.LocalBlock, error) {
	var info wire.LocalBlock
	err := transport.ErrHTTPOnly
	if c.localFrames != nil {
		info, err = c.localFrames.Locate(ctx, sock.path, wire.LocateRequest{Read: wire.ReadRequest{Block: ref}, Verify: verify, Near: near})
	}
	if errors.Is(err, transport.ErrHTTPOnly) {
		info, err = c.askLocalHTTP(ctx, sock.hc, ref, verify, near)
	}
	if err != nil {
		return info, err
	}
	want := min(ref.BlockSize, ref.Size-ref.Index*ref.BlockSize)
	if info.Length != want || info.PageSize <= 0 || int64(len(info.CRCs)) != (info.Length+info.PageSize-1)/info.PageSize {
		return info, fmt.Errorf("the worker describes block %d of /%s/%s as %d bytes in %d pages of %d; want %d bytes",
			ref.Index, ref.Dataset, ref.Path, info.Length, len(info.CRCs), info.PageSize, want)
	}
	return info, nil
}

// askLocalHTTP is askLocal over HTTP (wire.PathLocal).
func (c *Client) askLocalHTTP(ctx context.Context, hc *http.Client, ref block.Ref, verify string, near bool) (wire.LocalBlock, error) {
	q := wire.RefQuery(ref)
	q.Set(wire.QueryVerify, verify)
	if near {
		q.Set(wire.QueryNear, "1")
	}
	var info wire.LocalBlock
	resp, err := c.send(ctx, hc, http.MethodGet, "http://worker"+wire.PathLocal+"?"+q.Encode(), nil, "read", ref.Dataset, ref.Path)
	if err != nil {
		return info, err
	}
	defer resp.Body.Close()
	return info, decodeJSON(resp.Body, &info)
}

// MetaCache exposes a dataset's client-side metadata cache (for tests and
// the mount's cache statistics).
func (c *Client) MetaCache(ds string) *meta.Cache { return c.metas[ds] }

// ErrNoLocalFile means a file cannot be read from a block file on this host.
var ErrNoLocalFile = errors.New("no local block file")

// LocalFile opens the block file holding the whole of f on this host, for a
// FUSE mount to hand to the kernel (passthrough). It works for a file that
// is one block and has an owner running here with short-circuit allowed, or
// a near copy on the worker of this host (near_cache); otherwise it returns
// ErrNoLocalFile. The worker makes the block complete and checks the pages
// not checked since the file last changed before it answers, at each call:
// a mount calls it once per backing file it registers.
func (f *File) LocalFile(ctx context.Context) (*os.File, error) {
	c := f.c
	socks, near := f.localOwners()
	if len(socks) == 0 {
		return nil, ErrNoLocalFile
	}
	ref := block.Ref{ID: block.ID{Dataset: f.ds.Name, Path: f.path, Version: f.info.Version, BlockSize: f.blockSize()}, Size: f.info.Size}
	for _, sock := range socks {
		// The kernel reads the file without any check: the worker checks
		// every page first (and fetches again any that fails).
		rctx, cancel := context.WithTimeout(ctx, c.timeout)
		info, err := c.askLocal(rctx, sock, ref, wire.VerifyChanged, near)
		cancel()
		if err != nil && near && ctx.Err() == nil {
			// (A caller that gave up is no refusal.)
			c.nearRefused(f.ds.Name, err)
		}
		if err != nil || info.Length != f.info.Size {
			continue
		}
		fd, err := regfile.Open(info.File)
		if err != nil {
			continue // evicted meanwhile
		}
		c.short.Add(1)
		return fd, nil
	}
	return nil, ErrNoLocalFile
}

// MayBeLocal reports whether LocalFile could open f on this host once its
// block is cached: f is one block, and a worker of this host owns it or
// keeps near copies of its dataset.
func (f *File) MayBeLocal() bool {
	socks, _ := f.localOwners()
	return len(socks) > 0
}

// localOwners returns the sockets of the workers of this host that may
// hold the whole of f in one block file: its owners running here, or the
// worker keeping near copies (near) when no owner runs here. Only owners,
// not the next worker, which readers go to when an owner fails: a worker
// of this host that does not own the block would cache a copy nobody
// evicts first.
func (f *File) localOwners() (socks []*localSocket, near bool) {
	c := f.c
	if f.info.Size == 0 || f.info.Size > f.blockSize() {
		return nil, false
	}
	var owners []placement.Member
	for _, m := range c.members.Current().Owners(nil, block.PlacementKey(f.ds.Name, f.path, 0), max(f.ds.Replicas, 1)) {
		if !c.reach.Down(m.ID) {
			owners = append(owners, m)
		}
	}
	if m, ok := c.nearWorker(f.ds, owners); ok {
		owners, near = []placement.Member{m}, true
	}
	for _, m := range owners {
		if sock, ok := c.unixClient(m.ID); ok {
			socks = append(socks, sock)
		}
	}
	return socks, near
}
