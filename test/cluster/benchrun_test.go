package cluster

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/granary-cache/granary/internal/bench"
)

// TestBenchRunThroughAMount runs `granary bench run` the way a user does:
// a dataset made by `bench gen`, read through a FUSE mount of two worker
// processes against a local copy, with the workers' UFS counters and the
// granary processes' CPU in the report.
func TestBenchRunThroughAMount(t *testing.T) {
	needFUSE(t)
	data := t.TempDir()
	if out, err := exec.Command(granary, "bench", "gen", "--quiet", "--ufs", "file://"+data, "--profile", "imagenet",
		"--scale", "4MiB", "--files-per-dir", "10").CombinedOutput(); err != nil {
		t.Fatalf("bench gen: %v\n%s", err, out)
	}
	c := startCluster(t, clusterOpts{workers: 2, datasets: fmt.Sprintf("  - {name: d, ufs: \"file://%s\"}\n", data)})
	m := c.mount(t)
	report := filepath.Join(t.TempDir(), "report.json")
	out, err := exec.Command(granary, "bench", "run", "--quiet", "--config", c.clientConfig(t), "--profile", "imagenet",
		"--epochs", "2", "--readers", "4", "--path", "granary="+filepath.Join(m.dir, "d"), "--baseline", "local="+data,
		"--json", report, "--png", filepath.Join(t.TempDir(), "report.png")).CombinedOutput()
	t.Logf("%s", out)
	if err != nil {
		t.Fatalf("bench run: %v", err)
	}
	b, err := os.ReadFile(report)
	if err != nil {
		t.Fatal(err)
	}
	var rep bench.Report
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatal(err)
	}
	if len(rep.Warnings) > 0 {
		t.Errorf("warnings: %v", rep.Warnings)
	}
	g := rep.Targets[0]
	if g.Name != "granary" || len(g.Epochs) != 2 {
		t.Fatalf("targets: %+v", rep.Targets)
	}
	cold, warm := g.Epochs[0], g.Epochs[1]
	if cold.UFS == nil || warm.UFS == nil || cold.CPU.Granary == nil || *cold.CPU.Granary <= 0 {
		t.Fatalf("the report lacks the workers' UFS counters or granary's CPU: %+v", g.Epochs)
	}
	// Epoch 1 fetched the dataset once; epoch 2 asked the UFS for nothing.
	if cold.UFS.BytesRead != rep.Bytes || warm.UFS.Ops() != 0 {
		t.Errorf("UFS: cold %+v, warm %+v; want %d bytes once, then nothing", *cold.UFS, *warm.UFS, rep.Bytes)
	}
	if r, ok := warm.Ratios["local"]; !ok || r.MBps <= 0 || r.P99 == nil {
		t.Errorf("ratios to the local copy: %+v", warm.Ratios)
	}
}
