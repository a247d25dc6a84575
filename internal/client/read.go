package client

import (
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"net/http"
	"os"
	"sync"

	"github.com/granary-cache/granary/internal/config"
	"github.com/granary-cache/granary/internal/meta"
	"github.com/granary-cache/granary/internal/placement"
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
	fi, err := c.metas[ds.Name].Stat(ctx, source{c, ds}, rel)
	if err != nil {
		return nil, err
	}
	if fi.IsDir() {
		return nil, &ufs.Error{Op: "open", Dataset: ds.Name, Path: rel, Class: ufs.ClassInvalid, Err: errors.New("is a directory")}
	}
	return &File{c: c, ds: ds, path: rel, info: fi}, nil
}

// blockSize is the dataset's block size.
func (f *File) blockSize() int64 {
	if f.ds.BlockSize > 0 {
		return int64(f.ds.BlockSize)
	}
	return f.c.layout.BlockSize
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
	ref := wire.BlockRef{Dataset: f.ds.Name, Path: f.path, Version: f.info.Version, Size: f.info.Size, BlockSize: f.blockSize(), Index: idx}
	owners := c.owners(dataKey(f.ds.Name, f.path, idx), f.ds.Replicas)
	err := c.try(ctx, owners, func(ctx context.Context, m placement.Member) error {
		if _, local := c.sockets[m.ID]; local {
			if err := c.readLocal(ctx, m, ref, off, buf); err == nil {
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

func (c *Client) readRemote(ctx context.Context, m placement.Member, ref wire.BlockRef, off int64, buf []byte) error {
	hdr := http.Header{"Range": {fmt.Sprintf("bytes=%d-%d", off, off+int64(len(buf))-1)}}
	resp, err := c.get(ctx, m, wire.PathBlock, ref.Query(), hdr, "read", ref.Dataset, ref.Path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if _, err := io.ReadFull(resp.Body, buf); err != nil {
		return fmt.Errorf("%w: block %d of /%s/%s cut short: %v", wire.ErrWorker, ref.Index, ref.Dataset, ref.Path, err)
	}
	c.remote.Add(1)
	return nil
}

// errNoShortCircuit: the worker cannot hand out this block's file now (it
// could not cache it); read over HTTP instead.
var errNoShortCircuit = errors.New("no short-circuit for this block")

// readLocal reads from the block file of a worker on this host.
func (c *Client) readLocal(ctx context.Context, m placement.Member, ref wire.BlockRef, off int64, buf []byte) error {
	key := fmt.Sprintf("%s\x00%s\x00%s\x00%d", ref.Dataset, ref.Path, ref.Version, ref.Index)
	lb := c.local.get(key)
	if lb == nil {
		resp, err := c.send(ctx, c.unix[m.ID], http.MethodGet, "http://worker"+wire.PathLocal+"?"+ref.Query().Encode(), nil, "read", ref.Dataset, ref.Path)
		if err != nil {
			var ue *ufs.Error
			if errors.As(err, &ue) {
				return err // an error of the UFS: the same over HTTP
			}
			return fmt.Errorf("%w: %v", errNoShortCircuit, err)
		}
		var info wire.LocalBlock
		err = decodeJSON(resp.Body, &info)
		resp.Body.Close()
		if err != nil {
			return fmt.Errorf("%w: %v", errNoShortCircuit, err)
		}
		fd, err := os.Open(info.File)
		if err != nil {
			return fmt.Errorf("%w: %v", errNoShortCircuit, err) // evicted meanwhile
		}
		lb = c.local.put(key, &localBlock{f: fd, info: info, verified: make([]bool, len(info.CRCs))})
	}
	if err := lb.readAt(buf, off); err != nil {
		c.local.drop(key)
		return fmt.Errorf("%w: %v", errNoShortCircuit, err)
	}
	return nil
}

// localBlock is an open block file of a worker on this host. Each page is
// checked against its CRC the first time this client reads it.
type localBlock struct {
	f        *os.File
	info     wire.LocalBlock
	mu       sync.Mutex
	verified []bool
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func (lb *localBlock) readAt(buf []byte, off int64) error {
	if off+int64(len(buf)) > lb.info.Length {
		return fmt.Errorf("read past the end of a %d-byte block", lb.info.Length)
	}
	ps := lb.info.PageSize
	first, last := off/ps, (off+int64(len(buf))-1)/ps
	for p := first; p <= last; p++ {
		lb.mu.Lock()
		done := lb.verified[p]
		lb.mu.Unlock()
		if done {
			continue
		}
		page := make([]byte, min(ps, lb.info.Length-p*ps))
		if _, err := lb.f.ReadAt(page, p*ps); err != nil && err != io.EOF {
			return err
		}
		if crc32.Checksum(page, castagnoli) != lb.info.CRCs[p] {
			return fmt.Errorf("page %d of %s fails its checksum", p, lb.f.Name())
		}
		lb.mu.Lock()
		lb.verified[p] = true
		lb.mu.Unlock()
	}
	_, err := lb.f.ReadAt(buf, off)
	if err == io.EOF {
		err = nil
	}
	return err
}

// localBlocks keeps a bounded set of open block files.
type localBlocks struct {
	mu    sync.Mutex
	max   int
	files map[string]*localBlock
}

func newLocalBlocks(n int) *localBlocks { return &localBlocks{max: n, files: map[string]*localBlock{}} }

func (l *localBlocks) get(key string) *localBlock {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.files[key]
}

func (l *localBlocks) put(key string, lb *localBlock) *localBlock {
	l.mu.Lock()
	defer l.mu.Unlock()
	if old := l.files[key]; old != nil {
		lb.f.Close()
		return old
	}
	if len(l.files) >= l.max {
		for k, v := range l.files { // drop any one: map order is random enough
			v.f.Close()
			delete(l.files, k)
			break
		}
	}
	l.files[key] = lb
	return lb
}

func (l *localBlocks) drop(key string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if lb := l.files[key]; lb != nil {
		lb.f.Close()
		delete(l.files, key)
	}
}

func (l *localBlocks) closeAll() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for k, lb := range l.files {
		lb.f.Close()
		delete(l.files, k)
	}
}

// MetaCache exposes a dataset's client-side metadata cache (for tests and
// the mount's cache statistics).
func (c *Client) MetaCache(ds string) *meta.Cache { return c.metas[ds] }

// ErrNoLocalFile means a file cannot be read from a block file on this host.
var ErrNoLocalFile = errors.New("no local block file")

// LocalFile opens the block file holding the whole of f on this host, for a
// FUSE mount to hand to the kernel (passthrough). It works for a file that
// is one block and has an owner running here with short-circuit allowed;
// otherwise it returns ErrNoLocalFile. The worker makes the block complete
// and checks every page before it answers.
func (f *File) LocalFile(ctx context.Context) (*os.File, error) {
	c := f.c
	if f.info.Size == 0 || f.info.Size > f.blockSize() {
		return nil, ErrNoLocalFile
	}
	ref := wire.BlockRef{Dataset: f.ds.Name, Path: f.path, Version: f.info.Version, Size: f.info.Size, BlockSize: f.blockSize()}
	for _, m := range c.owners(dataKey(f.ds.Name, f.path, 0), f.ds.Replicas) {
		hc, ok := c.unix[m.ID]
		if !ok {
			continue
		}
		rctx, cancel := context.WithTimeout(ctx, c.timeout)
		resp, err := c.send(rctx, hc, http.MethodGet, "http://worker"+wire.PathLocal+"?"+ref.Query().Encode(), nil, "read", ref.Dataset, ref.Path)
		if err != nil {
			cancel()
			continue
		}
		var info wire.LocalBlock
		err = decodeJSON(resp.Body, &info)
		resp.Body.Close()
		cancel()
		if err != nil || info.Length != f.info.Size {
			continue
		}
		fd, err := os.Open(info.File)
		if err != nil {
			continue // evicted meanwhile
		}
		c.short.Add(1)
		return fd, nil
	}
	return nil, ErrNoLocalFile
}
