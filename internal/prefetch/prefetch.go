// Package prefetch fetches a dataset ahead of the job that reads it. A
// training epoch reads every file once, in an order of its own, one request
// per file per reader: cold, it runs at the UFS's latency times the files
// over the readers. Once a job starts reading a dataset through a mount,
// the prefetcher has the workers load the whole dataset (as `granary load`
// does: the owners fetch their blocks from the UFS in parallel, within the
// dataset's ufs_limits, the bytes never crossing the mount's host), so the
// files the job has not read yet are cached before it asks.
//
// It is bounded three ways. It runs only for a dataset whose size on the UFS
// (times its replicas) fits in the room the cache has left, so that it never
// pushes out what the job is reading; a dataset that does not fit is left
// alone and its status says so. It stops when the job stops: no read of the
// dataset for Idle ends it, and the next read starts it again (blocks cached
// meanwhile cost nothing twice). And a mount that stops stops it.
package prefetch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/granary-cache/granary/internal/client"
	"github.com/granary-cache/granary/internal/config"
	"github.com/granary-cache/granary/internal/load"
	"github.com/granary-cache/granary/internal/wire"
)

// States of a dataset's prefetch.
const (
	StateIdle    = "idle"    // no read yet
	StateWaiting = "waiting" // the dataset's size is still being measured
	StateRunning = "running"
	StateDone    = "done"    // every block cached
	StateStopped = "stopped" // the job stopped reading; the next read resumes
	StateOff     = "off"     // the dataset does not fit in the cache's room
	StateFailed  = "failed"
)

// Status is one dataset's prefetch as a mount reports it.
type Status struct {
	State    string            `json:"state"`
	Reason   string            `json:"reason,omitempty"`
	Runs     int               `json:"runs"`
	Progress wire.LoadProgress `json:"progress"`
}

// Options tune a Prefetcher.
type Options struct {
	// Idle is how long without a read of a dataset ends its prefetch
	// (default 30s).
	Idle time.Duration
	// Headroom is the share of the cache's capacity kept free of a
	// prefetch (default 0.1): tiers evict above their high watermark.
	Headroom float64
	// Retry is how long to wait before looking at a dataset's size again
	// while it is being measured (default 5s).
	Retry time.Duration
	// Dirs limits the prefetch of a dataset (by name) to one directory of
	// it: that of a mount of the directory alone. The room it needs is
	// still measured by the whole dataset.
	Dirs map[string]string
	// Skip, if set, returns the directories of a dataset (by name) left
	// out of its prefetch when it starts: those with a FUSE connection of
	// their own, whose server prefetches them when they are read.
	Skip func(dataset string) []string
	Log  *slog.Logger
}

// Prefetcher prefetches the datasets of one client.
type Prefetcher struct {
	c    *client.Client
	o    Options
	ctx  context.Context
	stop context.CancelFunc
	wg   sync.WaitGroup
	ds   map[string]*dataset // fixed at New: Touch reads it without a lock
}

type dataset struct {
	cfg      config.Dataset
	lastRead atomic.Int64 // unix nanoseconds
	running  atomic.Bool
	loaded   atomic.Int64 // bytes loaded by every run, for the metric

	mu     sync.Mutex
	status Status
}

// New returns a prefetcher of c's datasets. Touch starts it.
func New(c *client.Client, o Options) *Prefetcher {
	if o.Idle <= 0 {
		o.Idle = 30 * time.Second
	}
	if o.Headroom <= 0 {
		o.Headroom = 0.1
	}
	if o.Retry <= 0 {
		o.Retry = 5 * time.Second
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	p := &Prefetcher{c: c, o: o, ds: map[string]*dataset{}}
	p.ctx, p.stop = context.WithCancel(context.Background())
	for _, name := range c.Datasets() {
		cfg, _ := c.Dataset(name)
		d := &dataset{cfg: cfg}
		d.status.State = StateIdle
		p.ds[name] = d
	}
	return p
}

// Touch records a read of the dataset and starts its prefetch if none
// runs. It is cheap: called on every read.
func (p *Prefetcher) Touch(name string) {
	d := p.ds[name]
	if d == nil {
		return
	}
	d.lastRead.Store(time.Now().UnixNano())
	if d.running.Load() || !d.running.CompareAndSwap(false, true) {
		return
	}
	if p.ctx.Err() != nil {
		d.running.Store(false)
		return
	}
	p.wg.Go(func() {
		defer d.running.Store(false)
		p.run(d)
	})
}

// Close stops every prefetch and waits for them.
func (p *Prefetcher) Close() {
	p.stop()
	p.wg.Wait()
}

// Status reports every dataset's prefetch.
func (p *Prefetcher) Status() map[string]Status {
	out := make(map[string]Status, len(p.ds))
	for name, d := range p.ds {
		d.mu.Lock()
		out[name] = d.status
		d.mu.Unlock()
	}
	return out
}

// LoadedBytes is what prefetches loaded into the cache so far.
func (p *Prefetcher) LoadedBytes() int64 {
	var n int64
	for _, d := range p.ds {
		n += d.loaded.Load()
	}
	return n
}

func (d *dataset) set(state, reason string) {
	d.mu.Lock()
	d.status.State, d.status.Reason = state, reason
	d.mu.Unlock()
}

func (d *dataset) state() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.status.State
}

// idleFor is how long since the dataset was last read.
func (d *dataset) idleFor() time.Duration {
	return time.Since(time.Unix(0, d.lastRead.Load()))
}

// run is one prefetch of a dataset, from its first read to done, off or
// stopped.
func (p *Prefetcher) run(d *dataset) {
	switch d.state() {
	case StateDone, StateOff:
		return // decided for this mount; a new mount looks again
	}
	ctx, cancel := context.WithCancel(p.ctx)
	defer cancel()
	// The job stops: no read for Idle ends the prefetch.
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		t := time.NewTicker(min(p.o.Idle/4, time.Second))
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if d.idleFor() > p.o.Idle {
					cancel()
					return
				}
			}
		}
	}()
	defer func() { cancel(); <-stopped }()

	for {
		fits, reason, err := p.fits(ctx, d)
		switch {
		case ctx.Err() != nil:
			p.ended(d, ctx)
			return
		case err != nil:
			d.set(StateWaiting, err.Error())
		case !fits:
			d.set(StateOff, reason)
			p.o.Log.Info("prefetch off", "dataset", d.cfg.Name, "why", reason)
			return
		default:
			p.load(ctx, d, reason)
			return
		}
		select {
		case <-ctx.Done():
		case <-time.After(p.o.Retry):
		}
	}
}

// ended records why a run ended early.
func (p *Prefetcher) ended(d *dataset, ctx context.Context) {
	if p.ctx.Err() != nil {
		d.set(StateStopped, "the mount stopped")
		return
	}
	d.set(StateStopped, fmt.Sprintf("no read of the dataset for %v: the job stopped; the next read resumes", p.o.Idle))
}

// fits says whether the dataset fits in the cache's room: its size on
// the UFS times its replicas, less what is cached of it, within the
// capacity left free of the headroom. An error means it cannot tell yet.
func (p *Prefetcher) fits(ctx context.Context, d *dataset) (bool, string, error) {
	st := p.c.ClusterStatus(ctx)
	var capacity, used int64
	live := 0
	for _, m := range st.Members {
		if m.Status == nil {
			continue
		}
		live++
		for _, t := range m.Status.Tiers {
			capacity += t.Capacity
			used += t.Used
		}
	}
	var ds *client.DatasetStatus
	for i := range st.Datasets {
		if st.Datasets[i].Name == d.cfg.Name {
			ds = &st.Datasets[i]
		}
	}
	switch {
	case live == 0:
		return false, "", errors.New("no worker answered")
	case ds == nil || ds.Usage == nil || !ds.Usage.Complete:
		return false, "", errors.New("the dataset's size on the UFS is still being measured")
	}
	need := ds.Usage.Bytes*int64(max(ds.Replicas, 1)) - ds.CachedBytes
	room := int64(float64(capacity)*(1-p.o.Headroom)) - used
	if need > room {
		return false, fmt.Sprintf("the dataset needs %s more in the cache (%s × %d replicas, %s cached) and the cache has %s of room (%s capacity, %s used, %.0f%% kept free)",
			approx(max(need, 0)), approx(ds.Usage.Bytes), max(ds.Replicas, 1), approx(ds.CachedBytes),
			approx(max(room, 0)), approx(capacity), approx(used), 100*p.o.Headroom), nil
	}
	return true, fmt.Sprintf("%s to cache (%d files), %s of room", approx(max(need, 0)), ds.Usage.Files, approx(room)), nil
}

// load runs the prefetch proper: a load of the whole dataset.
func (p *Prefetcher) load(ctx context.Context, d *dataset, why string) {
	d.mu.Lock()
	d.status.State, d.status.Reason = StateRunning, why
	d.status.Runs++
	d.mu.Unlock()
	p.o.Log.Info("prefetch", "dataset", d.cfg.Name, "why", why)
	var last int64
	target := "/" + d.cfg.Name
	if dir := p.o.Dirs[d.cfg.Name]; dir != "" {
		target += "/" + dir
	}
	var skip []string
	if p.o.Skip != nil {
		skip = p.o.Skip(d.cfg.Name)
	}
	res, err := load.Run(ctx, p.c, load.Options{Targets: []string{target}, Skip: skip, Progress: func(lp wire.LoadProgress) {
		loaded := lp.BytesDone - lp.BytesSkipped
		d.loaded.Add(loaded - last)
		last = loaded
		d.mu.Lock()
		d.status.Progress = lp
		d.mu.Unlock()
	}})
	d.mu.Lock()
	d.status.Progress = res.Progress
	d.mu.Unlock()
	switch {
	case ctx.Err() != nil:
		p.ended(d, ctx)
	case err != nil:
		d.set(StateFailed, err.Error())
		p.o.Log.Warn("prefetch failed", "dataset", d.cfg.Name, "err", err)
	default:
		d.set(StateDone, fmt.Sprintf("%d files, %s cached ahead of the job", res.Progress.Files, approx(res.Progress.BytesDone-res.Progress.BytesSkipped)))
	}
}

// approx writes n bytes for people: to the MiB from 10 MiB, else to the
// KiB.
func approx(n int64) config.Size {
	if n >= 10<<20 {
		return config.Size((n + 1<<19) &^ (1<<20 - 1))
	}
	return config.Size((n + 512) &^ 1023)
}
