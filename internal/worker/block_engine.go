package worker

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/granary-cache/granary/internal/block"
	"github.com/granary-cache/granary/internal/cache"
	"github.com/granary-cache/granary/internal/dataset"
	"github.com/granary-cache/granary/internal/placement"
	"github.com/granary-cache/granary/internal/transport"
	"github.com/granary-cache/granary/internal/ufs"
	"github.com/granary-cache/granary/internal/wire"
)

// blockReq is one request for bytes of one block.
type blockReq struct {
	ds          *dataset.Dataset
	key         block.ID
	size        int64 // the file's size
	blen        int64 // the block's length
	first, last int   // pages wanted
	// near, when set, are the block's owners: this worker keeps a near copy
	// for the clients of its host, copied from them (see near.go).
	near []placement.Member
	// background: a load's, which yields to jobs' reads (priority.go).
	background bool
	// wantsFile: the request is for the block's file (a locate, a load, a
	// fill), not for bytes to send: more than pagesInFlight pages of it
	// are never held in memory for want of room (errNoSpaceForBlock).
	wantsFile bool
}

// loaded is a block made ready to serve pages [first, last]: stored pages
// are read from file (and checked as they are read), pages that could not
// be stored are held in mem.
type loaded struct {
	b       *cache.Block
	file    *cache.File
	tier    string
	mem     map[int][]byte
	fetched map[int]bool // pages this request fetched from the UFS
}

// keep records that this request fetched page p from the UFS, and holds
// its bytes when they were not stored (data nil: they were).
func (l *loaded) keep(p int, data []byte) {
	if l.fetched == nil {
		l.mem, l.fetched = map[int][]byte{}, map[int]bool{}
	}
	l.fetched[p] = true
	if data != nil {
		l.mem[p] = data
	}
}

func (l *loaded) close() {
	if l.file != nil {
		l.file.Close()
	}
}

// source is where page p's bytes come from, for the served-bytes counter.
func (l *loaded) source(p int) string {
	if l.fetched[p] {
		return "ufs"
	}
	return l.tier
}

// ServeRead serves bytes of one block (transport.Handler, for both
// protocols): from its file on a tier when cached, after fetching missing
// pages from the UFS. Every stored page is checked against its CRC32C as
// it is sent, save those checked since the file last changed, which go
// from the file to the socket by sendfile.
func (w *Worker) ServeRead(ctx context.Context, r wire.ReadRequest, out transport.RangeWriter) error {
	req, err := w.blockRequest(r.Block)
	if err != nil {
		return err
	}
	if r.Offset < 0 || r.Length < 0 || r.Offset+r.Length > req.blen {
		return &ufs.Error{Op: "read", Dataset: req.ds.Name(), Path: req.key.Path, Class: ufs.ClassInvalid,
			Err: fmt.Errorf("bytes %d+%d outside block %d of %d bytes", r.Offset, r.Length, req.key.Index, req.blen)}
	}
	if r.Length == 0 {
		return nil
	}
	ps := w.layout.PageSize
	off, n := r.Offset, r.Length
	req.first, req.last = int(off/ps), int((off+n-1)/ps)
	l, err := w.load(ctx, req)
	if err != nil {
		return err
	}
	defer l.close()
	if err := w.send(ctx, out, l, req, off, n); err != nil {
		return fmt.Errorf("serve %s: %w", req.key, err)
	}
	if l.b != nil && req.last+1 < w.layout.Pages(req.blen) && (req.first == 0 || w.store.Present(l.b, req.first-1)) {
		w.readAhead(req, l.b)
	}
	return nil
}

// blockRequest checks a block reference against the dataset and layout.
func (w *Worker) blockRequest(ref block.Ref) (blockReq, error) {
	ds, p, err := w.dataset(ref.Dataset, ref.Path)
	if err != nil {
		return blockReq{}, err
	}
	if ref.Index < 0 || ref.Size < 0 {
		return blockReq{}, &ufs.Error{Op: "read", Dataset: ds.Name(), Path: p, Class: ufs.ClassInvalid,
			Err: fmt.Errorf("block %d of a %d-byte file: neither may be negative", ref.Index, ref.Size)}
	}
	// The client's block size for the dataset is followed, so that client
	// and worker can never disagree on what block i is; it must fit this
	// worker's pages.
	l := cache.Layout{BlockSize: ref.BlockSize, PageSize: w.layout.PageSize}
	if err := l.Check(); err != nil || ref.BlockSize > maxBlockSize {
		return blockReq{}, &ufs.Error{Op: "read", Dataset: ds.Name(), Path: p, Class: ufs.ClassInvalid,
			Err: fmt.Errorf("block size %d does not fit pages of %d bytes (or exceeds %d)", ref.BlockSize, w.layout.PageSize, int64(maxBlockSize))}
	}
	if ref.Index >= l.Blocks(ref.Size) {
		return blockReq{}, &ufs.Error{Op: "read", Dataset: ds.Name(), Path: p, Class: ufs.ClassInvalid,
			Err: fmt.Errorf("block %d is past the end of a %d-byte file", ref.Index, ref.Size)}
	}
	return blockReq{ds: ds, key: block.ID{Dataset: ds.Name(), Path: p, Version: ref.Version, BlockSize: ref.BlockSize, Index: ref.Index},
		size: ref.Size, blen: l.BlockLen(ref.Size, ref.Index)}, nil
}

// maxBlockSize bounds what a client may ask for: a block is one file on
// one tier.
const maxBlockSize = 64 << 30

// send writes bytes [off, off+n) of the block, page by page. A page
// that can go from its file as it is goes by sendfile (runs of such pages
// from one source in one call): a stored page checked since the file last
// changed (cache.Store.Trusted), or one this request just fetched and
// stored, whose CRC was computed from the very bytes written. Any other is
// read into buf, checked against its CRC32C, and written from there —
// before it is written, so that a page failing its check is an error the
// reader gets instead of bad bytes.
func (w *Worker) send(ctx context.Context, out transport.RangeWriter, l *loaded, req blockReq, off, n int64) error {
	var bufp *[]byte // a page buffer, taken when a page must be read
	defer func() {
		if bufp != nil {
			w.pageBufs.Put(bufp)
		}
	}()
	ps := w.layout.PageSize
	end := off + n
	var run struct { // bytes to send from the file, not sent yet
		start, stop int64
		src         string
	}
	flush := func() error {
		if run.stop > run.start {
			if err := out.WriteFile(l.file.File, run.start, run.stop-run.start, wire.SourceOf(run.src)); err != nil {
				return err
			}
			w.m.served(run.src, run.stop-run.start)
		}
		run.start, run.stop = 0, 0
		return nil
	}
	for p := req.first; p <= req.last; p++ {
		base := int64(p) * ps
		start, stop := max(off, base), min(end, base+w.layout.PageLen(req.blen, p))
		_, inMem := l.mem[p]
		if !inMem && (l.fetched[p] || w.store.Trusted(l.file, p)) {
			if src := l.source(p); run.stop != start || run.src != src {
				if err := flush(); err != nil {
					return err
				}
				run.start, run.src = start, src
			}
			run.stop = stop
			continue
		}
		if err := flush(); err != nil {
			return err
		}
		if bufp == nil {
			bufp = w.pageBufs.Get()
		}
		data, err := w.page(ctx, l, req, p, *bufp)
		if err != nil {
			return err
		}
		src := l.source(p)
		if err := out.Write(data[start-base:stop-base], wire.SourceOf(src)); err != nil {
			return err
		}
		w.m.served(src, stop-start)
	}
	return flush()
}

// page returns the bytes of page p of a loaded block: held in memory, or
// read from the block file into buf and checked. A page that fails its
// check (the store drops and counts it) or that went meanwhile is fetched
// from the UFS again, so that the reader gets the right bytes whatever the
// file held.
func (w *Worker) page(ctx context.Context, l *loaded, req blockReq, p int, buf []byte) ([]byte, error) {
	for attempt := 0; ; attempt++ {
		if data, ok := l.mem[p]; ok {
			return data, nil
		}
		data, err := w.readPage(l, req, p, buf)
		if err == nil || attempt == 2 || !(errors.Is(err, cache.ErrCorrupt) || errors.Is(err, cache.ErrGone)) {
			return data, err
		}
		if err := w.refetch(ctx, l, req, p); err != nil {
			return nil, err
		}
	}
}

// readPage reads page p from the block file. A page this request fetched
// from the UFS itself is not checked again: its CRC was computed from the
// very bytes written.
func (w *Worker) readPage(l *loaded, req blockReq, p int, buf []byte) ([]byte, error) {
	if !l.fetched[p] {
		return w.store.ReadPage(l.file, p, buf)
	}
	n := w.layout.PageLen(req.blen, p)
	k, err := l.file.ReadAt(buf[:n], int64(p)*w.layout.PageSize)
	if int64(k) == n {
		return buf[:n], nil
	}
	return nil, fmt.Errorf("read page %d of %s: %d of %d bytes: %v", p, req.key, k, n, err)
}

// refetch fetches page p from the UFS again after its stored copy failed.
// Stored again, it is read from the block's file as it is now (a demotion
// may have moved it since the request opened it) and checked once more:
// another request may have stored it, and a disk that just corrupted it
// may do so again.
func (w *Worker) refetch(ctx context.Context, l *loaded, req blockReq, p int) error {
	data, err := w.fetchPage(ctx, req, l.b, p)
	if err != nil {
		return err
	}
	if data != nil {
		l.keep(p, data)
		return nil
	}
	f, err := w.store.OpenShared(l.b)
	if err != nil {
		return err
	}
	l.file.Close()
	l.file = f
	l.tier = tierLabel(w.store.TierOf(l.b))
	return nil
}

// load makes pages [first, last] of a block servable: it fetches the
// missing ones (one UFS read per page however many requests want it) and
// opens the block file. Stored pages are checked when they are read.
func (w *Worker) load(ctx context.Context, req blockReq) (*loaded, error) {
	l := &loaded{}
	for attempt := 0; ; attempt++ {
		l.b = w.store.Lookup(req.key)
		if l.b == nil {
			var err error
			if l.b, err = w.createBlock(req); err != nil && !errors.Is(err, cache.ErrNoSpace) {
				return nil, err
			}
		} else if req.near == nil && w.store.Near(l.b) {
			w.store.Own(l.b)
		}
		if l.b == nil && req.wantsFile && req.last-req.first >= pagesInFlight {
			return nil, fmt.Errorf("%w: %s (%d bytes)", errNoSpaceForBlock, req.key, req.blen)
		}
		if err := w.fetchMissing(ctx, req, l); err != nil {
			return nil, err
		}
		if l.b == nil || len(l.mem) == req.last-req.first+1 {
			return l, nil // everything is in memory
		}
		f, err := w.store.OpenShared(l.b)
		if err == nil {
			l.tier = tierLabel(w.store.TierOf(l.b))
			l.file = f
			return l, nil
		}
		if attempt == 2 || !errors.Is(err, cache.ErrGone) {
			return nil, fmt.Errorf("serve %s: %w", req.key, err)
		}
		// The block was evicted meanwhile: fetch what is missing again.
	}
}

// errNoSpaceForBlock: no tier has room for a block whose file a request
// wants (blockReq.wantsFile) and which has more than pagesInFlight pages:
// they are not fetched to be held in memory, a GiB at worst. A read is
// served from memory instead, as ever.
var errNoSpaceForBlock = errors.New("no cache space for the block now")

// pagesInFlight bounds the pages one request fetches at once: each holds
// a page buffer until its bytes are stored, so a request for a whole large
// block (a locate, a load) would otherwise take a buffer per page of it at
// once — 256 of 4 MiB for a block of 1 GiB. 16 is a whole block of the
// fixed size (64 MiB), which keeps such blocks fetched all at once.
const pagesInFlight = 16

// fetchMissing fetches, pagesInFlight at a time, the pages of the request
// that are neither stored nor already in l.mem.
func (w *Worker) fetchMissing(ctx context.Context, req blockReq, l *loaded) error {
	var missing []int
	for p := req.first; p <= req.last; p++ {
		if l.mem[p] != nil {
			continue
		}
		if l.b != nil && w.store.Present(l.b, p) {
			w.m.pageHits.Inc()
			continue
		}
		missing = append(missing, p)
	}
	if len(missing) == 0 {
		return nil
	}
	w.m.pages.WithLabelValues("miss").Add(float64(len(missing)))
	if !req.background {
		defer w.prio.foreground(req.ds.Name())()
	}
	var mu sync.Mutex
	var firstErr error
	var wg sync.WaitGroup
	slots := make(chan struct{}, pagesInFlight)
	for _, p := range missing {
		slots <- struct{}{}
		wg.Go(func() {
			defer func() { <-slots }()
			data, err := w.fetchPage(ctx, req, l.b, p)
			mu.Lock()
			defer mu.Unlock()
			if err == nil && data != nil && req.wantsFile && len(missing) > pagesInFlight {
				// Not stored (a full disk): the rest would be held in
				// memory too.
				err = fmt.Errorf("%w: page %d of %s could not be stored", errNoSpaceForBlock, p, req.key)
			}
			if err != nil {
				if firstErr == nil {
					firstErr = err
				}
				return
			}
			l.keep(p, data)
		})
	}
	wg.Wait()
	return firstErr
}

// fetchPage reads page p of a block from the UFS and stores it. It returns
// nil when the page is stored (read it from the block file), or the bytes
// when they could not be stored. Concurrent calls for one page make one
// UFS read.
func (w *Worker) fetchPage(ctx context.Context, req blockReq, b *cache.Block, p int) ([]byte, error) {
	data, shared, err := w.pages.Do(ctx, pageKey{req.key, p}, func(ctx context.Context) ([]byte, error) {
		if b != nil && w.store.Present(b, p) {
			return nil, nil // stored by a call that just finished
		}
		plen := w.layout.PageLen(req.blen, p)
		bufp := w.pageBufs.Get()
		buf := (*bufp)[:plen]
		off := req.key.Index*req.key.BlockSize + int64(p)*w.layout.PageSize
		r := ufs.Range{Off: off, Len: plen, IfVersion: req.key.Version}
		if off == 0 && plen == req.size {
			r.Len = -1 // the whole file: a plain read, which servers answer fastest
		}
		read := w.readUFS
		if req.near != nil {
			read = w.readOwner
		}
		if err := read(ctx, req, r, buf); err != nil {
			w.pageBufs.Put(bufp)
			return nil, err
		}
		if b != nil {
			werr := w.store.WritePage(b, p, buf)
			if werr == nil {
				w.pageBufs.Put(bufp)
				return nil, nil
			}
			w.log.Debug("page not cached", "block", req.key.String(), "page", p, "err", werr)
		}
		w.m.uncached.Inc()
		return buf, nil // shared by the waiters: not returned to the pool
	})
	if shared {
		w.m.merged.WithLabelValues("page").Inc()
	}
	return data, err
}

// readAhead fetches, in the background, the pages that follow a sequential
// read, so that the reader's next request finds them cached.
func (w *Worker) readAhead(req blockReq, b *cache.Block) {
	pages := w.layout.Pages(req.blen)
	for p := req.last + 1; p < pages && p <= req.last+w.cfg.Worker.Readahead; p++ {
		if w.store.Present(b, p) {
			continue
		}
		select {
		case w.readahead <- struct{}{}:
		default:
			return // enough in flight already
		}
		w.bg.Go(func() {
			defer func() { <-w.readahead }()
			ctx, cancel := context.WithTimeout(w.bgCtx, time.Minute)
			defer cancel()
			if _, err := w.fetchPage(ctx, req, b, p); err == nil {
				w.m.readahead.Inc()
			}
		})
	}
}

// verifyBlock checks every page of a loaded block — but, unless all is
// set, those checked since the file last changed — fetching again the ones
// that fail.
func (w *Worker) verifyBlock(ctx context.Context, l *loaded, req blockReq, all bool) error {
	bufp := w.pageBufs.Get()
	defer w.pageBufs.Put(bufp)
	for p := req.first; p <= req.last; p++ {
		if l.fetched[p] {
			continue // fetched by this request: its CRC is of these bytes
		}
		if !all && w.store.Trusted(l.file, p) {
			continue
		}
		if _, err := w.page(ctx, l, req, p, *bufp); err != nil {
			return err
		}
	}
	return nil
}

// tierLabel is a tier's name as a metric label and a wire source: lower
// case, without an allocation for the usual tiers.
func tierLabel(name string) string {
	switch name {
	case "MEM":
		return "mem"
	case "SSD":
		return "ssd"
	case "HDD":
		return "hdd"
	}
	return strings.ToLower(name)
}
