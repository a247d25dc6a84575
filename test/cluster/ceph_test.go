package cluster

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/granary-cache/granary/internal/cephtest"
	"github.com/granary-cache/granary/internal/client"
)

// mds reads the MDS's count of client requests and its client sessions
// from its admin socket.
func mds(t *testing.T, dir string) (requests float64, sessions int) {
	t.Helper()
	asok := filepath.Join(dir, "run", "ceph-mds.a.asok")
	out, err := exec.Command("ceph", "--admin-daemon", asok, "perf", "dump").Output()
	if err != nil {
		t.Fatalf("mds perf dump: %v", err)
	}
	var perf struct {
		MDS struct {
			Request float64 `json:"request"`
		} `json:"mds"`
	}
	if err := json.Unmarshal(out, &perf); err != nil {
		t.Fatal(err)
	}
	out, err = exec.Command("ceph", "--admin-daemon", asok, "session", "ls").Output()
	if err != nil {
		t.Fatalf("mds session ls: %v", err)
	}
	var ls []json.RawMessage
	json.Unmarshal(out, &ls)
	return perf.MDS.Request, len(ls)
}

// TestCephFSSparesTheMDS reads a tree on CephFS through 3 workers with two
// clients, 3 epochs each, against ceph-fuse reading it directly: the first
// epoch costs the MDS no more than one direct client's pass, every later
// epoch and the second client cost it nothing, and the MDS holds one
// session per worker, not per reader.
func TestCephFSSparesTheMDS(t *testing.T) {
	dir := cephtest.Dir(t)
	root := fmt.Sprintf("mds-%d", time.Now().UnixNano())
	tr := makeTree(21, 400)
	w := cephtest.FuseMount(t, dir)
	tr.writeDir(t, filepath.Join(w, root))
	if err := syscall.Unmount(w, 0); err != nil { // flush the writer's metadata
		t.Fatal(err)
	}

	// The baseline: one ceph-fuse client reading the tree directly.
	direct := cephtest.FuseMount(t, dir)
	before, _ := mds(t, dir)
	readMount(t, filepath.Join(direct, root), tr, nil)
	after, _ := mds(t, dir)
	baseline := after - before
	syscall.Unmount(direct, 0)
	_, sessionsBefore := mds(t, dir)

	c := startCluster(t, clusterOpts{workers: 3, datasets: fmt.Sprintf(
		"  - name: cf\n    ufs: cephfs://cephfs/%s\n    options: {conf: %q}\n", root, cephtest.Conf(dir))})
	for i, cl := range []*client.Client{c.client(false), c.client(true)} {
		for epoch := 1; epoch <= 3; epoch++ {
			before, _ := mds(t, dir)
			readTree(t, cl, "cf", tr, 16, uint64(epoch))
			after, sessions := mds(t, dir)
			n := after - before
			t.Logf("client %d epoch %d: %v MDS requests (direct ceph-fuse: %v), %d sessions (%d before granary)", i+1, epoch, n, baseline, sessions, sessionsBefore)
			switch {
			case i == 0 && epoch == 1 && n > baseline:
				t.Errorf("cold epoch: %v MDS requests; want at most the direct client's %v", n, baseline)
			case (i > 0 || epoch > 1) && n != 0:
				t.Errorf("client %d epoch %d: %v MDS requests; want 0", i+1, epoch, n)
			}
			if sessions-sessionsBefore > 3 {
				t.Errorf("%d MDS sessions for granary; want at most one per worker (3)", sessions-sessionsBefore)
			}
		}
	}
}
