package worker

import (
	"encoding/json"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/granary-cache/granary/internal/cache"
	"github.com/granary-cache/granary/internal/ufs"
)

// Status is what /v1/status reports about a worker.
type Status struct {
	ID       string                   `json:"id"`
	Addr     string                   `json:"addr"`
	Tiers    []cache.TierStats        `json:"tiers"`
	Hits     int64                    `json:"page_hits"`
	Misses   int64                    `json:"page_misses"`
	Datasets map[string]DatasetStatus `json:"datasets"`
}

// DatasetStatus is one dataset's share of a worker's status.
type DatasetStatus struct {
	UFS         ufs.Stats `json:"ufs"`
	Directories int       `json:"cached_directories"`
	Entries     int       `json:"cached_entries"`
}

// Status returns the worker's current status.
func (w *Worker) Status() Status {
	st := Status{ID: w.ID(), Addr: w.Addr(), Tiers: w.store.Stats(), Datasets: map[string]DatasetStatus{},
		Hits: counter(w.m.pages.WithLabelValues("hit")), Misses: counter(w.m.pages.WithLabelValues("miss"))}
	for _, name := range w.datasets.Names() {
		d, _ := w.datasets.Get(name)
		dirs, entries, singles := w.metas[name].Len()
		st.Datasets[name] = DatasetStatus{UFS: d.Counts.Stats(), Directories: dirs, Entries: entries + singles}
	}
	return st
}

func (w *Worker) handleStatus(rw http.ResponseWriter, _ *http.Request) {
	rw.Header().Set("Content-Type", "application/json")
	json.NewEncoder(rw).Encode(w.Status())
}

func counter(c prometheus.Counter) int64 {
	var m dto.Metric
	c.Write(&m)
	return int64(m.GetCounter().GetValue())
}
