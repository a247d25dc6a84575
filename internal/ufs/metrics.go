package ufs

import (
	"context"
	"errors"
	"io"
	"iter"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Operation kinds, as counted and labelled.
const (
	OpStat = "stat"
	OpList = "list" // one per listing page, i.e. per request to the UFS
	OpRead = "read" // one per ranged read
)

// Metrics are the Prometheus series of UFS traffic, shared by every
// instrumented dataset of a process and told apart by the dataset label.
type Metrics struct {
	ops     *prometheus.CounterVec
	errs    *prometheus.CounterVec
	bytes   *prometheus.CounterVec
	latency *prometheus.HistogramVec
}

// NewMetrics creates the UFS series and registers them with reg (if not nil).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		ops: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "granary_ufs_operations_total",
			Help: "Requests made to the under file system, by dataset and kind (stat, list page, read).",
		}, []string{"dataset", "op"}),
		errs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "granary_ufs_errors_total",
			Help: "Failed under file system requests, by dataset, kind and error class.",
		}, []string{"dataset", "op", "class"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "granary_ufs_read_bytes_total",
			Help: "Bytes read from the under file system, by dataset.",
		}, []string{"dataset"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "granary_ufs_operation_duration_seconds",
			Help:    "Time until the under file system answered (first byte for reads), by dataset and kind.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10),
		}, []string{"dataset", "op"}),
	}
	if reg != nil {
		reg.MustRegister(m.ops, m.errs, m.bytes, m.latency)
	}
	return m
}

// Stats is a snapshot of what one instrumented FS asked of its UFS.
type Stats struct {
	Stat      int64 `json:"stat"`
	List      int64 `json:"list"` // listing pages
	Read      int64 `json:"read"`
	BytesRead int64 `json:"bytes_read"`
	Errors    int64 `json:"errors"`
}

// Ops is the number of requests of every kind.
func (s Stats) Ops() int64 { return s.Stat + s.List + s.Read }

// Add returns the sum of s and o.
func (s Stats) Add(o Stats) Stats {
	return Stats{Stat: s.Stat + o.Stat, List: s.List + o.List, Read: s.Read + o.Read,
		BytesRead: s.BytesRead + o.BytesRead, Errors: s.Errors + o.Errors}
}

// Sub returns what s counts beyond an earlier snapshot.
func (s Stats) Sub(earlier Stats) Stats {
	return Stats{Stat: s.Stat - earlier.Stat, List: s.List - earlier.List, Read: s.Read - earlier.Read,
		BytesRead: s.BytesRead - earlier.BytesRead, Errors: s.Errors - earlier.Errors}
}

// Instrumented wraps an FS and counts every request it passes on.
type Instrumented struct {
	fs         FS
	dataset    string
	m          *Metrics
	bytesTotal prometheus.Counter // resolved once: it is hit on every Read

	stat, list, read, bytes, errs atomic.Int64
}

// Instrument wraps fs so that its traffic is counted under dataset. A nil m
// keeps only the in-process Stats.
func Instrument(fs FS, dataset string, m *Metrics) *Instrumented {
	if m != nil {
		// Create the series now so that a scrape shows zeros, not gaps.
		for _, op := range []string{OpStat, OpList, OpRead} {
			m.ops.WithLabelValues(dataset, op)
			for _, c := range Classes() {
				m.errs.WithLabelValues(dataset, op, c.String())
			}
		}
	}
	i := &Instrumented{fs: fs, dataset: dataset, m: m}
	if m != nil {
		i.bytesTotal = m.bytes.WithLabelValues(dataset)
	}
	return i
}

// Stats returns the counts so far.
func (i *Instrumented) Stats() Stats {
	return Stats{Stat: i.stat.Load(), List: i.list.Load(), Read: i.read.Load(), BytesRead: i.bytes.Load(), Errors: i.errs.Load()}
}

func (i *Instrumented) done(op string, counter *atomic.Int64, start time.Time, err error) {
	counter.Add(1)
	if err != nil {
		i.errs.Add(1)
		i.name(err)
	}
	if i.m == nil {
		return
	}
	i.m.ops.WithLabelValues(i.dataset, op).Inc()
	i.m.latency.WithLabelValues(i.dataset, op).Observe(time.Since(start).Seconds())
	if err != nil {
		i.m.errs.WithLabelValues(i.dataset, op, ClassOf(err).String()).Inc()
	}
}

// name records the dataset in a backend's error, so that its message shows
// the namespace path a user knows ("/imagenet/train/x.jpg").
func (i *Instrumented) name(err error) {
	var e *Error
	if errors.As(err, &e) && e.Dataset == "" {
		e.Dataset = i.dataset
	}
}

// Stat implements FS.
func (i *Instrumented) Stat(ctx context.Context, name string) (FileInfo, error) {
	start := time.Now()
	fi, err := i.fs.Stat(ctx, name)
	i.done(OpStat, &i.stat, start, err)
	return fi, err
}

// List implements FS, counting each page as one request.
func (i *Instrumented) List(ctx context.Context, dir string) iter.Seq2[[]FileInfo, error] {
	return func(yield func([]FileInfo, error) bool) {
		start := time.Now()
		for page, err := range i.fs.List(ctx, dir) {
			i.done(OpList, &i.list, start, err)
			if !yield(page, err) {
				return
			}
			start = time.Now()
		}
	}
}

// ReadRange implements FS, counting the bytes as the caller reads them.
func (i *Instrumented) ReadRange(ctx context.Context, name string, r Range) (io.ReadCloser, error) {
	start := time.Now()
	rc, err := i.fs.ReadRange(ctx, name, r)
	i.done(OpRead, &i.read, start, err)
	if err != nil {
		return nil, err
	}
	return &countingReader{rc: rc, i: i}, nil
}

// Close implements FS.
func (i *Instrumented) Close() error { return i.fs.Close() }

type countingReader struct {
	rc io.ReadCloser
	i  *Instrumented
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.rc.Read(p)
	if n > 0 {
		c.i.bytes.Add(int64(n))
		if c.i.bytesTotal != nil {
			c.i.bytesTotal.Add(float64(n))
		}
	}
	if err != nil && err != io.EOF {
		c.i.errs.Add(1)
		c.i.name(err)
		if c.i.m != nil {
			c.i.m.errs.WithLabelValues(c.i.dataset, OpRead, ClassOf(err).String()).Inc()
		}
	}
	return n, err
}

func (c *countingReader) Close() error { return c.rc.Close() }
