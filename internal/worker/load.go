package worker

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/granary-cache/granary/internal/ufs"
	"github.com/granary-cache/granary/internal/wire"
)

// A worker loads its share of a `granary load` (see wire/load.go): it
// fetches each block it is sent from the UFS, through the same page engine
// as reads — single-flight, the dataset's UFS limits, checksums — and says
// when each is done. Blocks already cached cost nothing and are reported as
// such, which is what makes a second run resume where the first stopped.

const (
	// loadParallelism bounds the blocks a worker loads at once, every load
	// together, so that loads leave room for readers; the dataset's UFS
	// limits bound what reaches the UFS.
	loadParallelism = 32
	// maxLoadBatch bounds the blocks of one request.
	maxLoadBatch = 100_000
	// keptLoads is how many loads a worker remembers for `load status`.
	keptLoads = 50
)

// loadRegistry is what a worker remembers of the loads it took part in.
type loadRegistry struct {
	mu    sync.Mutex
	recs  map[string]*wire.LoadRecord
	order []string // oldest first
	slots chan struct{}
}

func newLoadRegistry() *loadRegistry {
	return &loadRegistry{recs: map[string]*wire.LoadRecord{}, slots: make(chan struct{}, loadParallelism)}
}

// begin notes a batch of load h; end must follow.
func (lr *loadRegistry) begin(worker string, h wire.LoadHeader) {
	lr.mu.Lock()
	defer lr.mu.Unlock()
	rec := lr.recs[h.ID]
	if rec == nil {
		rec = &wire.LoadRecord{Worker: worker}
		lr.recs[h.ID] = rec
		lr.order = append(lr.order, h.ID)
		for len(lr.order) > keptLoads {
			delete(lr.recs, lr.order[0])
			lr.order = lr.order[1:]
		}
	}
	if h.Progress.Updated.After(rec.Progress.Updated) || rec.ID == "" {
		rec.LoadHeader = h
	}
	rec.Active++
	rec.LastBatch = time.Now()
}

func (lr *loadRegistry) count(id string, ev wire.LoadEvent) {
	lr.mu.Lock()
	defer lr.mu.Unlock()
	rec := lr.recs[id]
	if rec == nil {
		return
	}
	switch {
	case ev.Error != "":
		rec.FailedBlocks++
	case ev.Cached:
		rec.CachedBlocks++
	default:
		rec.Blocks++
		rec.BlockBytes += ev.Bytes
	}
}

func (lr *loadRegistry) end(id string) {
	lr.mu.Lock()
	defer lr.mu.Unlock()
	if rec := lr.recs[id]; rec != nil {
		rec.Active--
		rec.LastBatch = time.Now()
	}
}

// finish records how the client says a load ended.
func (lr *loadRegistry) finish(id string, p wire.LoadProgress) bool {
	lr.mu.Lock()
	defer lr.mu.Unlock()
	rec := lr.recs[id]
	if rec == nil {
		return false
	}
	rec.Progress, rec.Ended = p, true
	return true
}

// list returns the records, newest first.
func (lr *loadRegistry) list() []wire.LoadRecord {
	lr.mu.Lock()
	defer lr.mu.Unlock()
	out := make([]wire.LoadRecord, 0, len(lr.order))
	for _, id := range slices.Backward(lr.order) {
		out = append(out, *lr.recs[id])
	}
	return out
}

// handleLoad loads a batch of blocks and streams what became of each.
func (w *Worker) handleLoad(rw http.ResponseWriter, r *http.Request) {
	dec := json.NewDecoder(bufio.NewReaderSize(r.Body, 64<<10))
	var h wire.LoadHeader
	if err := dec.Decode(&h); err != nil || h.ID == "" {
		wire.WriteError(rw, ufs.NewError("load", "", ufs.ClassInvalid, fmt.Errorf("malformed load header: %v", err)))
		return
	}
	if _, ok := w.datasets.Get(h.Dataset); !ok {
		wire.WriteError(rw, ufs.NewError("load", "", ufs.ClassInvalid, fmt.Errorf("dataset %q is not served by worker %s", h.Dataset, w.ID())))
		return
	}
	var items []wire.LoadItem
	for {
		var it wire.LoadItem
		err := dec.Decode(&it)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil || len(items) == maxLoadBatch {
			wire.WriteError(rw, ufs.NewError("load", "", ufs.ClassInvalid, fmt.Errorf("malformed load batch (item %d): %v", len(items), err)))
			return
		}
		items = append(items, it)
	}
	w.loads.begin(w.ID(), h)
	defer w.loads.end(h.ID)

	rw.Header().Set("Content-Type", "application/x-ndjson")
	rw.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(rw)
	rc.Flush()
	events := make(chan wire.LoadEvent)
	var wg sync.WaitGroup
	ctx := r.Context()
	wg.Go(func() {
		for _, it := range items {
			select {
			case w.loads.slots <- struct{}{}:
			case <-ctx.Done():
				return
			}
			if ctx.Err() != nil { // both were ready: the cancel wins
				<-w.loads.slots
				return
			}
			wg.Go(func() {
				defer func() { <-w.loads.slots }()
				ev := w.loadBlock(r, h.Dataset, it)
				select {
				case events <- ev:
				case <-ctx.Done():
				}
			})
		}
	})
	go func() { wg.Wait(); close(events) }()
	enc := json.NewEncoder(rw)
	for ev := range events {
		w.loads.count(h.ID, ev)
		if enc.Encode(ev) != nil {
			continue // the client went away: ctx ends the rest
		}
		rc.Flush()
	}
}

// loadBlock makes one block cached and complete on this worker.
func (w *Worker) loadBlock(r *http.Request, ds string, it wire.LoadItem) wire.LoadEvent {
	ev := wire.LoadEvent{Path: it.Path, Index: it.Index}
	fail := func(err error) wire.LoadEvent {
		ev.Error, ev.Class = err.Error(), ufs.ClassOf(err).String()
		return ev
	}
	req, err := w.blockRequest(it.Ref(ds))
	if err != nil {
		return fail(err)
	}
	ev.Bytes = req.blen
	if b := w.store.Lookup(req.key); b != nil && w.store.Complete(b) {
		w.store.Own(b) // a near copy of a block this worker now owns
		ev.Cached = true
		return ev
	}
	l, err := w.loadWhole(r.Context(), req)
	if err != nil {
		return fail(err)
	}
	l.close()
	return ev
}

// loadWhole caches all of a block as a load does (`granary load`, the
// mount's prefetch, a fill): after the reads of jobs (priority.go), and
// into a tier or not at all.
func (w *Worker) loadWhole(ctx context.Context, req blockReq) (*loaded, error) {
	end, err := w.prio.background(ctx, req.ds.Name())
	if err != nil {
		return nil, ufs.NewError("load", req.key.Path, ufs.ClassCanceled, err)
	}
	defer end()
	req.first, req.last, req.background, req.wantsFile = 0, w.layout.Pages(req.blen)-1, true, true
	l, err := w.load(ctx, req)
	if err != nil {
		return nil, err
	}
	if l.file == nil || len(l.mem) > 0 {
		l.close()
		return nil, fmt.Errorf("no cache space for it on worker %s", w.ID())
	}
	return l, nil
}

// handleLoads lists the loads this worker took part in, newest first.
func (w *Worker) handleLoads(rw http.ResponseWriter, _ *http.Request) {
	rw.Header().Set("Content-Type", "application/json")
	json.NewEncoder(rw).Encode(w.loads.list())
}

// handleLoadEnd records how a load ended, as its client says.
func (w *Worker) handleLoadEnd(rw http.ResponseWriter, r *http.Request) {
	var p wire.LoadProgress
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&p); err != nil {
		wire.WriteError(rw, ufs.NewError("load", "", ufs.ClassInvalid, fmt.Errorf("malformed load progress: %v", err)))
		return
	}
	if !w.loads.finish(r.URL.Query().Get("id"), p) {
		wire.WriteError(rw, ufs.NewError("load", "", ufs.ClassNotExist, fmt.Errorf("no load %q on worker %s", r.URL.Query().Get("id"), w.ID())))
		return
	}
	rw.WriteHeader(http.StatusNoContent)
}

// handleBlocks lists the blocks this worker holds of a dataset.
func (w *Worker) handleBlocks(rw http.ResponseWriter, r *http.Request) {
	ds := r.URL.Query().Get("ds")
	var out []wire.CachedBlock
	for _, b := range w.store.Blocks(ds) {
		out = append(out, wire.CachedBlock{Path: b.Key.Path, Version: b.Key.Version, Index: b.Key.Index, BlockSize: b.Key.BlockSize,
			Tier: b.Tier, Near: b.Near, Complete: b.Complete, Pages: b.Pages})
	}
	rw.Header().Set("Content-Type", "application/json")
	json.NewEncoder(rw).Encode(out)
}
