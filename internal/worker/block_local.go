package worker

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	"github.com/granary-cache/granary/internal/ufs"
	"github.com/granary-cache/granary/internal/wire"
)

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

// parseBlockRequest reads and checks the block a request names, answering
// the error itself when there is one.
func (w *Worker) parseBlockRequest(rw http.ResponseWriter, r *http.Request) (blockReq, bool) {
	ref, err := wire.ParseRef(r.URL.Query())
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
