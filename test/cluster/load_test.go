package cluster

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os/exec"
	"strings"
	"syscall"
	"testing"

	"github.com/granary-cache/granary/internal/wire"
)

// loadOut is the result line of `granary load --json`.
type loadOut struct {
	Progress    wire.LoadProgress `json:"progress"`
	Unreachable map[string]string `json:"unreachable"`
	Dirs        int               `json:"directories_listed"`
}

// runLoad runs `granary load --json ARGS...` with the cluster's client
// configuration and returns its result line.
func (c *cluster) runLoad(t *testing.T, args ...string) (loadOut, error) {
	t.Helper()
	cmd := exec.Command(granary, append([]string{"load", "--json", "--config", c.clientConfig(t)}, args...)...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	var res loadOut
	if jerr := json.Unmarshal([]byte(lines[len(lines)-1]), &res); jerr != nil {
		t.Fatalf("load %v: %v (%v)\n%s\n%s", args, jerr, err, out, stderr.String())
	}
	return res, err
}

// blocksOn returns the complete blocks a worker holds of a dataset.
func (c *cluster) blocksOn(t *testing.T, p *proc, ds string) []wire.CachedBlock {
	t.Helper()
	resp, err := http.Get("http://" + p.addr + wire.PathBlocks + "?ds=" + ds)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out []wire.CachedBlock
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestLoadStaticMembership: with a static list, a worker that is down when
// granary load starts is reported and left out: its share goes to the next
// owners, each block once; --metadata-only loads listings and nothing else;
// a load of a path that is not there fails and says so.
func TestLoadStaticMembership(t *testing.T) {
	tr := makeTree(7, 200)
	dir := t.TempDir()
	tr.writeDir(t, dir)
	c := startCluster(t, clusterOpts{workers: 3, datasets: fmt.Sprintf("  - {name: d, ufs: \"file://%s\"}\n", dir)})

	meta, err := c.runLoad(t, "--metadata-only", "/d/")
	if err != nil || meta.Progress.State != wire.LoadDone || meta.Progress.Files != int64(len(tr.files)) || meta.Dirs < 10 {
		t.Fatalf("metadata-only load: %v, %+v", err, meta)
	}
	for _, p := range c.workers {
		if n := len(c.blocksOn(t, p, "d")); n != 0 {
			t.Errorf("a metadata-only load left %d blocks on %s", n, p.id)
		}
	}
	lists := c.metric("granary_ufs_operations_total", `dataset="d"`, `op="list"`)
	readTree(t, c.client(false), "d", tr, 8, 1)
	if after := c.metric("granary_ufs_operations_total", `dataset="d"`, `op="list"`); after != lists {
		t.Errorf("listing after a metadata-only load cost %v UFS listings", after-lists)
	}

	if _, err := c.runLoad(t, "/d/no/such/dir"); err == nil {
		t.Error("a load of a missing path succeeded")
	}

	c.stop(c.workers[1], syscall.SIGKILL)
	res, err := c.runLoad(t, "/d/")
	if err != nil || res.Progress.State != wire.LoadDone || res.Progress.Failed != 0 || res.Unreachable["w2"] == "" {
		t.Fatalf("load with w2 down: %v, %+v", err, res)
	}
	t.Logf("metadata-only: %+v; with w2 down: %+v", meta.Progress, res)
	seen := map[string]int{}
	for _, p := range []*proc{c.workers[0], c.workers[2]} {
		for _, b := range c.blocksOn(t, p, "d") {
			if b.Complete {
				seen[fmt.Sprintf("%s#%d", b.Path, b.Index)]++
			}
		}
	}
	want := 0
	for _, data := range tr.files {
		want += (len(data) + blockSize - 1) / blockSize
	}
	if len(seen) != want {
		t.Errorf("%d distinct blocks cached on the live workers, want %d", len(seen), want)
	}
	for k, n := range seen {
		if n != 1 {
			t.Errorf("block %s cached %d times, want once", k, n)
		}
	}
}
