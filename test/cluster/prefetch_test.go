package cluster

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// TestMountPrefetch: with --prefetch, the first read of a dataset through
// the mount has the workers cache the whole dataset, and the mount's status
// follows it to done; the next epoch reads the UFS no more.
func TestMountPrefetch(t *testing.T) {
	needFUSE(t)
	dir := t.TempDir()
	want := map[string][]byte{}
	for i := range 48 {
		name := fmt.Sprintf("c%d/f%02d.bin", i%3, i)
		want[name] = bytes.Repeat([]byte{byte(i)}, 30<<10+i)
		os.MkdirAll(filepath.Join(dir, filepath.Dir(name)), 0o755)
		if err := os.WriteFile(filepath.Join(dir, name), want[name], 0o644); err != nil {
			t.Fatal(err)
		}
	}
	c := startCluster(t, clusterOpts{workers: 2, datasets: fmt.Sprintf("  - {name: d, ufs: \"file://%s\"}\n", dir)})
	m := c.mount(t, "--prefetch")
	if got, err := os.ReadFile(filepath.Join(m.dir, "d", "c0", "f00.bin")); err != nil || !bytes.Equal(got, want["c0/f00.bin"]) {
		t.Fatalf("the first read: %v", err)
	}
	if p := waitPrefetched(t, m, "d"); p.Progress.Files != 48 {
		t.Errorf("prefetch: %+v; want the 48 files", p)
	}
	reads := c.metric("granary_ufs_operations_total", `dataset="d"`, `op="read"`)
	for name, data := range want {
		if got, err := os.ReadFile(filepath.Join(m.dir, "d", name)); err != nil || !bytes.Equal(got, data) {
			t.Fatalf("%s: %v", name, err)
		}
	}
	if after := c.metric("granary_ufs_operations_total", `dataset="d"`, `op="read"`); after != reads {
		t.Errorf("the epoch after the prefetch made %v UFS reads; want 0", after-reads)
	}
}

// TestMountPrefetchSkipsSplitDirs: a directory with a FUSE connection of
// its own (checkpoints among small files, open_mode auto) is left out of
// the prefetch that a read of the rest of its dataset starts: the job that
// reads the small files does not fill the cache with checkpoints. Its own
// server prefetches it once it is read.
func TestMountPrefetchSkipsSplitDirs(t *testing.T) {
	needFUSE(t)
	dir := t.TempDir()
	put := func(name string, data []byte) {
		os.MkdirAll(filepath.Join(dir, filepath.Dir(name)), 0o755)
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 30 {
		put(fmt.Sprintf("train/f%02d.jpg", i), bytes.Repeat([]byte{byte(i)}, 20<<10+i))
	}
	for i := range 3 {
		put(fmt.Sprintf("ckpt/step%d.pt", i), bytes.Repeat([]byte{byte(100 + i)}, 600<<10+i))
	}
	c := startCluster(t, clusterOpts{workers: 2, datasets: fmt.Sprintf("  - {name: d, ufs: \"file://%s\"}\n", dir)})
	m := c.mount(t, "--prefetch")
	ckpt := filepath.Join(m.dir, "d", "ckpt")
	for deadline := time.Now().Add(20 * time.Second); !slices.Contains(granaryMountPoints(t), ckpt); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("ckpt got no connection of its own: %v\n%s", granaryMountPoints(t), m.log)
		}
	}
	if _, err := os.ReadFile(filepath.Join(m.dir, "d", "train", "f00.jpg")); err != nil {
		t.Fatal(err)
	}
	// The dataset's connection serves the admin address (the first).
	if p := waitPrefetched(t, m, "d").Progress; p.Files != 30 {
		t.Errorf("prefetch of d: %+v; want the 30 files of train/, and none of ckpt/", p)
	}
	// Nothing of ckpt/ came from the UFS: it holds 1.8 MiB, train/ 0.6.
	if read := c.metric("granary_ufs_read_bytes_total", `dataset="d"`); read > 30*(20<<10+30) {
		t.Errorf("%v bytes read from the UFS: more than train/ holds", read)
	}
}

// prefetchStatus is a dataset's prefetch in a mount's /v1/status.
type prefetchStatus struct {
	State, Reason string
	Progress      struct{ Files, Bytes int64 }
}

// waitPrefetched waits until the prefetch of dataset ds through mount m
// is done, and returns its status.
func waitPrefetched(t *testing.T, m *mountProc, ds string) prefetchStatus {
	t.Helper()
	var st struct {
		Prefetch map[string]prefetchStatus `json:"prefetch"`
	}
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		resp, err := http.Get("http://" + m.admin + "/v1/status")
		if err != nil {
			t.Fatal(err)
		}
		json.NewDecoder(resp.Body).Decode(&st)
		resp.Body.Close()
		if st.Prefetch[ds].State == "done" {
			return st.Prefetch[ds]
		}
		if time.Now().After(deadline) {
			t.Fatalf("the prefetch of %s did not finish: %+v\n%s", ds, st.Prefetch, m.log)
		}
	}
}
