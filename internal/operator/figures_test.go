package operator

import (
	"encoding/json"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/event"

	"github.com/granary-cache/granary/api/v1alpha1"
	"github.com/granary-cache/granary/internal/membership"
	"github.com/granary-cache/granary/internal/wire"
)

func TestHuman(t *testing.T) {
	for n, want := range map[int64]string{0: "0B", 1000: "1000B", 1024: "1.00KiB", 1536: "1.50KiB", 10 << 20: "10.0MiB",
		1<<30 + 1<<28: "1.25GiB", 300 << 30: "300GiB", 5 << 40: "5.00TiB"} {
		if got := human(n); got != want {
			t.Errorf("human(%d) = %q, want %q", n, got, want)
		}
	}
}

func lease(id string, renewed time.Time, f wire.Figures) coordinationv1.Lease {
	m, _ := json.Marshal(map[string]any{"id": id, "addr": "10.0.0.1:7420"})
	fb, _ := json.Marshal(f)
	secs := int32(30)
	t := metav1.NewMicroTime(renewed)
	return coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Name: "rt-" + id, Annotations: map[string]string{membership.AnnotationMember: string(m), membership.AnnotationFigures: string(fb)}},
		Spec:       coordinationv1.LeaseSpec{HolderIdentity: &id, RenewTime: &t, LeaseDurationSeconds: &secs},
	}
}

// A dataset's status sums the live workers' figures, and shows the UFS
// size as it grows, never stuck on "calculating".
func TestDatasetStatusFromLeases(t *testing.T) {
	now := time.Now()
	measuring := &wire.UFSUsage{Files: 500, Bytes: 300 << 20, Dirs: 3}
	leases := []coordinationv1.Lease{
		lease("a", now, wire.Figures{Capacity: 1 << 30, Hits: 30, Misses: 10, Datasets: map[string]wire.DatasetFigures{"img": {CachedBytes: 100 << 20, Usage: measuring}}}),
		lease("b", now, wire.Figures{Capacity: 1 << 30, Hits: 50, Misses: 10, Datasets: map[string]wire.DatasetFigures{"img": {CachedBytes: 200 << 20}}}),
		lease("c", now.Add(-time.Minute), wire.Figures{Capacity: 1 << 30, Datasets: map[string]wire.DatasetFigures{"img": {CachedBytes: 999 << 20}}}),
	}
	ws := readLeases(leases, now)
	var st v1alpha1.DatasetStatus
	fillDatasetStatus(&st, ws, "img", 1)
	if st.Workers != 2 || st.CacheCapacity != "2.00GiB" || st.Cached != "300MiB" || st.HitRatio != "80.0%" {
		t.Errorf("status %+v: want 2 live workers, 2 GiB capacity, 300 MiB cached (c expired), hit ratio 80%%", st)
	}
	if st.UFSTotal != "300MiB+" || st.Files != 500 || st.CachedPercentage != "" {
		t.Errorf("while measuring: total %q, files %d, cached %q", st.UFSTotal, st.Files, st.CachedPercentage)
	}
	if c := meta.FindStatusCondition(st.Conditions, v1alpha1.ConditionUFSMeasured); c == nil || c.Reason != "Measuring" {
		t.Errorf("condition %+v", c)
	}
	measuring.Complete, measuring.Bytes = true, 600<<20
	leases[0] = lease("a", now, wire.Figures{Capacity: 1 << 30, Hits: 30, Misses: 10, Datasets: map[string]wire.DatasetFigures{"img": {CachedBytes: 100 << 20, Usage: measuring}}})
	fillDatasetStatus(&st, readLeases(leases, now), "img", 1)
	if st.UFSTotal != "600MiB" || st.CachedPercentage != "50.0%" {
		t.Errorf("measured: total %q, cached %q; want 600MiB, 50.0%%", st.UFSTotal, st.CachedPercentage)
	}
}

// Renewals do not wake the controllers; joins, stops and leaving do.
func TestMembershipChangedPredicate(t *testing.T) {
	now := time.Now()
	old := lease("a", now, wire.Figures{})
	old.Labels = map[string]string{membership.LabelCluster: "rt"}
	renewed := *old.DeepCopy()
	later := metav1.NewMicroTime(now.Add(10 * time.Second))
	renewed.Spec.RenewTime = &later
	renewed.Annotations[membership.AnnotationFigures] = `{"capacity":2}`
	if membershipChanged.Update(event.UpdateEvent{ObjectOld: &old, ObjectNew: &renewed}) {
		t.Error("a renewal with new figures wakes the controllers")
	}
	released := *old.DeepCopy()
	released.Spec.HolderIdentity = nil
	if !membershipChanged.Update(event.UpdateEvent{ObjectOld: &old, ObjectNew: &released}) {
		t.Error("a worker that stopped does not wake the controllers")
	}
	if !membershipChanged.Create(event.CreateEvent{Object: &old}) {
		t.Error("a worker that joined does not wake the controllers")
	}
	other := coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: "node-1", Namespace: "kube-node-lease"}}
	if membershipChanged.Create(event.CreateEvent{Object: &other}) {
		t.Error("a node's Lease wakes the controllers")
	}
}
