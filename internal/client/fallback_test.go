package client

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// fallbackEnv is two datasets over two workers that list and stat but fail
// every block and every ping, so that each read ends on the UFS.
func fallbackEnv(t *testing.T) (*env, map[string]*File, map[string][]byte) {
	e := newEnv(t, envOpts{
		workers:  2,
		datasets: map[string]string{"a": "", "b": "", "none": "fallback: none"},
		client:   "fallback_reads_per_second: 5",
	})
	files, data := map[string]*File{}, map[string][]byte{}
	for _, ds := range []string{"a", "b", "none"} {
		data[ds] = e.write(ds, "f", 2*testBlockSize)
		files[ds] = e.open("/" + ds + "/f")
	}
	e.setAll(blockAnswer, answerClose) // no answer: marked down
	e.setAll(pingAnswer, answerBusy)
	return e, files, data
}

// readBlock0 reads the first 1000 bytes of the file (one block: one
// fallback read when every owner fails).
func readBlock0(f *File, want []byte) error {
	buf := make([]byte, 1000)
	if _, err := f.ReadAt(buf, 100); err != nil {
		return err
	}
	if !bytes.Equal(buf, want[100:1100]) {
		return errors.New("wrong bytes")
	}
	return nil
}

func TestFallbackReadsTheUFS(t *testing.T) {
	e, files, data := fallbackEnv(t)
	for range 3 {
		if err := readBlock0(files["a"], data["a"]); err != nil {
			t.Fatal(err)
		}
	}
	// A read of two blocks is two fallback reads.
	if got := readAll(t, files["b"]); !bytes.Equal(got, data["b"]) {
		t.Fatal("wrong bytes")
	}
	st := e.c.Stats()
	if st.FallbackReads != 5 || st.FallbackByDataset["a"] != 3 || st.FallbackByDataset["b"] != 2 || st.FallbackByDataset["none"] != 0 {
		t.Errorf("stats %+v, want 5 fallback reads: 3 of a, 2 of b", st)
	}
	if st.RemoteReads != 0 {
		t.Errorf("remote reads %d, want 0", st.RemoteReads)
	}
	// The same cluster fails a dataset with fallback: none.
	err := readBlock0(files["none"], data["none"])
	if !errors.Is(err, errAllOwnersFailed) || !strings.Contains(err.Error(), "every owner failed") {
		t.Errorf("read of a dataset with fallback none: %v, want every owner failed", err)
	}
	if n := e.c.Stats().FallbackByDataset["none"]; n != 0 {
		t.Errorf("%d fallback reads of a dataset with fallback none", n)
	}
}

// Each dataset has its own budget of fallback reads: one that used its
// burst makes the next reads of that dataset wait, not those of another.
func TestFallbackLimitIsPerDataset(t *testing.T) {
	e, files, data := fallbackEnv(t)
	la, lb := e.c.fallbacks["a"].limit, e.c.fallbacks["b"].limit
	if la == lb {
		t.Fatal("two datasets share a limiter")
	}
	if la.Burst() != 5 || float64(la.Limit()) != 5 {
		t.Fatalf("limiter of %v/s, burst %d; want 5/s, burst 5", la.Limit(), la.Burst())
	}
	// Five reads of a use its burst, and nothing of b's.
	for range 5 {
		if err := readBlock0(files["a"], data["a"]); err != nil {
			t.Fatal(err)
		}
	}
	if tok := la.Tokens(); tok > 1 {
		t.Errorf("a has %.2f tokens left after 5 reads at burst 5", tok)
	}
	if tok := lb.Tokens(); tok < 4.9 {
		t.Errorf("b has %.2f tokens after reads of a alone, want 5", tok)
	}
	// So a's next read waits for its next token (5 per second)...
	tok := la.Tokens()
	t0 := time.Now()
	if err := readBlock0(files["a"], data["a"]); err != nil {
		t.Fatal(err)
	}
	if d, want := time.Since(t0), time.Duration((1-tok)/5*float64(time.Second)); d < want*8/10 {
		t.Errorf("a read of a past its burst took %v; want it to wait about %v for a token", d, want)
	}
	// ...while b's five are not held back.
	t0 = time.Now()
	for range 5 {
		if err := readBlock0(files["b"], data["b"]); err != nil {
			t.Fatal(err)
		}
	}
	if d := time.Since(t0); d > 600*time.Millisecond {
		t.Errorf("5 reads of b, within its burst, took %v", d)
	}
	if st := e.c.Stats(); st.FallbackByDataset["a"] != 6 || st.FallbackByDataset["b"] != 5 {
		t.Errorf("stats %+v, want 6 fallback reads of a and 5 of b", st)
	}
}

// Ten concurrent reads of each of two datasets at 5 per second (burst 5):
// each dataset needs about a second of its own budget. One shared budget
// would take about three.
func TestFallbackConcurrentDatasets(t *testing.T) {
	t.Parallel() // a second of waiting
	e, files, data := fallbackEnv(t)
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	ends := map[string]*time.Time{"a": new(time.Time), "b": new(time.Time)}
	var mu sync.Mutex
	for _, ds := range []string{"a", "b"} {
		for range 10 {
			wg.Go(func() {
				if err := readBlock0(files[ds], data[ds]); err != nil {
					errs <- fmt.Errorf("%s: %w", ds, err)
				}
				mu.Lock()
				if now := time.Now(); now.After(*ends[ds]) {
					*ends[ds] = now
				}
				mu.Unlock()
			})
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for ds, end := range ends {
		d := end.Sub(start)
		if d < 700*time.Millisecond {
			t.Errorf("10 fallback reads of %s took %v: the limit (5/s, burst 5) did not hold", ds, d)
		}
		if d > 2500*time.Millisecond {
			t.Errorf("10 fallback reads of %s took %v: it waited for the other dataset's budget", ds, d)
		}
	}
	if st := e.c.Stats(); st.FallbackReads != 20 || st.FallbackByDataset["a"] != 10 || st.FallbackByDataset["b"] != 10 {
		t.Errorf("stats %+v, want 10 fallback reads of each dataset", st)
	}
}

// With every owner failing metadata too, stat and list come from the UFS,
// counted as fallback reads.
func TestFallbackMetadata(t *testing.T) {
	e := newEnv(t, envOpts{workers: 2, datasets: map[string]string{"a": "", "none": "fallback: none"}})
	e.write("a", "dir/f", 10)
	e.write("a", "dir/g", 20)
	e.write("none", "f", 10)
	e.setAll(metaAnswer, answerBusy)
	e.setAll(pingAnswer, answerBusy)
	fi, err := e.c.Stat(t.Context(), "/a/dir/g")
	if err != nil || fi.Size != 20 {
		t.Fatalf("stat: %+v, %v", fi, err)
	}
	list, err := e.c.List(t.Context(), "/a/dir")
	if err != nil || len(list) != 2 || list[0].Name != "f" || list[1].Name != "g" {
		t.Fatalf("list: %+v, %v", list, err)
	}
	if n := e.c.Stats().FallbackByDataset["a"]; n < 1 {
		t.Errorf("%d fallback reads of metadata", n)
	}
	if _, err := e.c.Stat(t.Context(), "/none/f"); !errors.Is(err, errAllOwnersFailed) {
		t.Errorf("stat with fallback none: %v, want every owner failed", err)
	}
}

// The collector exports the fallback reads by dataset, the retries, the
// workers marked down and the membership's health.
func TestCollector(t *testing.T) {
	e, files, data := fallbackEnv(t)
	for range 3 {
		if err := readBlock0(files["a"], data["a"]); err != nil {
			t.Fatal(err)
		}
	}
	if err := readBlock0(files["b"], data["b"]); err != nil {
		t.Fatal(err)
	}
	// Each read tried both workers: one retry each.
	want := `
# HELP granary_client_fallback_reads_total Reads sent straight to the UFS because no owner answered, by dataset.
# TYPE granary_client_fallback_reads_total counter
granary_client_fallback_reads_total{dataset="a"} 3
granary_client_fallback_reads_total{dataset="b"} 1
granary_client_fallback_reads_total{dataset="none"} 0
# HELP granary_client_workers_down Workers this client has marked down (they did not answer a probe).
# TYPE granary_client_workers_down gauge
granary_client_workers_down 2
# HELP granary_client_retries_total Requests moved to the next owner after a worker failed.
# TYPE granary_client_retries_total counter
granary_client_retries_total 4
# HELP granary_client_remote_reads_total Block reads served by a worker over the network.
# TYPE granary_client_remote_reads_total counter
granary_client_remote_reads_total 0
# HELP granary_client_membership_healthy 1 when the client is in touch with its membership backend.
# TYPE granary_client_membership_healthy gauge
granary_client_membership_healthy 1
`
	if err := testutil.CollectAndCompare(e.c.Collector(), strings.NewReader(want),
		"granary_client_fallback_reads_total", "granary_client_workers_down", "granary_client_retries_total",
		"granary_client_remote_reads_total", "granary_client_membership_healthy"); err != nil {
		t.Error(err)
	}
	// It registers cleanly (descriptions match what it collects).
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(e.c.Collector())
	if _, err := reg.Gather(); err != nil {
		t.Errorf("gather: %v", err)
	}
	if n := testutil.CollectAndCount(e.c.Collector()); n != 8 {
		t.Errorf("%d series, want 8 (3 datasets, 5 others)", n)
	}
}
