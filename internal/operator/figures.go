package operator

import (
	"encoding/json"
	"fmt"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"

	"github.com/granary-cache/granary/internal/membership"
	"github.com/granary-cache/granary/internal/wire"
)

// The operator reads what workers publish on their Leases: who is live, and
// their figures. It never dials a worker.

// worker is one Lease as the operator reads it.
type worker struct {
	ID      string
	Live    bool
	Figures wire.Figures
}

// readLeases turns a runtime's Leases into workers. A Lease is live while
// held and renewed within its duration (by the operator's clock: the
// workers renew every third of it, so a skew below that does not matter).
func readLeases(leases []coordinationv1.Lease, now time.Time) []worker {
	out := make([]worker, 0, len(leases))
	for i := range leases {
		l := &leases[i]
		var m struct {
			ID string `json:"id"`
		}
		if json.Unmarshal([]byte(l.Annotations[membership.AnnotationMember]), &m) != nil || m.ID == "" {
			continue
		}
		w := worker{ID: m.ID, Live: leaseLive(l, now)}
		if raw := l.Annotations[membership.AnnotationFigures]; raw != "" {
			json.Unmarshal([]byte(raw), &w.Figures)
		}
		out = append(out, w)
	}
	return out
}

func leaseLive(l *coordinationv1.Lease, now time.Time) bool {
	if l.Spec.HolderIdentity == nil || *l.Spec.HolderIdentity == "" || l.Spec.RenewTime == nil {
		return false
	}
	dur := membership.DefaultKubeLeaseDuration
	if l.Spec.LeaseDurationSeconds != nil && *l.Spec.LeaseDurationSeconds > 0 {
		dur = time.Duration(*l.Spec.LeaseDurationSeconds) * time.Second
	}
	return now.Before(l.Spec.RenewTime.Add(dur))
}

// clusterFigures are a runtime's workers summed up.
type clusterFigures struct {
	Live, All      int
	Capacity, Used int64
	Hits, Misses   int64
}

func sumWorkers(ws []worker) clusterFigures {
	var c clusterFigures
	for _, w := range ws {
		c.All++
		if !w.Live {
			continue
		}
		c.Live++
		c.Capacity += w.Figures.Capacity
		c.Used += w.Figures.Used
		c.Hits += w.Figures.Hits
		c.Misses += w.Figures.Misses
	}
	return c
}

// datasetTotal sums a dataset over the live workers. The UFS measure is
// taken from any worker (one that stopped may still hold the only complete
// measure).
func datasetTotal(ws []worker, name string, replicas int) wire.DatasetTotal {
	var t wire.DatasetTotal
	for _, w := range ws {
		d := w.Figures.Datasets[name]
		if !w.Live {
			d.CachedBytes = 0
		}
		t.Add(d)
	}
	t.Finish(replicas)
	return t
}

// human prints bytes for people, to three significant digits: "1.17GiB".
func human(n int64) string {
	const units = "KMGTPE"
	if n < 1024 {
		return fmt.Sprintf("%dB", n)
	}
	v, i := float64(n)/1024, 0
	for v >= 1024 && i < len(units)-1 {
		v /= 1024
		i++
	}
	switch {
	case v >= 100:
		return fmt.Sprintf("%.0f%ciB", v, units[i])
	case v >= 10:
		return fmt.Sprintf("%.1f%ciB", v, units[i])
	}
	return fmt.Sprintf("%.2f%ciB", v, units[i])
}

// hitRatio prints hits of all page reads, or "" before any.
func hitRatio(hits, misses int64) string {
	if hits+misses == 0 {
		return ""
	}
	return fmt.Sprintf("%.1f%%", 100*float64(hits)/float64(hits+misses))
}
