package worker

import (
	"bufio"
	"encoding/json"
	"net/http"

	"github.com/granary-cache/granary/internal/wire"
)

// handleStat answers from the dataset's metadata cache: from the parent's
// listing when it is cached, so a walked tree costs no per-file UFS stat.
func (w *Worker) handleStat(rw http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	ds, p, err := w.dataset(q.Get("ds"), q.Get("path"))
	if err != nil {
		wire.WriteError(rw, err)
		return
	}
	fi, err := w.metas[ds.Name()].Stat(r.Context(), ds.FS, p)
	if err != nil {
		wire.WriteError(rw, err)
		return
	}
	rw.Header().Set("Content-Type", "application/json")
	json.NewEncoder(rw).Encode(wire.FromInfo(fi))
}

// handleList streams a directory's cached listing, one JSON entry per line.
func (w *Worker) handleList(rw http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	ds, p, err := w.dataset(q.Get("ds"), q.Get("path"))
	if err != nil {
		wire.WriteError(rw, err)
		return
	}
	d, err := w.metas[ds.Name()].List(r.Context(), ds.FS, p)
	if err != nil {
		wire.WriteError(rw, err)
		return
	}
	rw.Header().Set("Content-Type", "application/x-ndjson")
	bw := bufio.NewWriterSize(rw, 64<<10)
	enc := json.NewEncoder(bw)
	for fi := range d.All() {
		if enc.Encode(wire.FromInfo(fi)) != nil {
			return // the client went away
		}
	}
	bw.Flush()
}

// handleRefresh forgets cached metadata of a path and below; the next
// request fetches it from the UFS again. Cached blocks need no refresh:
// they are named by version, so a changed file gets new ones.
func (w *Worker) handleRefresh(rw http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	ds, p, err := w.dataset(q.Get("ds"), q.Get("path"))
	if err != nil {
		wire.WriteError(rw, err)
		return
	}
	w.metas[ds.Name()].Invalidate(p)
	w.log.Info("metadata refreshed", "dataset", ds.Name(), "path", "/"+p)
	rw.WriteHeader(http.StatusNoContent)
}
