package worker

import (
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/granary-cache/granary/internal/wire"
)

type metrics struct {
	requests     *prometheus.CounterVec
	latency      *prometheus.HistogramVec
	bytes        *prometheus.CounterVec
	pages        *prometheus.CounterVec
	merged       *prometheus.CounterVec
	unauthorized prometheus.Counter
	readahead    prometheus.Counter
	uncached     prometheus.Counter
	peerReads    prometheus.Counter
	members      *prometheus.GaugeVec
	nearPages    prometheus.Counter
	framedReads  prometheus.Counter
	fills        prometheus.Counter

	// Resolved once: the series every warm read touches.
	pageHits     prometheus.Counter
	blockLatency prometheus.Observer
	blockOK      prometheus.Counter
	sourceBytes  map[string]prometheus.Counter // by source label: mem, ssd, hdd, ufs
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "granary_worker_requests_total", Help: "Requests served, by operation and HTTP status.",
		}, []string{"op", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "granary_worker_request_duration_seconds", Help: "Time to serve a request, by operation.",
			Buckets: prometheus.ExponentialBuckets(0.00005, 4, 10),
		}, []string{"op"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "granary_worker_served_bytes_total", Help: "Block bytes served, by where they came from (mem, ssd, hdd; ufs for pages fetched by the request).",
		}, []string{"source"}),
		pages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "granary_worker_pages_total", Help: "Pages asked for, by result: hit (cached) or miss (fetched from the UFS).",
		}, []string{"result"}),
		merged: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "granary_worker_singleflight_merged_total", Help: "Requests that joined a UFS fetch already in flight instead of making their own, by kind.",
		}, []string{"kind"}),
		unauthorized: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "granary_worker_unauthorized_total", Help: "Requests refused for a missing or wrong token.",
		}),
		readahead: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "granary_worker_readahead_pages_total", Help: "Pages fetched ahead of a sequential reader.",
		}),
		uncached: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "granary_worker_uncached_pages_total", Help: "Pages served from the UFS without being cached (no space, disk full, quota smaller than a block).",
		}),
		peerReads: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "granary_worker_directory_reader_reads_total", Help: "UFS reads made through the worker that listed the file's directory (CephFS: spares the MDS a lookup).",
		}),
		nearPages: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "granary_worker_near_pages_total", Help: "Pages copied from their owner into a near copy for the clients of this host.",
		}),
		framedReads: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "granary_worker_framed_reads_total", Help: "Block reads served on the framed block protocol (also counted in granary_worker_requests_total as op block).",
		}),
		fills: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "granary_worker_block_fills_total", Help: "Large blocks fetched whole in the background after a client of this host asked for their file before they were all cached.",
		}),
		members: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "granary_membership_members", Help: "Workers of the cluster as this worker sees them, by state (live, not live, leaving).",
		}, []string{"state"}),
	}
	reg.MustRegister(m.requests, m.latency, m.bytes, m.pages, m.merged, m.unauthorized, m.readahead, m.uncached, m.peerReads, m.members, m.nearPages, m.framedReads, m.fills)
	m.sourceBytes = map[string]prometheus.Counter{}
	for _, s := range []string{"mem", "ssd", "hdd", "ufs"} {
		m.sourceBytes[s] = m.bytes.WithLabelValues(s)
	}
	m.pageHits = m.pages.WithLabelValues("hit")
	m.blockLatency = m.latency.WithLabelValues("block")
	m.blockOK = m.requests.WithLabelValues("block", strconv.Itoa(http.StatusOK))
	for _, r := range []string{"hit", "miss"} {
		m.pages.WithLabelValues(r)
	}
	for _, k := range []string{"page", "metadata"} {
		m.merged.WithLabelValues(k)
	}
	return m
}

// statusWriter remembers the status code for the request counter.
type statusWriter struct {
	http.ResponseWriter
	code int
}

func (s *statusWriter) WriteHeader(code int) {
	s.code = code
	s.ResponseWriter.WriteHeader(code)
}

// Unwrap lets http.ResponseController reach the writer's Flush.
func (s *statusWriter) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// ReadFrom keeps the sendfile path of net/http's writer: io.Copy from a
// block file to the response becomes a sendfile to the socket.
func (s *statusWriter) ReadFrom(r io.Reader) (int64, error) {
	if rf, ok := s.ResponseWriter.(io.ReaderFrom); ok {
		return rf.ReadFrom(r)
	}
	return io.Copy(s.ResponseWriter, r)
}

// observeFramed counts a read of the block protocol as instrument counts
// the same read over HTTP (op block, the status HTTP would have answered),
// and in a counter of its own.
func (w *Worker) observeFramed(kind byte, _ wire.ReadRequest, err error, took time.Duration) {
	if kind == wire.KindUFSRead {
		code := http.StatusOK
		if err != nil {
			code = wire.StatusOf(err)
		}
		w.m.request("ufs_read", code, took)
		return
	}
	w.m.blockLatency.Observe(took.Seconds())
	if err == nil {
		w.m.blockOK.Inc()
	} else {
		w.m.requests.WithLabelValues("block", strconv.Itoa(wire.StatusOf(err))).Inc()
	}
	w.m.framedReads.Inc()
}

func (w *Worker) instrument(op string, h http.HandlerFunc) http.HandlerFunc {
	return func(rw http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: rw, code: http.StatusOK}
		h(sw, r)
		w.m.request(op, sw.code, time.Since(start))
	}
}

// request counts one request of op, answered with code (an HTTP status,
// or the one HTTP would have answered on the block protocol).
func (m *metrics) request(op string, code int, took time.Duration) {
	m.latency.WithLabelValues(op).Observe(took.Seconds())
	m.requests.WithLabelValues(op, strconv.Itoa(code)).Inc()
}

// served counts n bytes served from source (a tier's label, or ufs).
func (m *metrics) served(source string, n int64) {
	c, ok := m.sourceBytes[source]
	if !ok {
		c = m.bytes.WithLabelValues(source)
	}
	c.Add(float64(n))
}
