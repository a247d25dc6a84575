package worker

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/granary-cache/granary/internal/dataset"
	"github.com/granary-cache/granary/internal/placement"
	"github.com/granary-cache/granary/internal/ufs"
	"github.com/granary-cache/granary/internal/wire"
)

// Each dataset's size and file count on the UFS are measured once, in the
// background, by the worker that owns the dataset's root listing, and shown
// as they grow (`granary status`, a Dataset's status on Kubernetes): never
// stuck on "calculating". The walk lists each directory through the worker
// that owns its metadata, as a reader would, so it costs the UFS one listing
// per directory, once, and leaves the listings cached where readers will
// look for them. Since those listings are then kept (metadata_sync), the
// walk starts when someone first asks for the figures (a status request),
// not when the worker starts: a worker that nobody asks lists nothing.

// scan is one dataset's measure.
type scan struct {
	wanted             atomic.Bool // someone asked for the figures
	files, bytes, dirs atomic.Int64
	started            atomic.Pointer[time.Time]
	finished           atomic.Pointer[time.Time]
	err                atomic.Pointer[string]
}

func (s *scan) status() wire.UFSUsage {
	u := wire.UFSUsage{Files: s.files.Load(), Bytes: s.bytes.Load(), Dirs: s.dirs.Load()}
	if t := s.started.Load(); t != nil {
		u.Started = *t
	}
	if t := s.finished.Load(); t != nil {
		u.Complete, u.Finished = true, *t
	}
	if e := s.err.Load(); e != nil {
		u.Error = *e
	}
	return u
}

// scanParallel bounds the directories a scan lists at once: it is
// background work.
const scanParallel = 4

// scanLoop measures the datasets whose root this worker owns, retrying a
// failed walk after a minute, until ctx ends.
func (w *Worker) scanLoop(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		for _, name := range w.datasets.Names() {
			s := w.scans[name]
			if !s.wanted.Load() || s.finished.Load() != nil || !w.ownsMeta(name, "") {
				continue
			}
			if st := s.started.Load(); st != nil && s.err.Load() == nil {
				continue // running
			}
			if st := s.started.Load(); st != nil && time.Since(*st) < time.Minute {
				continue // failed recently
			}
			d, _ := w.datasets.Get(name)
			now := time.Now()
			s.started.Store(&now)
			s.err.Store(nil)
			w.bg.Go(func() { w.scan(ctx, d, s) })
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// ownsMeta reports whether this worker is the first owner of a directory's
// metadata.
func (w *Worker) ownsMeta(ds, dir string) bool {
	m, ok := w.view().Table().Owner(wire.MetaKey(ds, dir))
	return ok && m.ID == w.ID()
}

func (w *Worker) scan(ctx context.Context, d *dataset.Dataset, s *scan) {
	now := time.Now()
	s.files.Store(0)
	s.bytes.Store(0)
	s.dirs.Store(0)
	sem := make(chan struct{}, scanParallel)
	var wg sync.WaitGroup
	var failed atomic.Pointer[error]
	var walk func(dir string)
	walk = func(dir string) {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			return
		}
		entries, err := w.listAnywhere(ctx, d, dir)
		<-sem
		if err != nil {
			err = fmt.Errorf("list /%s/%s: %w", d.Name(), dir, err)
			failed.CompareAndSwap(nil, &err)
			return
		}
		s.dirs.Add(1)
		for _, e := range entries {
			if e.IsDir() {
				p := e.Name
				if dir != "" {
					p = dir + "/" + e.Name
				}
				wg.Go(func() { walk(p) })
				continue
			}
			s.files.Add(1)
			s.bytes.Add(e.Size)
		}
	}
	wg.Go(func() { walk("") })
	wg.Wait()
	switch {
	case ctx.Err() != nil:
		msg := "stopped"
		s.err.Store(&msg)
	case failed.Load() != nil:
		msg := (*failed.Load()).Error()
		s.err.Store(&msg)
		w.log.Warn("measuring the dataset failed; retrying in a minute", "dataset", d.Name(), "err", msg)
	default:
		end := time.Now()
		s.finished.Store(&end)
		w.log.Info("dataset measured", "dataset", d.Name(), "files", s.files.Load(), "bytes", s.bytes.Load(),
			"directories", s.dirs.Load(), "took", end.Sub(now).Round(time.Millisecond))
	}
}

// listAnywhere lists a directory from this worker's metadata cache if it
// owns it, else through its owner.
func (w *Worker) listAnywhere(ctx context.Context, d *dataset.Dataset, dir string) ([]ufs.FileInfo, error) {
	m, ok := w.view().Table().Owner(wire.MetaKey(d.Name(), dir))
	if ok && m.ID != w.ID() && !w.reach.Down(m.ID) {
		entries, err := w.listThrough(ctx, m, d.Name(), dir)
		if err == nil || !errors.Is(err, wire.ErrWorker) {
			return entries, err
		}
		if !wire.Answered(err) {
			w.reach.MarkDown(m.ID, m.Addr, err)
		}
	}
	l, err := w.metas[d.Name()].List(ctx, d.FS, dir)
	if err != nil {
		return nil, err
	}
	out := make([]ufs.FileInfo, 0, l.Len())
	for fi := range l.All() {
		out = append(out, fi)
	}
	return out, nil
}

// listThrough asks a peer for a directory's listing.
func (w *Worker) listThrough(ctx context.Context, m placement.Member, ds, dir string) ([]ufs.FileInfo, error) {
	gctx, done := w.reach.Guard(ctx, m.ID, m.Addr)
	defer done()
	q := url.Values{"ds": {ds}, "path": {dir}}
	req, err := http.NewRequestWithContext(gctx, http.MethodGet, w.peerURL(m.Addr, wire.PathList)+"?"+q.Encode(), nil)
	if err != nil {
		return nil, err
	}
	if w.token != "" {
		req.Header.Set("Authorization", "Bearer "+w.token)
	}
	resp, err := w.peerHTTP.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("%w: %s: %v", wire.ErrWorker, m.ID, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, wire.ReadError("list", ds, dir, resp)
	}
	return wire.ReadListing(resp.Body)
}
