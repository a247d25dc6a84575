package cluster

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"

	"github.com/granary-cache/granary/internal/bench"
	"github.com/granary-cache/granary/internal/ufs/local"
)

// TestPyTorchDataLoader runs examples/pytorch/loader.py, a DataLoader with
// worker processes over an ImageFolder tree, on a granary mount: every
// epoch must see every sample. It skips only when torch is missing
// (test/run.sh installs Debian's python3-torch and python3-torchvision).
func TestPyTorchDataLoader(t *testing.T) {
	// Debian's python3, which python3-torch installs into (not one of a
	// version manager earlier in $PATH).
	python := "/usr/bin/python3"
	if out, err := exec.Command(python, "-c", "import torch, torchvision").CombinedOutput(); err != nil {
		t.Skipf("no torch: %v: %s", err, out)
	}
	dir := t.TempDir()
	fsys, err := local.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	files, _, err := bench.Generate(context.Background(), bench.GenOptions{Profile: "imagenet", Scale: 8 << 20, FilesPerDir: 20}, fsys, 4, nil)
	fsys.Close()
	if err != nil {
		t.Fatal(err)
	}
	c := startCluster(t, clusterOpts{workers: 2, datasets: fmt.Sprintf("  - {name: imagenet, ufs: \"file://%s\"}\n", dir)})
	m := c.mount(t)
	out, err := exec.Command(python, "../../examples/pytorch/loader.py", filepath.Join(m.dir, "imagenet", "train"),
		"--epochs", "2", "--workers", "2", "--batch-size", "16").CombinedOutput()
	t.Logf("%s", out)
	if err != nil {
		t.Fatal(err)
	}
	epochs := regexp.MustCompile(`(?m)^epoch (\d): (\d+) samples, .* [0-9]+ samples/s`).FindAllStringSubmatch(string(out), -1)
	if len(epochs) != 2 {
		t.Fatalf("%d epochs reported; want 2", len(epochs))
	}
	for _, e := range epochs {
		if n, _ := strconv.Atoi(e[2]); n != len(files) {
			t.Errorf("epoch %s saw %d samples; want %d", e[1], n, len(files))
		}
	}
}
