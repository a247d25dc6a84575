package bench

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/granary-cache/granary/internal/measure"
	"github.com/granary-cache/granary/internal/ufs"
)

// RunOptions say how to read.
type RunOptions struct {
	Profile string
	Epochs  int
	// Readers is the number of concurrent readers (DataLoader workers).
	Readers int
	// Batch > 0 makes each reader take Batch files at a time and read them
	// together, timing the batch.
	Batch int
	Seed  uint64
	// DropCaches drops the kernel's page cache before every epoch (root).
	DropCaches bool
	// RecordReads is the number of random reads of an epoch of the records
	// profile; 0 reads about the dataset's size.
	RecordReads int
	// Probes see the load behind the targets; any may be nil.
	Probes Probes
	// Progress is told of each read, one call at a time; nil for none.
	Progress func(done, total int64, what string)
}

// Probes read counters before and after each epoch.
type Probes struct {
	// UFS sums the UFS operations of the granary workers.
	UFS func(ctx context.Context) (ufs.Stats, error)
	// MDSRequests reads the CephFS MDS's request counter.
	MDSRequests func(ctx context.Context) (float64, error)
	// GranaryCPU is the CPU time of the granary processes (workers, mount).
	GranaryCPU func() (time.Duration, error)
}

// NamedTarget is a target with the name the report gives it.
type NamedTarget struct {
	Name     string
	Path     string
	Baseline bool
	Target   Target
}

// Run reads every target for opts.Epochs epochs, alternating between them
// epoch by epoch, and reports.
func Run(ctx context.Context, targets []NamedTarget, o RunOptions) (*Report, error) {
	if !slices.Contains(Profiles, o.Profile) {
		return nil, fmt.Errorf("unknown profile %q (profiles: %v)", o.Profile, Profiles)
	}
	if o.Epochs <= 0 {
		return nil, fmt.Errorf("epochs must be at least 1, not %d", o.Epochs)
	}
	if o.Readers <= 0 {
		return nil, fmt.Errorf("readers must be at least 1, not %d", o.Readers)
	}
	if o.Batch < 0 {
		return nil, fmt.Errorf("batch must not be negative, not %d", o.Batch)
	}
	if len(targets) == 0 {
		return nil, errors.New("nothing to read: give a --path")
	}
	if o.DropCaches {
		if err := dropCaches(); err != nil {
			return nil, fmt.Errorf("--drop-caches: %w (it needs root)", err)
		}
	}
	rep := &Report{Profile: o.Profile, Epochs: o.Epochs, Readers: o.Readers, Batch: o.Batch, Seed: o.Seed,
		Started: time.Now().UTC(), PageCache: "kept between epochs: warm epochs may be served by the kernel's page cache",
		WarmUp: "no warm-up: epoch 1 is cold for a cache that starts empty (see its UFS operations), later epochs are warm"}
	if o.DropCaches {
		rep.PageCache = "dropped before every epoch of every target"
	}
	for _, t := range targets {
		rep.Targets = append(rep.Targets, TargetReport{Name: t.Name, Path: t.Path, Baseline: t.Baseline})
	}
	for e := 1; e <= o.Epochs; e++ {
		// Targets take turns, and the turn starts one further each epoch,
		// so that none always runs right after the same other one (its
		// page cache, its CPU left-overs).
		for k := range targets {
			i := (k + e - 1) % len(targets)
			t := targets[i]
			ep, err := runEpoch(ctx, t, e, o, rep)
			if err != nil {
				return rep, fmt.Errorf("%s, epoch %d: %w", t.Name, e, err)
			}
			rep.Targets[i].Epochs = append(rep.Targets[i].Epochs, *ep)
		}
	}
	rep.ratios()
	return rep, nil
}

// item is one read of an epoch.
type item struct {
	name    string
	off, n  int64 // n < 0: the whole file
	sizeHnt int64
}

func runEpoch(ctx context.Context, t NamedTarget, epoch int, o RunOptions, rep *Report) (*Epoch, error) {
	if o.DropCaches {
		if err := dropCaches(); err != nil {
			return nil, err
		}
	}
	before := snapshot(ctx, o.Probes, rep)
	start := time.Now()
	entries, err := t.Target.Walk(ctx)
	if err != nil {
		return nil, fmt.Errorf("walk: %w", err)
	}
	if len(entries) == 0 {
		return nil, fmt.Errorf("%s holds no files: generate a dataset with `granary bench gen`", t.Path)
	}
	walked := time.Since(start)
	var total int64
	for _, e := range entries {
		total += e.Size
	}
	if rep.Files == 0 {
		rep.Files, rep.Bytes = int64(len(entries)), total
	} else if int64(len(entries)) != rep.Files || total != rep.Bytes {
		rep.warn("%s holds %d files (%d bytes), not the %d files (%d bytes) of the first target: their ratios compare different data",
			t.Name, len(entries), total, rep.Files, rep.Bytes)
	}
	items := plan(entries, total, epoch, o)

	var (
		mu        sync.Mutex
		lat, ttfb []time.Duration
		batches   []time.Duration
		bytes     atomic.Int64
		done      atomic.Int64
		errs      []error
	)
	record := func(d, f time.Duration, n int64, err error) {
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			if len(errs) < 10 {
				errs = append(errs, err)
			}
			return
		}
		lat = append(lat, d)
		ttfb = append(ttfb, f)
		bytes.Add(n)
	}
	what := fmt.Sprintf("%s epoch %d/%d", t.Name, epoch, o.Epochs)
	var progressMu sync.Mutex // Progress needs not be safe for concurrent use
	readOne := func(it item, buf *[]byte) {
		s := time.Now()
		n, first, err := t.Target.Read(ctx, it.name, it.off, it.n, buf)
		if err != nil {
			err = fmt.Errorf("read %s: %w", it.name, err)
		}
		record(time.Since(s), first, n, err)
		if o.Progress != nil {
			progressMu.Lock()
			o.Progress(done.Add(1), int64(len(items)), what)
			progressMu.Unlock()
		}
	}
	step := max(o.Batch, 1)
	work := make(chan []item)
	var wg sync.WaitGroup
	for range o.Readers {
		wg.Go(func() {
			bufs := make([][]byte, step)
			for batch := range work {
				if len(batch) == 1 {
					readOne(batch[0], &bufs[0])
					continue
				}
				s := time.Now()
				var bw sync.WaitGroup
				for j, it := range batch {
					bw.Go(func() { readOne(it, &bufs[j]) })
				}
				bw.Wait()
				mu.Lock()
				batches = append(batches, time.Since(s))
				mu.Unlock()
			}
		})
	}
	for i := 0; i < len(items); i += step {
		select {
		case work <- items[i:min(i+step, len(items))]:
		case <-ctx.Done():
		}
	}
	close(work)
	wg.Wait()
	elapsed := time.Since(start)
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("%d reads failed, the first: %w", len(items)-len(lat), errs[0])
	}
	after := snapshot(ctx, o.Probes, rep)
	ep := &Epoch{
		Epoch: epoch, Seconds: elapsed.Seconds(), WalkSeconds: walked.Seconds(), Reads: int64(len(items)), Bytes: bytes.Load(),
		Latency: percentiles(lat), FirstByte: percentiles(ttfb),
		CPU: CPU{Reader: (after.self - before.self).Seconds()},
	}
	ep.MBps = float64(ep.Bytes) / 1e6 / elapsed.Seconds()
	ep.ReadsPerS = float64(ep.Reads) / elapsed.Seconds()
	if len(batches) > 0 {
		p := percentiles(batches)
		ep.BatchLatency = &p
	}
	if before.ufsOK && after.ufsOK {
		d := after.ufs.Sub(before.ufs)
		ep.UFS = &d
	}
	if before.mdsOK && after.mdsOK {
		n := after.mds - before.mds
		ep.MDSRequests = &n
	}
	if before.cpuOK && after.cpuOK {
		s := (after.granary - before.granary).Seconds()
		ep.CPU.Granary = &s
	}
	return ep, nil
}

// plan lists the reads of one epoch: every file once in a new shuffled
// order, or for records random ranges of 4 KiB to 1 MiB.
func plan(entries []Entry, total int64, epoch int, o RunOptions) []item {
	r := rand.New(rand.NewPCG(o.Seed, uint64(epoch)))
	if o.Profile != "records" {
		items := make([]item, len(entries))
		for i, e := range entries {
			items[i] = item{name: e.Name, n: -1, sizeHnt: e.Size}
		}
		r.Shuffle(len(items), func(i, j int) { items[i], items[j] = items[j], items[i] })
		return items
	}
	count := o.RecordReads
	if count <= 0 {
		count = int(max(total/(256<<10), 1)) // the mean read is about 256 KiB
	}
	var sized []Entry
	for _, e := range entries {
		if e.Size > 0 {
			sized = append(sized, e)
		}
	}
	items := make([]item, 0, count)
	for range count {
		if len(sized) == 0 {
			break
		}
		e := sized[r.IntN(len(sized))]
		n := min(int64(4<<10)<<r.IntN(9), e.Size) // 4 KiB, 8 KiB, ... 1 MiB
		items = append(items, item{name: e.Name, off: r.Int64N(e.Size - n + 1), n: n, sizeHnt: e.Size})
	}
	return items
}

type probeValues struct {
	ufs           ufs.Stats
	mds           float64
	granary, self time.Duration
	ufsOK, mdsOK  bool
	cpuOK         bool
}

// snapshot reads every probe; one that fails is reported as a warning and
// its measure left out of the epoch.
func snapshot(ctx context.Context, p Probes, rep *Report) probeValues {
	var v probeValues
	if p.UFS != nil {
		s, err := p.UFS(ctx)
		v.ufs, v.ufsOK = s, err == nil
		if err != nil {
			rep.warn("the workers' UFS counters could not be read, UFS columns left out: %v", err)
		}
	}
	if p.MDSRequests != nil {
		n, err := p.MDSRequests(ctx)
		v.mds, v.mdsOK = n, err == nil
		if err != nil {
			rep.warn("the MDS counters could not be read: %v", err)
		}
	}
	if p.GranaryCPU != nil {
		d, err := p.GranaryCPU()
		v.granary, v.cpuOK = d, err == nil
		if err != nil {
			rep.warn("granary CPU not measured: %v", err)
		}
	}
	v.self = measure.ProcessCPU()
	return v
}

func dropCaches() error {
	syscall.Sync()
	return os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0)
}
