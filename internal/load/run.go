package load

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/granary-cache/granary/internal/block"
	"github.com/granary-cache/granary/internal/client"
	"github.com/granary-cache/granary/internal/config"
	"github.com/granary-cache/granary/internal/placement"
	"github.com/granary-cache/granary/internal/wire"
)

// Options say what to load and how.
type Options struct {
	// Targets are "/<dataset>/<path-or-glob>", all of one dataset.
	Targets []string
	// Replicas is how many copies to load (default: the dataset's).
	Replicas int
	// MetadataOnly warms listings and attributes only.
	MetadataOnly bool
	// Skip are directories of the dataset (paths inside it, "ckpt") that
	// are neither listed nor loaded, whatever the targets match.
	Skip []string
	// ListParallel is how many directories are listed at once (default 16).
	ListParallel int
	// Batch is how many blocks go to a worker in one request (default 256).
	Batch int
	// Progress, if set, is called every Every (default 200ms) while the load
	// runs, and once at its end.
	Progress func(wire.LoadProgress)
	Every    time.Duration
}

// Failure is a block that could not be loaded.
type Failure struct {
	Worker string `json:"worker"`
	Path   string `json:"path"`
	Index  int64  `json:"block"`
	Error  string `json:"error"`
}

// Result is how a load ended.
type Result struct {
	ID       string            `json:"id"`
	Dataset  string            `json:"dataset"`
	Progress wire.LoadProgress `json:"progress"`
	Dirs     int               `json:"directories_listed"`
	// Unreachable lists the workers that did not answer at the start: their
	// share went to the next owners.
	Unreachable map[string]string `json:"unreachable,omitempty"`
	// Failures holds the first maxFailures failures; Progress.Failed counts
	// them all.
	Failures []Failure `json:"failures,omitempty"`
	Elapsed  float64   `json:"elapsed_seconds"`
}

const maxFailures = 100

// ErrFailed is returned when some blocks could not be loaded.
var ErrFailed = errors.New("some blocks were not loaded")

// run is one load in progress.
type run struct {
	c      *client.Client
	o      Options
	hdr    wire.LoadHeader
	start  time.Time
	files  map[string]*fileState
	p      progress
	failMu sync.Mutex
	fails  []Failure
}

type fileState struct {
	left   atomic.Int64 // block copies not yet reported
	cached atomic.Bool  // every copy reported so far was cached already
	failed atomic.Bool
	size   int64
}

type progress struct {
	files, bytes                                             atomic.Int64 // set once planned
	filesDone, bytesDone, filesSkipped, bytesSkipped, failed atomic.Int64
	state                                                    atomic.Pointer[string]
}

// Run loads what o names through the workers c reaches. It returns when
// the load is over: done, failed (ErrFailed, with the failures in the
// result) or cancelled with ctx — which cancels every worker's part.
func Run(ctx context.Context, c *client.Client, o Options) (Result, error) {
	if o.ListParallel <= 0 {
		o.ListParallel = 16
	}
	if o.Batch <= 0 {
		o.Batch = 256
	}
	if o.Every <= 0 {
		o.Every = 200 * time.Millisecond
	}
	ds, patterns, err := parseTargets(c, o.Targets)
	if err != nil {
		return Result{}, err
	}
	if o.Replicas <= 0 {
		o.Replicas = ds.Replicas
	}
	host := c.Host()
	r := &run{c: c, o: o, start: time.Now(), files: map[string]*fileState{},
		hdr: wire.LoadHeader{ID: newID(), Dataset: ds.Name, Paths: o.Targets, Replicas: o.Replicas, Client: host, Started: time.Now().UTC()}}
	res := Result{ID: r.hdr.ID, Dataset: ds.Name}
	r.setState(wire.LoadListing)
	stop := r.report()
	defer stop()

	if bad := c.Probe(ctx); len(bad) > 0 {
		res.Unreachable = map[string]string{}
		for id, err := range bad {
			res.Unreachable[id] = err.Error()
		}
	}
	files, dirs, err := expand(ctx, c, ds.Name, patterns, o.ListParallel, o.Skip)
	res.Dirs = dirs
	if err != nil {
		r.setState(stateOf(ctx, err))
		return r.result(res), err
	}
	bs := int64(ds.BlockSize)
	if bs <= 0 {
		bs = c.Layout().BlockSize
	}
	shares := map[string]*share{}
	var nfiles, nbytes int64
	for _, f := range files {
		nfiles++
		fs := &fileState{size: f.info.Size}
		fs.cached.Store(true)
		r.files[f.path] = fs
		bs := block.SizeFor(f.info.Size, bs, int64(ds.WholeFile))
		nblocks := (f.info.Size + bs - 1) / bs
		if o.MetadataOnly || nblocks == 0 {
			r.p.filesDone.Add(1)
			r.p.filesSkipped.Add(1)
			continue
		}
		for idx := range nblocks {
			owners := c.Owners(block.PlacementKey(ds.Name, f.path, idx), o.Replicas)
			if len(owners) == 0 {
				return r.result(res), errors.New("no live workers to load to")
			}
			for _, m := range owners {
				sh := shares[m.ID]
				if sh == nil {
					sh = &share{m: m}
					shares[m.ID] = sh
				}
				sh.items = append(sh.items, wire.LoadItem{Path: f.path, Version: f.info.Version, Size: f.info.Size, BlockSize: bs, Index: idx})
				fs.left.Add(1)
				nbytes += min(bs, f.info.Size-idx*bs)
			}
		}
	}
	r.p.files.Store(nfiles)
	r.p.bytes.Store(nbytes)
	r.setState(wire.LoadLoading)
	var wg sync.WaitGroup
	for _, sh := range shares {
		wg.Go(func() { r.send(ctx, sh) })
	}
	wg.Wait()
	state := wire.LoadDone
	switch {
	case ctx.Err() != nil:
		state = wire.LoadCanceled
	case r.p.failed.Load() > 0:
		state = wire.LoadFailed
	}
	r.setState(state)
	res = r.result(res)
	r.end(shares, res.Progress)
	switch state {
	case wire.LoadCanceled:
		return res, ctx.Err()
	case wire.LoadFailed:
		return res, fmt.Errorf("%w: %d failed", ErrFailed, res.Progress.Failed)
	}
	return res, nil
}

func stateOf(ctx context.Context, err error) string {
	if ctx.Err() != nil {
		return wire.LoadCanceled
	}
	return wire.LoadFailed
}

// parseTargets checks that the targets name one configured dataset.
func parseTargets(c *client.Client, targets []string) (ds config.Dataset, patterns [][]string, err error) {
	if len(targets) == 0 {
		return ds, nil, errors.New("nothing to load: give /<dataset>/<path-or-glob>")
	}
	name := ""
	for _, t := range targets {
		d, segs, err := splitTarget(t)
		if err != nil {
			return ds, nil, err
		}
		if name != "" && d != name {
			return ds, nil, fmt.Errorf("targets name datasets %s and %s: run one load per dataset", name, d)
		}
		name = d
		patterns = append(patterns, segs)
	}
	d, ok := c.Dataset(name)
	if !ok {
		return ds, nil, fmt.Errorf("unknown dataset %q (configured: %v)", name, c.Datasets())
	}
	return d, patterns, nil
}

func newID() string {
	var b [3]byte
	rand.Read(b[:])
	return time.Now().UTC().Format("20060102-150405") + "-" + hex.EncodeToString(b[:])
}

func (r *run) setState(s string) { r.p.state.Store(&s) }

// snapshot is the progress as it stands.
func (r *run) snapshot() wire.LoadProgress {
	p := wire.LoadProgress{
		Files: r.p.files.Load(), Bytes: r.p.bytes.Load(),
		FilesDone: r.p.filesDone.Load(), BytesDone: r.p.bytesDone.Load(),
		FilesSkipped: r.p.filesSkipped.Load(), BytesSkipped: r.p.bytesSkipped.Load(),
		Failed: r.p.failed.Load(), State: *r.p.state.Load(), Updated: time.Now().UTC(),
	}
	if secs := time.Since(r.start).Seconds(); secs > 0 {
		p.Rate = float64(p.BytesDone-p.BytesSkipped) / secs
	}
	return p
}

// report calls the progress callback until stopped, then once more.
func (r *run) report() (stop func()) {
	if r.o.Progress == nil {
		return func() {}
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(r.o.Every)
		defer t.Stop()
		for {
			select {
			case <-done:
				r.o.Progress(r.snapshot())
				return
			case <-t.C:
				r.o.Progress(r.snapshot())
			}
		}
	})
	return func() { close(done); wg.Wait() }
}

func (r *run) result(res Result) Result {
	res.Progress = r.snapshot()
	res.Elapsed = time.Since(r.start).Seconds()
	r.failMu.Lock()
	res.Failures = slices.Clone(r.fails)
	r.failMu.Unlock()
	return res
}

// share is one worker's part of the load.
type share struct {
	m     placement.Member
	items []wire.LoadItem
}

// batchesInFlight per worker: one is being served while the next is sent.
const batchesInFlight = 2

// send hands a worker its share, batch by batch.
func (r *run) send(ctx context.Context, sh *share) {
	batches := make(chan []wire.LoadItem)
	var wg sync.WaitGroup
	for range batchesInFlight {
		wg.Go(func() {
			for b := range batches {
				r.batch(ctx, sh.m, b)
			}
		})
	}
	for i := 0; i < len(sh.items); i += r.o.Batch {
		b := sh.items[i:min(i+r.o.Batch, len(sh.items))]
		if ctx.Err() != nil {
			break
		}
		batches <- b
	}
	close(batches)
	wg.Wait()
}

// batch sends one batch and counts what the worker says of each block;
// blocks it never reported (it died, the connection broke) fail.
func (r *run) batch(ctx context.Context, m placement.Member, items []wire.LoadItem) {
	var body bytes.Buffer
	enc := json.NewEncoder(&body)
	hdr := r.hdr
	hdr.Progress = r.snapshot()
	enc.Encode(hdr)
	for _, it := range items {
		enc.Encode(it)
	}
	pending := make(map[blockID]bool, len(items))
	for _, it := range items {
		pending[blockID{it.Path, it.Index}] = true
	}
	err := r.stream(ctx, m, &body, func(ev wire.LoadEvent) {
		id := blockID{ev.Path, ev.Index}
		if !pending[id] {
			return // not ours, or reported twice
		}
		delete(pending, id)
		r.count(m.ID, ev)
	})
	if ctx.Err() != nil {
		return // cancelled: nothing failed
	}
	if err == nil && len(pending) > 0 {
		err = errors.New("the worker ended the batch early")
	}
	for id := range pending {
		r.count(m.ID, wire.LoadEvent{Path: id.path, Index: id.idx, Error: fmt.Sprintf("worker %s: %v", m.ID, err)})
	}
}

type blockID struct {
	path string
	idx  int64
}

// stream posts a batch and decodes the events of the answer.
func (r *run) stream(ctx context.Context, m placement.Member, body io.Reader, fn func(wire.LoadEvent)) error {
	resp, err := r.c.Do(ctx, m, http.MethodPost, wire.PathLoad, url.Values{}, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	dec := json.NewDecoder(bufio.NewReaderSize(resp.Body, 64<<10))
	for {
		var ev wire.LoadEvent
		if err := dec.Decode(&ev); err == io.EOF {
			return nil
		} else if err != nil {
			return err
		}
		fn(ev)
	}
}

// count records what became of one block copy.
func (r *run) count(worker string, ev wire.LoadEvent) {
	fs := r.files[ev.Path]
	if fs == nil {
		return
	}
	switch {
	case ev.Error != "":
		r.p.failed.Add(1)
		fs.failed.Store(true)
		fs.cached.Store(false)
		r.failMu.Lock()
		if len(r.fails) < maxFailures {
			r.fails = append(r.fails, Failure{Worker: worker, Path: ev.Path, Index: ev.Index, Error: ev.Error})
		}
		r.failMu.Unlock()
	case ev.Cached:
		r.p.bytesDone.Add(ev.Bytes)
		r.p.bytesSkipped.Add(ev.Bytes)
	default:
		r.p.bytesDone.Add(ev.Bytes)
		fs.cached.Store(false)
	}
	if fs.left.Add(-1) == 0 && !fs.failed.Load() {
		r.p.filesDone.Add(1)
		if fs.cached.Load() {
			r.p.filesSkipped.Add(1)
		}
	}
}

// end tells every worker that took part how the load ended, for `load
// status`; a worker that does not answer is left out.
func (r *run) end(shares map[string]*share, p wire.LoadProgress) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	body, _ := json.Marshal(p)
	var wg sync.WaitGroup
	for _, sh := range shares {
		wg.Go(func() {
			resp, err := r.c.Do(ctx, sh.m, http.MethodPost, wire.PathLoadEnd, url.Values{"id": {r.hdr.ID}}, bytes.NewReader(body))
			if err == nil {
				resp.Body.Close()
			}
		})
	}
	wg.Wait()
}
