package worker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/granary-cache/granary/internal/block"
	"github.com/granary-cache/granary/internal/config"
	"github.com/granary-cache/granary/internal/meta"
	"github.com/granary-cache/granary/internal/placement"
	"github.com/granary-cache/granary/internal/transport"
	"github.com/granary-cache/granary/internal/ufs"
	"github.com/granary-cache/granary/internal/wire"
)

// On CephFS, opening a file costs the MDS a lookup unless the client that
// opens it has listed its directory, and every worker is a client. The
// worker that owns a directory's metadata has listed it, so a worker that
// misses a page of a small file (up to one block_size) of such a dataset reads it
// through that worker, its "directory reader", instead of from the UFS
// itself: the MDS then pays for a directory once, as for one ceph-fuse
// client, however many workers store its files. Large files are read
// directly: one lookup is nothing beside their bytes, and spreading their
// reads over the workers is what makes a cold epoch fast.

// dirReader returns the worker to read a file through, if not this one.
func (w *Worker) dirReader(req blockReq) (placement.Member, bool) {
	if !req.ds.DirAffine || req.size > int64(req.ds.Config.BlockSize) { // a whole-file block is no small file
		return placement.Member{}, false
	}
	m, ok := w.view().Table().Owner(wire.MetaKey(req.ds.Name(), meta.Parent(req.key.Path)))
	if !ok || m.ID == w.ID() || w.reach.Down(m.ID) {
		return placement.Member{}, false
	}
	return m, true
}

// readUFS fills buf with a range of a file of the UFS (r.Len -1: the whole
// file, len(buf) bytes), through the file's directory reader when there is
// one and it answers.
func (w *Worker) readUFS(ctx context.Context, req blockReq, r ufs.Range, buf []byte) error {
	if m, ok := w.dirReader(req); ok {
		err := w.readThrough(ctx, m, req, r, buf)
		if !errors.Is(err, wire.ErrWorker) {
			return err
		}
		if !wire.Answered(err) {
			w.reach.MarkDown(m.ID, m.Addr, err)
		}
		w.log.Debug("directory reader failed; reading the UFS directly", "peer", m.ID, "err", err)
	}
	rc, err := req.ds.FS.ReadRange(ctx, req.key.Path, r)
	if err != nil {
		return err
	}
	return fillFrom(rc, req, buf)
}

// fillFrom reads buf full from rc and closes it; a file that ends first
// changed since it was listed.
func fillFrom(rc io.ReadCloser, req blockReq, buf []byte) error {
	_, err := io.ReadFull(rc, buf)
	rc.Close()
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		return &ufs.Error{Op: "read", Dataset: req.ds.Name(), Path: req.key.Path, Class: ufs.ClassVersionChanged,
			Err: fmt.Errorf("%w: the file is shorter than its listed size", ufs.ErrVersionChanged)}
	}
	return err
}

// readThrough has worker m read the range for this one: on the block
// protocol (wire.KindUFSRead), or over HTTP from a worker older than it.
func (w *Worker) readThrough(ctx context.Context, m placement.Member, req blockReq, r ufs.Range, buf []byte) error {
	gctx, done := w.reach.Guard(ctx, m.ID, m.Addr)
	defer done()
	ref := block.Ref{ID: block.ID{Dataset: req.ds.Name(), Path: req.key.Path, Version: r.IfVersion, BlockSize: req.key.BlockSize}, Size: req.size}
	err := w.peerBlocks.ReadUFS(gctx, m.Addr, wire.ReadRequest{Block: ref, Offset: r.Off}, buf)
	if errors.Is(err, transport.ErrHTTPOnly) {
		err = w.readThroughHTTP(gctx, m, req, r, buf)
	}
	if err != nil && ctx.Err() != nil {
		return ufs.NewError("read", req.key.Path, ufs.ClassCanceled, ctx.Err())
	}
	if err == nil {
		w.m.peerReads.Inc()
	}
	return err
}

// readThroughHTTP is readThrough over HTTP (wire.PathUFSRead).
func (w *Worker) readThroughHTTP(ctx context.Context, m placement.Member, req blockReq, r ufs.Range, buf []byte) error {
	q := url.Values{"ds": {req.ds.Name()}, "path": {req.key.Path}, "ver": {r.IfVersion},
		"off": {strconv.FormatInt(r.Off, 10)}, "len": {strconv.FormatInt(r.Len, 10)}}
	hr, err := http.NewRequestWithContext(ctx, http.MethodGet, w.peerURL(m.Addr, wire.PathUFSRead)+"?"+q.Encode(), nil)
	if err != nil {
		return fmt.Errorf("%w: %v", wire.ErrWorker, err)
	}
	if w.token != "" {
		hr.Header.Set("Authorization", "Bearer "+w.token)
	}
	resp, err := w.peerHTTP.Do(hr)
	if err != nil {
		return fmt.Errorf("%w: %s: %v", wire.ErrWorker, m.ID, err)
	}
	if resp.StatusCode == http.StatusOK {
		return fillFrom(drainingBody{resp.Body}, req, buf)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusServiceUnavailable {
		// The peer reached the UFS and the UFS did not answer: reading it
		// from here would only wait as long again.
		return ufs.NewError("read", req.key.Path, ufs.ClassRetryable, fmt.Errorf("through worker %s: %w", m.ID, wire.ReadError("read", req.ds.Name(), req.key.Path, resp)))
	}
	return wire.ReadError("read", req.ds.Name(), req.key.Path, resp)
}

// ServeUFSRead reads a range of a file from the UFS for a peer, uncached
// (transport.UFSReader): the peer stores it.
func (w *Worker) ServeUFSRead(ctx context.Context, r wire.ReadRequest, out transport.RangeWriter) error {
	ds, p, err := w.dataset(r.Block.Dataset, r.Block.Path)
	if err != nil {
		return err
	}
	if r.Length > w.layout.PageSize {
		return ufs.NewError("read", p, ufs.ClassInvalid, fmt.Errorf("a read of %d bytes for a peer: at most a page (%d)", r.Length, w.layout.PageSize))
	}
	rng := ufs.Range{Off: r.Offset, Len: r.Length, IfVersion: r.Block.Version}
	if r.Offset == 0 && r.Length == r.Block.Size {
		rng.Len = -1 // the whole file: a plain read, which servers answer fastest
	}
	rc, err := ds.FS.ReadRange(ctx, p, rng)
	if err != nil {
		return err
	}
	bufp := w.pageBufs.Get()
	defer w.pageBufs.Put(bufp)
	buf := (*bufp)[:r.Length]
	if err := fillFrom(rc, blockReq{ds: ds, key: block.ID{Dataset: ds.Name(), Path: p}}, buf); err != nil {
		return err
	}
	return out.Write(buf, wire.SourceUFS)
}

// handleUFSRead reads a range of a file from the UFS for a peer, uncached:
// the peer stores it.
func (w *Worker) handleUFSRead(rw http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	ds, p, err := w.dataset(q.Get("ds"), q.Get("path"))
	if err != nil {
		wire.WriteError(rw, err)
		return
	}
	off, err1 := strconv.ParseInt(q.Get("off"), 10, 64)
	n, err2 := strconv.ParseInt(q.Get("len"), 10, 64)
	if err1 != nil || err2 != nil || off < 0 {
		wire.WriteError(rw, ufs.NewError("read", p, ufs.ClassInvalid, fmt.Errorf("malformed range %q", r.URL.RawQuery)))
		return
	}
	rc, err := ds.FS.ReadRange(r.Context(), p, ufs.Range{Off: off, Len: n, IfVersion: q.Get("ver")})
	if err != nil {
		wire.WriteError(rw, err)
		return
	}
	defer rc.Close()
	rw.Header().Set("Content-Type", "application/octet-stream")
	// Read in pages, as the worker's own fetches do: a whole small file in
	// one read of the UFS. Copying into the ResponseWriter as such (its
	// ReadFrom) would first read 512 bytes alone, to sniff a type; on
	// CephFS each read of a file not yet cached is an OSD request, so that
	// made two per file.
	bufp := w.pageBufs.Get()
	defer w.pageBufs.Put(bufp)
	if _, err := io.CopyBuffer(struct{ io.Writer }{rw}, rc, *bufp); err != nil {
		w.log.Debug("read for a peer failed", "path", p, "err", err)
		panic(http.ErrAbortHandler) // the peer must see a broken body, not a short one
	}
}

// drainingBody is the body of a read through a peer over HTTP.
type drainingBody struct{ io.ReadCloser }

// bodyTail bounds what Close reads of a body past the bytes its reader
// took: the end of a chunked body, not a page nobody wants.
const bodyTail = 4 << 10

// Close reads the end of the body before closing it. A reader takes
// exactly the bytes it asked for and stops short of the body's end (the
// last chunk of a chunked answer); an HTTP client closes a connection
// whose body was closed before its end, so without this every read
// through a peer dialled a new connection.
func (b drainingBody) Close() error {
	io.CopyN(io.Discard, b.ReadCloser, bodyTail)
	return b.ReadCloser.Close()
}

// newPeerHTTP is the HTTP client of worker-to-worker requests: the same
// TLS as clients, connections bounded by the connect timeout.
func newPeerHTTP(cfg *config.Config) *http.Client {
	return &http.Client{Transport: &http.Transport{
		DialContext:         (&net.Dialer{Timeout: time.Duration(cfg.Client.ConnectTimeout)}).DialContext,
		TLSClientConfig:     cfg.Auth.TLS.ClientConfig(),
		MaxIdleConnsPerHost: 32,
		IdleConnTimeout:     time.Minute,
	}}
}

// peerURL is the URL of a path on a peer's data endpoint.
func (w *Worker) peerURL(addr, path string) string {
	if w.cfg.Auth.TLS.Enabled() {
		return "https://" + addr + path
	}
	return "http://" + addr + path
}
