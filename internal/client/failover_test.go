package client

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/granary-cache/granary/internal/ufs"
	"github.com/granary-cache/granary/internal/wire"
)

// A first owner that fails as a worker does (503 retryable, a connection
// closed without an answer) costs a retry: the next owner serves the read.
// A worker that did not answer is marked down (later reads go elsewhere
// first); one that answered busy is only passed over for this read.
func TestReadFailsOverToTheNextOwner(t *testing.T) {
	for _, tc := range []struct {
		name string
		mode int32
	}{{"busy", answerBusy}, {"closed", answerClose}} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, envOpts{workers: 3, datasets: map[string]string{"a": ""}})
			want := e.write("a", "dir/f", 1000)
			f := e.open("/a/dir/f")
			bad := e.firstOwner("a", "dir/f", 0)
			bad.block.Store(tc.mode)
			bad.ping.Store(answerBusy) // and it stays down while the test looks
			if got := readAll(t, f); !bytes.Equal(got, want) {
				t.Fatal("wrong bytes")
			}
			st := e.c.Stats()
			if st.Retries != 1 || st.RemoteReads != 1 || st.FallbackReads != 0 {
				t.Errorf("stats %+v, want 1 retry, 1 remote read, no fallback", st)
			}
			if bad.blocks.Load() == 0 {
				t.Error("the first owner was not asked")
			}
			if down := e.c.reach.Down(bad.id); down != (tc.mode == answerClose) {
				t.Errorf("%s failed (%s); marked down: %v", bad.id, tc.name, down)
			}
			served := 0
			for _, fw := range e.workers {
				if fw != bad {
					served += int(fw.blocks.Load())
				}
			}
			if served != 1 {
				t.Errorf("the other workers served %d block requests, want 1", served)
			}
			// The next read of the same block goes to a live owner first
			// when the first did not answer; a busy one is asked again.
			if got := readAll(t, f); !bytes.Equal(got, want) {
				t.Fatal("wrong bytes")
			}
			wantRetries := int64(1)
			if tc.mode == answerBusy {
				wantRetries = 2
			}
			if st := e.c.Stats(); st.Retries != wantRetries {
				t.Errorf("retries %d after a second read, want %d", st.Retries, wantRetries)
			}
		})
	}
}

// An error of the UFS (the file is gone) is what any worker would say: it
// is returned at once, without a retry, and nobody is marked down.
func TestReadReturnsUFSErrorsAtOnce(t *testing.T) {
	e := newEnv(t, envOpts{workers: 3, datasets: map[string]string{"a": ""}})
	e.write("a", "f", 1000)
	f := e.open("/a/f")
	first := e.firstOwner("a", "f", 0)
	first.block.Store(answerNotExist)
	_, err := f.ReadAt(make([]byte, 10), 0)
	if !errors.Is(err, fs.ErrNotExist) || ufs.ClassOf(err) != ufs.ClassNotExist {
		t.Fatalf("read: %v, want a not_exist error of the UFS", err)
	}
	if errors.Is(err, errAllOwnersFailed) || errors.Is(err, wire.ErrWorker) {
		t.Errorf("read: %v is taken for a worker failure", err)
	}
	st := e.c.Stats()
	if st.Retries != 0 || st.FallbackReads != 0 {
		t.Errorf("stats %+v, want no retry and no fallback", st)
	}
	for _, fw := range e.workers {
		if fw != first && fw.blocks.Load() != 0 {
			t.Errorf("%s was asked after %s answered an error of the UFS", fw.id, first.id)
		}
		if e.c.reach.Down(fw.id) {
			t.Errorf("%s is marked down", fw.id)
		}
	}
}

// Metadata fails over like data: the first owner of a directory's listing
// is busy, the next one lists it.
func TestMetadataFailsOver(t *testing.T) {
	e := newEnv(t, envOpts{workers: 3, datasets: map[string]string{"a": ""}})
	e.write("a", "dir/f", 100)
	d, _ := e.c.Dataset("a")
	first := e.byID[e.c.owners(wire.MetaKey("a", "dir"), d.Replicas)[0].ID]
	first.meta.Store(answerBusy)
	first.ping.Store(answerBusy)
	fi, err := e.c.Stat(t.Context(), "/a/dir/f")
	if err != nil || fi.Size != 100 {
		t.Fatalf("stat: %+v, %v", fi, err)
	}
	if st := e.c.Stats(); st.Retries != 1 || st.FallbackReads != 0 {
		t.Errorf("stats %+v, want 1 retry and no fallback", st)
	}
	if e.c.reach.Down(first.id) {
		t.Errorf("%s answered busy and was marked down", first.id)
	}
}

// A worker that hangs (a cut-off host) and does not answer a probe costs a
// read about probe_after + connect_timeout, not client.timeout; every read
// in flight to it moves to the next owner when it is marked down.
func TestHangingWorkerIsLeftAfterAProbe(t *testing.T) {
	t.Parallel() // a second of waiting for the background probe
	e := newEnv(t, envOpts{
		workers:  3,
		datasets: map[string]string{"a": ""},
		client:   "timeout: 30s\nprobe_after: 100ms\nconnect_timeout: 100ms",
	})
	want := e.write("a", "f", 3000)
	f := e.open("/a/f")
	hung := e.firstOwner("a", "f", 0)
	hung.block.Store(answerHang)
	hung.ping.Store(answerHang)
	// Drain what arrived so far (metadata requests).
	for len(hung.arrived) > 0 {
		<-hung.arrived
	}

	type result struct {
		data []byte
		err  error
		at   time.Time
	}
	results := make([]result, 2)
	start := time.Now()
	var wg sync.WaitGroup
	read := func(i int) {
		wg.Go(func() {
			buf := make([]byte, len(want))
			_, err := f.ReadAtContext(context.Background(), buf, 0)
			results[i] = result{buf, err, time.Now()}
		})
	}
	waitBlock := func() {
		t.Helper()
		for {
			select {
			case p := <-hung.arrived:
				if p == wire.PathBlock {
					return
				}
			case <-time.After(5 * time.Second):
				t.Fatal("the hanging worker was not asked for the block")
			}
		}
	}
	// Two reads in flight to the hanging worker; the second starts later,
	// and its own probe would find one already running.
	read(0)
	waitBlock()
	time.Sleep(30 * time.Millisecond)
	read(1)
	waitBlock()
	wg.Wait()

	for i, r := range results {
		if r.err != nil {
			t.Fatalf("read %d: %v", i, r.err)
		}
		if !bytes.Equal(r.data, want) {
			t.Fatalf("read %d: wrong bytes", i)
		}
		if d := r.at.Sub(start); d > 5*time.Second {
			t.Errorf("read %d took %v: it waited for the request timeout, not a probe", i, d)
		}
	}
	// Both were cancelled by the one mark: they end together, well before
	// the second read could have been probed on its own.
	if gap := results[1].at.Sub(results[0].at).Abs(); gap > time.Second {
		t.Errorf("the reads ended %v apart; want them cancelled together", gap)
	}
	if !e.c.reach.Down(hung.id) {
		t.Errorf("%s is not marked down", hung.id)
	}
	if n := hung.blocks.Load(); n != 2 {
		t.Errorf("the hanging worker saw %d block requests, want 2", n)
	}
	eventually(t, "the hanging worker to see both requests cancelled", func() bool { return hung.cancelled.Load() >= 3 }) // 2 blocks + the probe
	st := e.c.Stats()
	if st.Retries != 2 || st.RemoteReads != 2 || st.FallbackReads != 0 {
		t.Errorf("stats %+v, want 2 retries, 2 remote reads, no fallback", st)
	}

	// A third read goes to a live owner first, at once.
	t0 := time.Now()
	if got := readAll(t, f); !bytes.Equal(got, want) {
		t.Fatal("wrong bytes")
	}
	if d := time.Since(t0); d > time.Second {
		t.Errorf("a read after the worker was marked down took %v", d)
	}
	if n := hung.blocks.Load(); n != 2 {
		t.Errorf("the hanging worker, marked down, was asked again (%d block requests)", n)
	}

	// Once it answers again, the background probe clears the mark (about
	// a second: Reach.Recheck's default). Waiting for it also orders the
	// probe's MarkDown before Client.Close: without that, -race reports
	// Reach's WaitGroup used concurrently by MarkDown (wg.Go) and Close
	// (wg.Wait); see the report.
	hung.ping.Store(answerOK)
	eventually(t, "the worker to be marked up again", func() bool { return !e.c.reach.Down(hung.id) })
}

// A read whose every owner fails, with fallback: none, fails and says that
// every owner failed, naming each.
func TestReadWithoutFallbackFails(t *testing.T) {
	e := newEnv(t, envOpts{workers: 2, datasets: map[string]string{"a": "fallback: none"}})
	e.write("a", "f", 100)
	f := e.open("/a/f")
	e.setAll(blockAnswer, answerBusy)
	_, err := f.ReadAt(make([]byte, 100), 0)
	if !errors.Is(err, errAllOwnersFailed) || !errors.Is(err, wire.ErrWorker) {
		t.Fatalf("read: %v, want every owner failed", err)
	}
	for _, want := range []string{"every owner failed", "worker w0", "worker w1"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if st := e.c.Stats(); st.FallbackReads != 0 || st.FallbackByDataset["a"] != 0 {
		t.Errorf("stats %+v: a dataset with fallback none read the UFS", st)
	}
}

// A read that spans blocks fetches each from its own owners and puts the
// bytes in place; reads at and past the end follow io.ReaderAt.
func TestReadAcrossBlocks(t *testing.T) {
	e := newEnv(t, envOpts{workers: 3, datasets: map[string]string{"a": ""}})
	size := 3*testBlockSize + 123
	want := e.write("a", "big", size)
	f := e.open("/a/big")
	if got := readAll(t, f); !bytes.Equal(got, want) {
		t.Fatal("wrong bytes")
	}
	if st := e.c.Stats(); st.RemoteReads != 4 {
		t.Errorf("remote reads %d, want 4 (one per block)", st.RemoteReads)
	}
	// A range across a block boundary.
	buf := make([]byte, 1000)
	off := int64(testBlockSize - 500)
	if n, err := f.ReadAt(buf, off); n != 1000 || err != nil || !bytes.Equal(buf, want[off:off+1000]) {
		t.Errorf("read across a boundary: %d, %v", n, err)
	}
	// A read past the end is short, with io.EOF.
	n, err := f.ReadAt(buf, int64(size-10))
	if n != 10 || err == nil || !bytes.Equal(buf[:10], want[size-10:]) {
		t.Errorf("read at the end: %d, %v", n, err)
	}
	if n, err := f.ReadAt(buf, int64(size)); n != 0 || err == nil {
		t.Errorf("read past the end: %d, %v", n, err)
	}
	if _, err := f.ReadAt(buf, -1); err == nil {
		t.Error("read at a negative offset succeeded")
	}
}
