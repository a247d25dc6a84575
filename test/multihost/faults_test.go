package multihost

import (
	"fmt"
	"testing"
	"time"

	"github.com/granary-cache/granary/internal/membership"
)

// TestEpochThroughTwoMounts: 3 workers, 2 mounts on two more machines,
// datasets of replicas 1 and 2: every file read through each mount has the
// source's digest.
func TestEpochThroughTwoMounts(t *testing.T) {
	w := newWorld(t, worldOpts{workers: 3, mounts: []string{"m1", "m2"}})
	m1, m2 := w.mount("m1"), w.mount("m2")
	for _, ds := range []string{"r1", "r2"} {
		readEpoch(t, m1.dir, ds, 16, 1, 0, nil).check(t, ds+" through m1 (cold)")
		readEpoch(t, m2.dir, ds, 16, 2, 0, nil).check(t, ds+" through m2")
		before := w.ufsReads(ds)
		readEpoch(t, m1.dir, ds, 16, 3, 0, nil).check(t, ds+" through m1 (warm)")
		if after := w.ufsReads(ds); after != before {
			t.Errorf("%s: the warm epoch made %v UFS reads", ds, after-before)
		}
	}
	if n, err := walkCount(m2.dir + "/r1"); err != nil || n != len(data.files) {
		t.Errorf("walk of m2: %d files, %v", n, err)
	}
}

// TestWorkerKilledMidEpoch: kill -9 a worker mid-epoch, with replicas 1
// and 2: no read fails, no byte is wrong, and the reads the mount sent
// straight to the UFS are counted and few (none with replicas 2: the
// other owner answers).
func TestWorkerKilledMidEpoch(t *testing.T) {
	for _, ds := range []string{"r1", "r2"} {
		t.Run(ds, func(t *testing.T) {
			w := newWorld(t, worldOpts{workers: 3, mounts: []string{"m1"}})
			m := w.mount("m1")
			readEpoch(t, m.dir, ds, 16, 1, 0, nil).check(t, "first epoch")
			victim := w.workers["w2"]
			e := readEpoch(t, m.dir, ds, 16, 2, 0.3, func() { victim.proc.Kill() })
			e.check(t, "epoch with w2 killed at 30%")
			fallback := metric("http://"+m.admin+"/metrics", "granary_client_fallback_reads_total", `dataset="`+ds+`"`)
			t.Logf("fallback reads: %v", fallback)
			switch {
			case fallback < 0:
				t.Errorf("the mount's metrics did not answer")
			case ds == "r2" && fallback != 0:
				t.Errorf("replicas 2: %v reads fell back to the UFS, want 0", fallback)
			case fallback > float64(len(data.files))/20:
				t.Errorf("%v reads fell back to the UFS, more than 5%% of the files", fallback)
			}
			// The dead worker leaves the live set; the next epoch does not
			// wait for it at all.
			c := w.client()
			w.waitLive(c, 2)
			readEpoch(t, m.dir, ds, 16, 3, 0, nil).check(t, "epoch after the kill")
		})
	}
}

// TestWorkerPartitionedMidEpoch: a worker cut off mid-epoch (its link
// down: packets dropped, connections hang) costs the readers a probe, not
// the 30 s request timeout; no read fails. Back inside the ring grace, it is
// used again and no key moved.
func TestWorkerPartitionedMidEpoch(t *testing.T) {
	w := newWorld(t, worldOpts{workers: 3, mounts: []string{"m1"}})
	m := w.mount("m1")
	c := w.client()
	w.waitLive(c, 3)
	ring := ringIDs(c.Membership().Current())
	before := sampleOwners(c.Membership().Current(), 20000)
	victim := w.workers["w2"]
	for i, ds := range []string{"r1", "r2"} {
		readEpoch(t, m.dir, ds, 16, 1, 0, nil).check(t, ds+": first epoch")
		e := readEpoch(t, m.dir, ds, 16, 2, 0.3, func() { victim.host.Cut(t) })
		e.check(t, ds+": epoch with w2 cut off at 30%")
		if max := time.Duration(e.maxLatency.Load()); max >= 15*time.Second {
			t.Errorf("%s: a read took %v: the partition cost more than a probe", ds, max)
		}
		// Not live while cut off (its lease ran out), in the ring still.
		waitFor(t, "w2 not live", 20*time.Second, func() bool { return memberState(c, victim) == membership.NotLive })
		victim.host.Heal(t)
		waitFor(t, "w2 live again", 30*time.Second, func() bool { return memberState(c, victim) == membership.Live })
		if got := ringIDs(c.Membership().Current()); fmt.Sprint(got) != fmt.Sprint(ring) {
			t.Errorf("ring changed from %v to %v", ring, got)
		}
		if moved := diff(before, sampleOwners(c.Membership().Current(), 20000)); moved != 0 {
			t.Errorf("%d of 20000 keys moved after w2 came back", moved)
		}
		// The mount probes a worker it marked down every second until it
		// answers: once it has, the worker is used again and serves reads
		// in the next epoch.
		waitFor(t, "the mount reads from w2 again", 30*time.Second, func() bool {
			return metric("http://"+m.admin+"/metrics", "granary_client_workers_down") == 0
		})
		served := w.workerMetric(victim, "granary_worker_requests_total", `op="block"`)
		readEpoch(t, m.dir, ds, 16, uint64(3+i), 0, nil).check(t, ds+": epoch after w2 came back")
		if after := w.workerMetric(victim, "granary_worker_requests_total", `op="block"`); after <= served {
			t.Errorf("%s: w2 served no block after it came back (%v → %v)", ds, served, after)
		}
	}
}

func memberState(c interface{ Membership() membership.Source }, wp *workerProc) membership.State {
	for _, m := range c.Membership().Current().Members() {
		if m.Host == wp.host.Name {
			return m.State
		}
	}
	return -1
}

func ringIDs(v *membership.View) []string {
	var ids []string
	for _, m := range v.Members() {
		if m.State != membership.Leaving {
			ids = append(ids, m.ID)
		}
	}
	return ids
}

// sampleOwners places n synthetic block keys.
func sampleOwners(v *membership.View, n int) []string {
	out := make([]string, n)
	for i := range out {
		m, _ := v.Table().Owner(fmt.Sprintf("d\x00r1\x00sample/%d\x000", i))
		out[i] = m.ID
	}
	return out
}

func diff(a, b []string) int {
	n := 0
	for i := range a {
		if a[i] != b[i] {
			n++
		}
	}
	return n
}
