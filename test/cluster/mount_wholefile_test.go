package cluster

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestMountWholeFiles: with whole_file, a file of many blocks of
// block_size is one block of its own, and FUSE passthrough reads it whole.
// A file up to 64 MiB gets passthrough at its first open (the worker
// fetches it before it answers). A larger one is first read through
// granary, at once, while its worker fetches it whole in the background;
// the first open after that gets passthrough.
func TestMountWholeFiles(t *testing.T) {
	needFUSE(t)
	dir := t.TempDir()
	rng := rand.NewChaCha8([32]byte{7})
	files := map[string][]byte{"mid.bin": make([]byte, 5*blockSize+123), "big.bin": make([]byte, 80<<20+4567)}
	for name, data := range files {
		rng.Read(data)
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	c := startCluster(t, clusterOpts{workers: 1,
		datasets: fmt.Sprintf("  - {name: d, ufs: \"file://%s\", whole_file: 128MiB, open_mode: passthrough}\n", dir)})
	m := c.mount(t, "--dataset", "d")
	if !m.stats(t).Mount.PassthroughSupported {
		t.Fatal("the kernel refused FUSE passthrough (Linux 6.9+ is needed)")
	}
	// read reads a file whole through the mount and says how many daemon
	// READs and passthrough opens it took.
	read := func(name string) (reads, passthrough int64) {
		t.Helper()
		before := m.stats(t).Mount
		got, err := os.ReadFile(filepath.Join(m.dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, files[name]) {
			t.Fatalf("%s: %d bytes read, not the file's %d", name, len(got), len(files[name]))
		}
		after := m.stats(t).Mount
		return after.DaemonReads - before.DaemonReads, after.PassthroughOpens - before.PassthroughOpens
	}

	if reads, pt := read("mid.bin"); reads != 0 || pt != 1 {
		t.Errorf("a cold file of 5 blocks of block_size, one whole-file block: %d daemon READs, %d passthrough opens; want 0 and 1", reads, pt)
	}
	if reads, pt := read("big.bin"); reads == 0 || pt != 0 {
		t.Errorf("a cold file of 80 MiB: %d daemon READs, %d passthrough opens; want it read through granary", reads, pt)
	}
	for deadline := time.Now().Add(60 * time.Second); c.metric("granary_worker_block_fills_total") < 1; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the worker did not fetch the 80 MiB file whole in 60 s")
		}
	}
	dropCaches(t)
	if reads, pt := read("big.bin"); reads != 0 || pt != 1 {
		t.Errorf("the 80 MiB file once fetched whole: %d daemon READs, %d passthrough opens; want 0 and 1", reads, pt)
	}
	if n := c.metric("granary_ufs_read_bytes_total"); n != float64(len(files["mid.bin"])+len(files["big.bin"])) {
		t.Errorf("%v bytes read from the UFS; want each file's once (%d)", n, len(files["mid.bin"])+len(files["big.bin"]))
	}
}
