package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/granary-cache/granary/internal/cache"
	"github.com/granary-cache/granary/internal/dataset"
	"github.com/granary-cache/granary/internal/placement"
	"github.com/granary-cache/granary/internal/ufs"
	"github.com/granary-cache/granary/internal/wire"
)

// blockReq is one request for bytes of one block.
type blockReq struct {
	ds          *dataset.Dataset
	key         cache.BlockKey
	size        int64 // the file's size
	blen        int64 // the block's length
	first, last int   // pages wanted
	// near, when set, are the block's owners: this worker keeps a near copy
	// for the clients of its host, copied from them (see near.go).
	near []placement.Member
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

// handleBlock serves a byte range of one block: from its file on a tier
// when cached, after fetching missing pages from the UFS. Every stored page
// is checked against its CRC32C as it is sent.
func (w *Worker) handleBlock(rw http.ResponseWriter, r *http.Request) {
	req, ok := w.parseBlockRequest(rw, r)
	if !ok {
		return
	}
	off, n, partial, err := parseRange(r.Header.Get("Range"), req.blen)
	if err != nil {
		http.Error(rw, err.Error(), http.StatusRequestedRangeNotSatisfiable)
		return
	}
	if n == 0 {
		rw.Header().Set("Content-Length", "0")
		return
	}
	ps := w.layout.PageSize
	req.first, req.last = int(off/ps), int((off+n-1)/ps)
	ctx := r.Context()
	l, err := w.load(ctx, req)
	if err != nil {
		wire.WriteError(rw, err)
		return
	}
	defer l.close()
	bufp := w.pagePool.Get().(*[]byte)
	defer w.pagePool.Put(bufp)
	// The first page is read and checked before the status goes out (unless
	// it is trusted), so that a failure there reaches the client as an
	// error, not a cut body.
	var first []byte
	if _, inMem := l.mem[req.first]; inMem || l.fetched[req.first] || !w.store.Trusted(l.file, req.first) {
		if first, err = w.page(ctx, l, req, req.first, *bufp); err != nil {
			wire.WriteError(rw, fmt.Errorf("serve %s: %w", req.key, err))
			return
		}
	}

	h := rw.Header()
	h.Set("Content-Length", strconv.FormatInt(n, 10))
	h.Set("Content-Type", "application/octet-stream")
	source := l.tier
	if len(l.fetched) > 0 {
		source = "ufs"
	}
	h.Set(wire.HeaderSource, source)
	if partial {
		h.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", off, off+n-1, req.blen))
		rw.WriteHeader(http.StatusPartialContent)
	}
	if err := w.send(ctx, rw, l, req, off, n, first, *bufp); err != nil {
		w.log.Debug("block send failed", "block", req.key.String(), "err", err)
		return
	}
	if l.b != nil && req.last+1 < w.layout.Pages(req.blen) && (req.first == 0 || w.store.Present(l.b, req.first-1)) {
		w.readAhead(req, l.b)
	}
}

// parseBlockRequest reads and checks the block a request names, answering
// the error itself when there is one.
func (w *Worker) parseBlockRequest(rw http.ResponseWriter, r *http.Request) (blockReq, bool) {
	ref, err := wire.ParseBlockRef(r.URL.Query())
	if err != nil {
		wire.WriteError(rw, ufs.NewError("read", ref.Path, ufs.ClassInvalid, err))
		return blockReq{}, false
	}
	req, err := w.blockRequest(ref)
	if err != nil {
		wire.WriteError(rw, err)
		return blockReq{}, false
	}
	return req, true
}

// blockRequest checks a block reference against the dataset and layout.
func (w *Worker) blockRequest(ref wire.BlockRef) (blockReq, error) {
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
	return blockReq{ds: ds, key: cache.BlockKey{Dataset: ds.Name(), Path: p, Version: ref.Version, BlockSize: ref.BlockSize, Index: ref.Index},
		size: ref.Size, blen: l.BlockLen(ref.Size, ref.Index)}, nil
}

// maxBlockSize bounds what a client may ask for: a block is one file on
// one tier.
const maxBlockSize = 64 << 30

// send writes bytes [off, off+n) of the block, page by page, starting with
// the first page's bytes when they are in hand (nil when the first page is
// trusted). A stored page is sent straight from its file (sendfile) when it
// was checked since the file last changed (cache.Store.Trusted); otherwise
// it is read into buf, checked against its CRC32C, and written from there.
func (w *Worker) send(ctx context.Context, rw io.Writer, l *loaded, req blockReq, off, n int64, data, buf []byte) error {
	ps := w.layout.PageSize
	end := off + n
	for p := req.first; p <= req.last; p++ {
		base := int64(p) * ps
		start, stop := max(off, base), min(end, base+w.layout.PageLen(req.blen, p))
		if p > req.first || data == nil {
			data = nil
			if _, inMem := l.mem[p]; inMem || l.fetched[p] || !w.store.Trusted(l.file, p) {
				var err error
				if data, err = w.page(ctx, l, req, p, buf); err != nil {
					return err
				}
			}
		}
		if data != nil {
			if _, err := rw.Write(data[start-base : stop-base]); err != nil {
				return err
			}
		} else if err := sendFile(rw, l.file.File, start, stop-start); err != nil {
			return err
		}
		w.m.bytes.WithLabelValues(l.source(p)).Add(float64(stop - start))
	}
	return nil
}

// sendFile copies n bytes of f at off to w: a sendfile when w is a socket.
func sendFile(w io.Writer, f *os.File, off, n int64) error {
	if _, err := f.Seek(off, io.SeekStart); err != nil {
		return err
	}
	_, err := io.Copy(w, io.LimitReader(f, n))
	return err
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
		l.mem[p] = data
		l.fetched[p] = true
		return nil
	}
	f, err := w.store.Open(l.b)
	if err != nil {
		return err
	}
	l.file.Close()
	l.file = f
	l.tier = strings.ToLower(w.store.TierOf(l.b))
	return nil
}

// load makes pages [first, last] of a block servable: it fetches the
// missing ones (one UFS read per page however many requests want it) and
// opens the block file. Stored pages are checked when they are read.
func (w *Worker) load(ctx context.Context, req blockReq) (*loaded, error) {
	l := &loaded{mem: map[int][]byte{}, fetched: map[int]bool{}}
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
		if err := w.fetchMissing(ctx, req, l); err != nil {
			return nil, err
		}
		if l.b == nil || len(l.mem) == req.last-req.first+1 {
			return l, nil // everything is in memory
		}
		f, err := w.store.Open(l.b)
		if err == nil {
			l.tier = strings.ToLower(w.store.TierOf(l.b))
			l.file = f
			return l, nil
		}
		if attempt == 2 || !errors.Is(err, cache.ErrGone) {
			return nil, fmt.Errorf("serve %s: %w", req.key, err)
		}
		// The block was evicted meanwhile: fetch what is missing again.
	}
}

// fetchMissing fetches, in parallel, the pages of the request that are
// neither stored nor already in l.mem.
func (w *Worker) fetchMissing(ctx context.Context, req blockReq, l *loaded) error {
	var missing []int
	for p := req.first; p <= req.last; p++ {
		if l.mem[p] != nil {
			continue
		}
		if l.b != nil && w.store.Present(l.b, p) {
			w.m.pages.WithLabelValues("hit").Inc()
			continue
		}
		missing = append(missing, p)
	}
	if len(missing) == 0 {
		return nil
	}
	w.m.pages.WithLabelValues("miss").Add(float64(len(missing)))
	var mu sync.Mutex
	var firstErr error
	var wg sync.WaitGroup
	for _, p := range missing {
		wg.Go(func() {
			data, err := w.fetchPage(ctx, req, l.b, p)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				if firstErr == nil {
					firstErr = err
				}
				return
			}
			l.fetched[p] = true
			if data != nil {
				l.mem[p] = data
			}
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
		bufp := w.pagePool.Get().(*[]byte)
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
		rc, err := read(ctx, req, r)
		if err == nil {
			_, err = io.ReadFull(rc, buf)
			rc.Close()
			if err == io.EOF || err == io.ErrUnexpectedEOF {
				err = &ufs.Error{Op: "read", Dataset: req.ds.Name(), Path: req.key.Path, Class: ufs.ClassVersionChanged,
					Err: fmt.Errorf("%w: the file is shorter than its listed size", ufs.ErrVersionChanged)}
			}
		}
		if err != nil {
			w.pagePool.Put(bufp)
			return nil, err
		}
		if b != nil {
			werr := w.store.WritePage(b, p, buf)
			if werr == nil {
				w.pagePool.Put(bufp)
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

// handleLocal, on the unix socket only, makes a whole block cached and says
// where its file is, so that a client on this host can read it directly
// (short-circuit) or hand it to the kernel (FUSE passthrough). Unless the
// client says it checks every page against the CRCs itself (verify=0),
// every page of the block not checked since its file last changed (every
// page with verify=all) is checked first, and one that fails is fetched
// again: the kernel reads a passthrough file without any check. A block
// that cannot be cached is refused; the client then reads it over HTTP.
func (w *Worker) handleLocal(rw http.ResponseWriter, r *http.Request) {
	req, ok := w.parseBlockRequest(rw, r)
	if !ok {
		return
	}
	req.first, req.last = 0, w.layout.Pages(req.blen)-1
	if r.URL.Query().Get(wire.QueryNear) == "1" {
		req.near = w.nearOwners(req)
	}
	ctx := r.Context()
	l, err := w.load(ctx, req)
	if errors.Is(err, errNoRoom) {
		http.Error(rw, err.Error(), http.StatusConflict)
		return
	}
	if err != nil {
		wire.WriteError(rw, err)
		return
	}
	defer l.close()
	if verify := r.URL.Query().Get(wire.QueryVerify); l.file != nil && verify != wire.VerifyNone {
		if err := w.verifyBlock(ctx, l, req, verify == wire.VerifyAll); err != nil {
			wire.WriteError(rw, fmt.Errorf("check %s: %w", req.key, err))
			return
		}
	}
	if l.file == nil || len(l.mem) > 0 {
		http.Error(rw, "block cannot be cached on this worker now", http.StatusConflict)
		return
	}
	rw.Header().Set("Content-Type", "application/json")
	json.NewEncoder(rw).Encode(wire.LocalBlock{File: l.file.Path, Length: req.blen, PageSize: w.layout.PageSize, CRCs: w.store.PageCRCs(l.b)})
}

// verifyBlock checks every page of a loaded block — but, unless all is
// set, those checked since the file last changed — fetching again the ones
// that fail.
func (w *Worker) verifyBlock(ctx context.Context, l *loaded, req blockReq, all bool) error {
	bufp := w.pagePool.Get().(*[]byte)
	defer w.pagePool.Put(bufp)
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

// parseRange parses a single "bytes=a-b" range of a block of size bytes.
func parseRange(h string, size int64) (off, n int64, partial bool, err error) {
	if h == "" {
		return 0, size, false, nil
	}
	spec, ok := strings.CutPrefix(h, "bytes=")
	a, b, ok2 := strings.Cut(spec, "-")
	if !ok || !ok2 || strings.Contains(spec, ",") {
		return 0, 0, false, fmt.Errorf("unsupported range %q", h)
	}
	if off, err = strconv.ParseInt(a, 10, 64); err != nil || off < 0 || off >= max(size, 1) {
		return 0, 0, false, fmt.Errorf("range %q outside a block of %d bytes", h, size)
	}
	last := size - 1
	if b != "" {
		if last, err = strconv.ParseInt(b, 10, 64); err != nil || last < off {
			return 0, 0, false, fmt.Errorf("bad range %q", h)
		}
		last = min(last, size-1)
	}
	return off, last - off + 1, true, nil
}
