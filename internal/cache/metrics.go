package cache

import (
	"errors"
	"syscall"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the store's Prometheus series. A nil *Metrics counts nothing.
type Metrics struct {
	reg       prometheus.Registerer
	evictions *prometheus.CounterVec
	corrupted prometheus.Counter
	errs      *prometheus.CounterVec

	scrubbedBytes prometheus.Counter
}

// NewMetrics creates the store's series and registers them with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		reg: reg,
		evictions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "granary_cache_evictions_total",
			Help: "Blocks taken off a tier, by tier and action (demote: moved to the next tier; evict, no_space: deleted).",
		}, []string{"tier", "action"}),
		corrupted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "granary_cache_corrupt_pages_total",
			Help: "Cached pages that failed their CRC32C check (when served, checked for a short-circuit or passthrough reader, or scrubbed) and were dropped to be fetched again.",
		}),
		scrubbedBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "granary_cache_scrubbed_bytes_total",
			Help: "Bytes of cached pages checked against their CRC32C by the background scrub.",
		}),
		errs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "granary_cache_store_errors_total",
			Help: "Failures to store or move cached data, by reason (no_space, io); the reads were served from the UFS.",
		}, []string{"reason"}),
	}
	if reg != nil {
		reg.MustRegister(m.evictions, m.corrupted, m.errs, m.scrubbedBytes)
	}
	return m
}

// register adds the per-tier gauges of s, read when scraped.
func (m *Metrics) register(s *Store) {
	if m.reg == nil {
		return
	}
	for _, t := range s.tiers {
		labels := prometheus.Labels{"tier": t.Name}
		m.reg.MustRegister(
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "granary_cache_tier_used_bytes", Help: "Bytes reserved by cached blocks on the tier.", ConstLabels: labels},
				func() float64 { s.mu.Lock(); defer s.mu.Unlock(); return float64(t.used) }),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "granary_cache_tier_capacity_bytes", Help: "Quota of the tier.", ConstLabels: labels},
				func() float64 { return float64(t.Quota) }),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "granary_cache_tier_blocks", Help: "Blocks cached on the tier.", ConstLabels: labels},
				func() float64 { s.mu.Lock(); defer s.mu.Unlock(); return float64(t.lru.Len()) }),
		)
	}
	for _, r := range []string{"no_space", "io"} {
		m.errs.WithLabelValues(r)
	}
}

func (m *Metrics) evicted(tier, action string) {
	if m != nil {
		m.evictions.WithLabelValues(tier, action).Inc()
	}
}

func (m *Metrics) corrupt() {
	if m != nil {
		m.corrupted.Inc()
	}
}

func (m *Metrics) noSpace() {
	if m != nil {
		m.errs.WithLabelValues("no_space").Inc()
	}
}

func (m *Metrics) storeError(err error) {
	if m == nil {
		return
	}
	reason := "io"
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		reason = "no_space"
	}
	m.errs.WithLabelValues(reason).Inc()
}

func (m *Metrics) scrubbed(n int64) {
	if m != nil {
		m.scrubbedBytes.Add(float64(n))
	}
}
