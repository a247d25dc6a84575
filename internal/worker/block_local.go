package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/granary-cache/granary/internal/block"
	"github.com/granary-cache/granary/internal/config"
	"github.com/granary-cache/granary/internal/ufs"
	"github.com/granary-cache/granary/internal/wire"
)

// errNotLocal: a block this worker cannot hand out as a file now (no room
// to cache it, or held in memory only); the client reads it over the
// network instead.
var errNotLocal = fmt.Errorf("%w: block cannot be cached on this worker now", wire.ErrWorker)

// locate, for a client on this host (the unix socket only), makes a whole
// block cached and says where its file is, so that the client can read it
// directly (short-circuit) or hand it to the kernel (FUSE passthrough).
// Unless the client says it checks every page against the CRCs itself
// (wire.VerifyNone), every page of the block not checked since its file
// last changed (every page with wire.VerifyAll) is checked first, and one
// that fails is fetched again: the kernel reads a passthrough file without
// any check. A block that cannot be cached is refused (errNotLocal).
//
// A block larger than locateFetchMax (a whole-file block of a large file)
// is answered only once it is all cached: fetching it first would hold the
// client's read, or its open, for as long as the whole file takes. It is
// refused meanwhile, and fetched whole in the background (fill), while
// the client reads what it needs through the worker, page by page.
func (w *Worker) locate(ctx context.Context, ref block.Ref, verify string, near bool) (wire.LocalBlock, error) {
	req, err := w.blockRequest(ref)
	if err != nil {
		return wire.LocalBlock{}, err
	}
	req.first, req.last, req.wantsFile = 0, w.layout.Pages(req.blen)-1, true
	if near {
		req.near = w.nearOwners(req)
	}
	if req.blen > w.locateFetchMax {
		if b := w.store.Lookup(req.key); b == nil || !w.store.Complete(b) {
			w.fill(req)
			return wire.LocalBlock{}, fmt.Errorf("%w: %s (%d bytes) is not all cached yet, and is being fetched", errNotLocal, req.key, req.blen)
		}
	}
	l, err := w.load(ctx, req)
	if errors.Is(err, errNoRoom) || errors.Is(err, errNoSpaceForBlock) {
		return wire.LocalBlock{}, fmt.Errorf("%w: %v", errNotLocal, err)
	}
	if err != nil {
		return wire.LocalBlock{}, err
	}
	defer l.close()
	if l.file != nil && verify != wire.VerifyNone {
		if err := w.verifyBlock(ctx, l, req, verify == wire.VerifyAll); err != nil {
			return wire.LocalBlock{}, fmt.Errorf("check %s: %w", req.key, err)
		}
	}
	if l.file == nil || len(l.mem) > 0 {
		return wire.LocalBlock{}, errNotLocal
	}
	return wire.LocalBlock{File: l.file.Path, Length: req.blen, PageSize: w.layout.PageSize, CRCs: w.store.PageCRCs(l.b)}, nil
}

// handleLocal serves locate over HTTP (wire.PathLocal).
func (w *Worker) handleLocal(rw http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	ref, err := wire.ParseRef(q)
	if err != nil {
		wire.WriteError(rw, ufs.NewError("read", ref.Path, ufs.ClassInvalid, err))
		return
	}
	lb, err := w.locate(r.Context(), ref, q.Get(wire.QueryVerify), q.Get(wire.QueryNear) == "1")
	if errors.Is(err, errNotLocal) {
		http.Error(rw, err.Error(), http.StatusConflict)
		return
	}
	if err != nil {
		wire.WriteError(rw, err)
		return
	}
	rw.Header().Set("Content-Type", "application/json")
	json.NewEncoder(rw).Encode(lb)
}

// locateFrame serves locate on the block protocol, counted as the HTTP
// endpoint counts it (op "local", with the status HTTP would answer).
func (w *Worker) locateFrame(ctx context.Context, r wire.LocateRequest) (wire.LocalBlock, error) {
	start := time.Now()
	lb, err := w.locate(ctx, r.Read.Block, r.Verify, r.Near)
	code := http.StatusOK
	switch {
	case errors.Is(err, errNotLocal):
		code = http.StatusConflict
	case err != nil:
		code = wire.StatusOf(err)
	}
	w.m.request("local", code, time.Since(start))
	return lb, err
}

// fixedLocateFetch is the default locateFetchMax: a block of the fixed
// block size, which a locate fetches at once (pagesInFlight pages).
const fixedLocateFetch = config.DefaultBlockSize

// fill fetches a whole block in the background, once at a time per block,
// as a load does (it yields to jobs' reads and takes a load's slot; with
// none free it is left to the next locate).
func (w *Worker) fill(req blockReq) {
	if _, busy := w.fills.LoadOrStore(req.key, struct{}{}); busy {
		return
	}
	select {
	case w.loads.slots <- struct{}{}:
	default:
		w.fills.Delete(req.key)
		return
	}
	w.bg.Go(func() {
		defer func() {
			<-w.loads.slots
			w.fills.Delete(req.key)
		}()
		l, err := w.loadWhole(w.bgCtx, req)
		if err != nil {
			w.log.Debug("block not filled", "block", req.key.String(), "err", err)
			return
		}
		defer l.close()
		w.m.fills.Inc()
		// Check now, read back from its file, whatever the checks no
		// longer hold for (pages stored before something else changed
		// the file), so that the open that hands it to the kernel need
		// not: the pages the store wrote itself are trusted as written.
		back := &loaded{b: l.b, file: l.file, tier: l.tier}
		if err := w.verifyBlock(w.bgCtx, back, req, false); err != nil {
			w.log.Debug("filled block failed its check", "block", req.key.String(), "err", err)
		}
	})
}
