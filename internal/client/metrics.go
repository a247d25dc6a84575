package client

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Collector exports the client's counters, for the process that runs it (a
// mount's admin endpoint). Fallback reads are what a dead or cut-off worker
// costs the UFS: a steady rate of them is a "fallback storm".
func (c *Client) Collector() prometheus.Collector { return collector{c} }

var (
	descRemote   = prometheus.NewDesc("granary_client_remote_reads_total", "Block reads served by a worker over the network.", nil, nil)
	descShort    = prometheus.NewDesc("granary_client_short_circuit_reads_total", "Block reads served from a block file of a worker on this host.", nil, nil)
	descFallback = prometheus.NewDesc("granary_client_fallback_reads_total", "Reads sent straight to the UFS because no owner answered, by dataset.", []string{"dataset"}, nil)
	descRetries  = prometheus.NewDesc("granary_client_retries_total", "Requests moved to the next owner after a worker failed.", nil, nil)
	descDown     = prometheus.NewDesc("granary_client_workers_down", "Workers this client has marked down (they did not answer a probe).", nil, nil)
	descLive     = prometheus.NewDesc("granary_client_membership_healthy", "1 when the client is in touch with its membership backend.", nil, nil)
)

type collector struct{ c *Client }

func (collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descRemote, descShort, descFallback, descRetries, descDown, descLive} {
		ch <- d
	}
}

func (k collector) Collect(ch chan<- prometheus.Metric) {
	c := k.c
	st := c.Stats()
	ch <- prometheus.MustNewConstMetric(descRemote, prometheus.CounterValue, float64(st.RemoteReads))
	ch <- prometheus.MustNewConstMetric(descShort, prometheus.CounterValue, float64(st.ShortCircuitReads))
	ch <- prometheus.MustNewConstMetric(descRetries, prometheus.CounterValue, float64(st.Retries))
	for ds, n := range st.FallbackByDataset {
		ch <- prometheus.MustNewConstMetric(descFallback, prometheus.CounterValue, float64(n), ds)
	}
	down := 0
	for _, m := range c.members.Current().Members() {
		if c.reach.Down(m.ID) {
			down++
		}
	}
	ch <- prometheus.MustNewConstMetric(descDown, prometheus.GaugeValue, float64(down))
	healthy := 0.0
	if c.members.Health().OK {
		healthy = 1
	}
	ch <- prometheus.MustNewConstMetric(descLive, prometheus.GaugeValue, healthy)
}
