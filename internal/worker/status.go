package worker

import (
	"encoding/json"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/granary-cache/granary/internal/wire"
)

// Status returns the worker's current status.
func (w *Worker) Status() wire.Status {
	h := w.MembershipHealth()
	st := wire.Status{ID: w.ID(), Addr: w.advertised, Host: w.cfg.Worker.Host, Zone: w.cfg.Worker.Zone, Since: w.started,
		Membership: h.String(), MembershipOK: h.OK, Datasets: map[string]wire.DatasetStatus{},
		Hits: counter(w.m.pages.WithLabelValues("hit")), Misses: counter(w.m.pages.WithLabelValues("miss"))}
	cached := w.store.DatasetBytes()
	for _, name := range w.datasets.Names() {
		d, _ := w.datasets.Get(name)
		dirs, entries, singles := w.metas[name].Len()
		ds := wire.DatasetStatus{UFS: d.Counts.Stats(), Directories: dirs, Entries: entries + singles, CachedBytes: cached[name]}
		s := w.scans[name]
		s.wanted.Store(true)
		if s.started.Load() != nil {
			u := s.status()
			ds.Usage = &u
		}
		st.Datasets[name] = ds
	}
	for _, t := range w.store.Stats() {
		st.Tiers = append(st.Tiers, wire.TierStatus{Name: t.Name, Path: t.Path, Capacity: t.Capacity, Used: t.Used, Blocks: t.Blocks,
			NearBlocks: t.NearBlocks, NearBytes: t.NearBytes, Pages: w.tierPages[t.Name]})
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
