package membership

import (
	"encoding/json"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func testLease(name, id, addr string, holder bool, renew time.Time, secs int32) *coordinationv1.Lease {
	m, _ := json.Marshal(kubeMember{ID: id, Addr: addr, Weight: 1})
	l := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: map[string]string{AnnotationMember: string(m)}}}
	if holder {
		l.Spec.HolderIdentity = &id
	}
	t := metav1.NewMicroTime(renew)
	l.Spec.RenewTime = &t
	l.Spec.AcquireTime = &t
	l.Spec.LeaseDurationSeconds = &secs
	return l
}

func TestLeaseName(t *testing.T) {
	for _, c := range []struct{ cluster, id, want string }{
		{"train", "node-1", "train-node-1"},
		{"train", "Node_1", "train-node-1"},
		{"rt", "gpu01.rack2", "rt-gpu01.rack2"},
		{"rt", "x/y:z", "rt-x-y-z"},
	} {
		if got := LeaseName(c.cluster, c.id); got != c.want {
			t.Errorf("LeaseName(%q, %q) = %q, want %q", c.cluster, c.id, got, c.want)
		}
	}
}

// A Lease is live for its duration after this process saw it renewed,
// whatever the renewer's clock says.
func TestLeaseLivenessByLocalClock(t *testing.T) {
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	// The renewer's clock is 5 minutes behind: by its renewTime the Lease
	// expired long ago, yet it was renewed just now.
	skewed := testLease("c-a", "a", "10.0.0.1:7420", true, now.Add(-5*time.Minute), 30)
	fresh := testLease("c-b", "b", "10.0.0.2:7420", true, now.Add(-time.Second), 30)
	seen := observe(nil, []*coordinationv1.Lease{skewed, fresh}, now)
	ms, _, _ := leaseMembers([]*coordinationv1.Lease{skewed, fresh}, seen, now)
	states := map[string]State{}
	for _, m := range ms {
		states[m.ID] = m.State
	}
	if states["a"] != NotLive || states["b"] != Live {
		t.Fatalf("first sight: states %v, want a not live (renewTime long past), b live", states)
	}
	// a renews (its renewTime changes, still skewed): live from now on.
	later := now.Add(10 * time.Second)
	skewed2 := testLease("c-a", "a", "10.0.0.1:7420", true, later.Add(-5*time.Minute), 30)
	seen = observe(seen, []*coordinationv1.Lease{skewed2, fresh}, later)
	ms, next, _ := leaseMembers([]*coordinationv1.Lease{skewed2, fresh}, seen, later)
	for _, m := range ms {
		if m.State != Live {
			t.Errorf("after a renewal: %s is %v, want live", m.ID, m.State)
		}
	}
	// The next expiry is b's: renewed at now-1s for 30 s.
	if want := now.Add(29 * time.Second); !next.Equal(want) {
		t.Errorf("next expiry %v, want %v", next, want)
	}
	// Nobody renews for 31 s after that: both expire, and keep their place
	// in the ring as not live.
	end := later.Add(31 * time.Second)
	seen = observe(seen, []*coordinationv1.Lease{skewed2, fresh}, end)
	ms, next, _ = leaseMembers([]*coordinationv1.Lease{skewed2, fresh}, seen, end)
	if len(ms) != 2 || !next.IsZero() {
		t.Fatalf("after expiry: %d members, next %v; want 2 members, no next expiry", len(ms), next)
	}
	for _, m := range ms {
		if m.State != NotLive {
			t.Errorf("after expiry: %s is %v, want not live", m.ID, m.State)
		}
	}
}

func TestLeaseReleasedAndLeaving(t *testing.T) {
	now := time.Now()
	released := testLease("c-a", "a", "10.0.0.1:7420", false, now, 30)
	leaving := testLease("c-b", "b", "10.0.0.2:7420", true, now, 30)
	leaving.Annotations[AnnotationLeaving] = "2026-12-01T00:00:00Z"
	gone := testLease("c-c", "c", "10.0.0.3:7420", false, now, 30)
	gone.Annotations[AnnotationLeaving] = "2026-12-01T00:00:00Z"
	broken := testLease("c-d", "d", "10.0.0.4:7420", true, now, 30)
	broken.Annotations[AnnotationMember] = "{not json"
	leases := []*coordinationv1.Lease{released, leaving, gone, broken}
	ms, _, bad := leaseMembers(leases, observe(nil, leases, now), now)
	states := map[string]State{}
	for _, m := range ms {
		states[m.ID] = m.State
	}
	want := map[string]State{"a": NotLive, "b": Leaving}
	if len(states) != len(want) || states["a"] != want["a"] || states["b"] != want["b"] {
		t.Errorf("states %v, want %v (c left: released while leaving; d unreadable)", states, want)
	}
	if bad["c-d"] == nil {
		t.Errorf("an unreadable member annotation is not reported: %v", bad)
	}
	v := NewView(ms)
	if v.Len() != 0 {
		t.Errorf("%d members own keys, want 0 (one released, one leaving)", v.Len())
	}
}

func TestExpiredSince(t *testing.T) {
	now := time.Now()
	l := testLease("c-a", "a", "10.0.0.1:7420", true, now.Add(-time.Minute), 30)
	o := observed{renew: now.Add(-time.Minute), at: now.Add(-time.Minute)}
	if got := expiredSince(l, o, now); got != 30*time.Second {
		t.Errorf("held Lease renewed 60 s ago for 30 s: expired %v, want 30s", got)
	}
	o.at = now.Add(-10 * time.Second)
	if got := expiredSince(l, o, now); got != 0 {
		t.Errorf("seen renewed 10 s ago: expired %v, want 0", got)
	}
	l.Spec.HolderIdentity = nil
	if got := expiredSince(l, o, now); got != time.Minute {
		t.Errorf("released Lease: expired %v, want 1m (since its last renewal)", got)
	}
}
