package cluster

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/granary-cache/granary/internal/client"
)

// TestReadBatchFramed: a data loader's batch of small files read through
// worker processes on the framed block protocol, each worker's share in
// one request; then again with one worker killed, whose share moves to
// the next owners.
func TestReadBatchFramed(t *testing.T) {
	dir := t.TempDir()
	want := map[string][]byte{}
	for i := range 64 {
		name := fmt.Sprintf("s%02d.bin", i)
		want[name] = bytes.Repeat([]byte{byte(i), byte(i >> 3)}, 20<<10+i)
		if err := os.WriteFile(filepath.Join(dir, name), want[name], 0o644); err != nil {
			t.Fatal(err)
		}
	}
	c := startCluster(t, clusterOpts{workers: 3, datasets: fmt.Sprintf("  - {name: d, ufs: \"file://%s\", replicas: 2}\n", dir)})
	cl := c.client(false)
	batch := func() {
		t.Helper()
		var reads []*client.BatchRead
		for name, data := range want {
			reads = append(reads, &client.BatchRead{Path: "/d/" + name, Buf: make([]byte, len(data))})
		}
		cl.ReadBatch(context.Background(), reads)
		for _, r := range reads {
			name := filepath.Base(r.Path)
			if r.Err != nil || r.N != len(want[name]) || !bytes.Equal(r.Buf, want[name]) {
				t.Fatalf("%s: %d bytes, %v", r.Path, r.N, r.Err)
			}
		}
	}
	before := c.metric("granary_worker_framed_reads_total")
	batch()
	if got := c.metric("granary_worker_framed_reads_total") - before; got != 64 {
		t.Errorf("the workers served %v reads on the framed protocol; want the batch's 64", got)
	}
	c.stop(c.workers[0], syscall.SIGKILL)
	batch()
	if st := cl.Stats(); st.Retries == 0 {
		t.Errorf("no read moved to another owner after a worker died: %+v", st)
	}
}
