package prefetch

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/granary-cache/granary/internal/client"
	"github.com/granary-cache/granary/internal/config"
	"github.com/granary-cache/granary/internal/granarytest"
	"github.com/granary-cache/granary/internal/localcluster"
	"github.com/granary-cache/granary/internal/ufs"
)

// env is a dataset of files served by in-process workers, and a client.
type env struct {
	c     *client.Client
	files map[string][]byte
}

func newEnv(t *testing.T, files, size int, memQuota int64, limits string) *env {
	t.Helper()
	dir := t.TempDir()
	e := &env{files: map[string][]byte{}}
	for i := range files {
		name := fmt.Sprintf("class%d/img%03d.jpg", i%4, i)
		data := bytes.Repeat([]byte{byte(i), byte(i >> 8), 7}, size/3+1)[:size]
		p := filepath.Join(dir, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		e.files[name] = data
	}
	cfg, err := config.Parse("test.yaml", fmt.Appendf(nil, "datasets:\n  - {name: ds, ufs: \"file://%s\"%s}\n", dir, limits))
	if err != nil {
		t.Fatal(err)
	}
	e.c = granarytest.InProcess(t, localcluster.Options{Config: cfg, Workers: 2, MemQuota: memQuota, Log: slog.New(slog.DiscardHandler)})
	return e
}

// ufsReads is what the workers read from the dataset's UFS so far.
func (e *env) ufsReads() ufs.Stats {
	for _, d := range e.c.ClusterStatus(context.Background()).Datasets {
		if d.Name == "ds" {
			return d.Operations
		}
	}
	return ufs.Stats{}
}

// waitState waits (boundedly) until the dataset's prefetch is in state.
func waitState(t *testing.T, p *Prefetcher, state string, touch bool) Status {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if touch {
			p.Touch("ds")
		}
		st := p.Status()["ds"]
		if st.State == state {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("prefetch never reached %s: %+v", state, st)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestPrefetchCachesTheDataset: a first read starts the prefetch, which
// caches every file; the job then reads them all without the UFS.
func TestPrefetchCachesTheDataset(t *testing.T) {
	e := newEnv(t, 40, 50<<10, 64<<20, "")
	p := New(e.c, Options{Retry: 100 * time.Millisecond, Idle: 10 * time.Second})
	defer p.Close()
	if st := p.Status()["ds"]; st.State != StateIdle {
		t.Fatalf("before any read: %+v", st)
	}
	e.c.SetReadHook(p.Touch)
	f, err := e.c.Open(context.Background(), "/ds/class0/img000.jpg") // the job's first read
	if err != nil {
		t.Fatal(err)
	}
	io.ReadAll(io.NewSectionReader(f, 0, f.Size()))
	st := waitState(t, p, StateDone, false)
	if st.Progress.Files != 40 || st.Runs != 1 || !strings.Contains(st.Reason, "40 files") {
		t.Errorf("done: %+v", st)
	}
	before := e.ufsReads()
	for name, want := range e.files {
		f, err := e.c.Open(context.Background(), "/ds/"+name)
		if err != nil {
			t.Fatal(err)
		}
		got := make([]byte, f.Size())
		if _, err := f.ReadAt(got, 0); err != nil || !bytes.Equal(got, want) {
			t.Fatalf("%s: %v", name, err)
		}
	}
	if after := e.ufsReads(); after.Read != before.Read {
		t.Errorf("the epoch after the prefetch read the UFS %d times; want 0", after.Read-before.Read)
	}
	if before.Read > 40 {
		t.Errorf("prefetch and first read made %d UFS reads of 40 files; want each once", before.Read)
	}
	if p.LoadedBytes() == 0 {
		t.Error("no loaded bytes counted")
	}
}

// TestPrefetchOffWhenTooLarge: a dataset that does not fit in the cache's
// room is not prefetched, and the status says why.
func TestPrefetchOffWhenTooLarge(t *testing.T) {
	e := newEnv(t, 40, 256<<10, 4<<20, "") // 10 MiB of files, 2 × 4 MiB of cache
	p := New(e.c, Options{Retry: 100 * time.Millisecond})
	defer p.Close()
	before := e.ufsReads()
	st := waitState(t, p, StateOff, true)
	if !strings.Contains(st.Reason, "room") {
		t.Errorf("off: %+v; want a reason naming the cache's room", st)
	}
	if after := e.ufsReads(); after.Read != before.Read {
		t.Errorf("a dataset too large was read from the UFS %d times", after.Read-before.Read)
	}
}

// TestPrefetchStopsWhenTheJobStops: with no reads for Idle the prefetch
// ends and reads from the UFS stop; the next read resumes it.
func TestPrefetchStopsWhenTheJobStops(t *testing.T) {
	// 400 files of 16 KiB from a UFS that gives each worker 128 KiB/s:
	// 25 s to load all, far more files than the workers fetch at once.
	e := newEnv(t, 400, 16<<10, 64<<20, ", ufs_limits: {bytes_per_second: 128KiB}")
	p := New(e.c, Options{Retry: 100 * time.Millisecond, Idle: 300 * time.Millisecond})
	defer p.Close()
	waitState(t, p, StateRunning, true)
	t0 := time.Now()
	st := waitState(t, p, StateStopped, false) // no more touches: the job stopped
	t.Logf("stopped %v after the last read; UFS %+v", time.Since(t0), e.ufsReads())
	if !strings.Contains(st.Reason, "job stopped") {
		t.Errorf("stopped: %+v", st)
	}
	time.Sleep(200 * time.Millisecond) // a fetch the workers began as the cancel came has started
	stoppedAt := e.ufsReads().Read
	time.Sleep(time.Second)
	if grew := e.ufsReads().Read - stoppedAt; grew > 0 {
		t.Errorf("%d more UFS reads began after the prefetch stopped", grew)
	}
	if stoppedAt >= 400 {
		t.Fatalf("every file was read before the stop (%d reads): the test proves nothing", stoppedAt)
	}
	waitState(t, p, StateRunning, true)
	if st := p.Status()["ds"]; st.Runs != 2 {
		t.Errorf("after the job read again: %+v; want a second run", st)
	}
}
