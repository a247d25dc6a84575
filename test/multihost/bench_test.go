package multihost

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/granary-cache/granary/internal/config"
	"github.com/granary-cache/granary/internal/load"
	"github.com/granary-cache/granary/internal/measure"
)

// The benchmarks of this package measure what the cluster's features buy,
// each as a ratio against a baseline measured in the same run, on hosts in
// network namespaces (test/cluster-bench.sh runs them; not part of CI):
//
//	BenchmarkLoadScaling   granary load of the imagenet profile, 3 workers ÷ 1
//	BenchmarkNearCopies    warm epoch with near copies ÷ without (3 workers,
//	                       the reader on one of their machines)
//	BenchmarkReplicas      warm epoch with replicas 2 ÷ replicas 1
//	BenchmarkRemoteEpoch   warm epoch through a mount on a machine with no
//	                       worker (every read a remote hit) ÷ the same files
//	                       read from a local directory
//
// GRANARY_BENCH_LOAD_SCALE sizes the loaded dataset (default 1GiB). Each
// builds whole clusters, so they run only with GRANARY_CLUSTER_BENCH=1 and
// -benchtime 1x (test/bench.sh leaves them out).

func benchRuns() int { return 3 }

func clusterBench(b *testing.B) {
	if os.Getenv("GRANARY_CLUSTER_BENCH") == "" {
		b.Skip("a cluster benchmark: run it with test/cluster-bench.sh")
	}
}

// BenchmarkLoadScaling times granary load of the imagenet profile across 3
// workers and across 1, alternating, and reports the median times and
// their ratio.
func BenchmarkLoadScaling(b *testing.B) {
	clusterBench(b)
	scale := os.Getenv("GRANARY_BENCH_LOAD_SCALE")
	if scale == "" {
		scale = "1GiB"
	}
	dir := filepath.Join(b.TempDir(), "imagenet")
	gen := exec.Command(granary, "bench", "gen", "--ufs", "file://"+dir, "--profile", "imagenet", "--scale", scale, "--quiet")
	if out, err := gen.CombinedOutput(); err != nil {
		b.Fatalf("bench gen: %v\n%s", err, out)
	}
	ds := fmt.Sprintf("  - {name: im, ufs: \"file://%s\"}\n", dir)
	times := map[int][]time.Duration{}
	for run := range benchRuns() {
		for _, n := range []int{3, 1} {
			b.Run(fmt.Sprintf("workers=%d/run=%d", n, run), func(b *testing.B) {
				w := newWorld(b, worldOpts{workers: n, datasets: ds, memQuota: "4GiB"})
				c := w.client()
				w.waitLive(c, n)
				drop(b)
				start := time.Now()
				res, err := load.Run(context.Background(), c, load.Options{Targets: []string{"/im/"}})
				took := time.Since(start)
				if err != nil {
					b.Fatalf("load: %v (%+v)", err, res.Progress)
				}
				times[n] = append(times[n], took)
				b.ReportMetric(float64(res.Progress.Bytes)/took.Seconds()/(1<<20), "MiB/s")
			})
		}
	}
	t3, t1 := measure.Median(times[3]), measure.Median(times[1])
	b.Logf("load of %s: 3 workers %v, 1 worker %v (medians of %d); 3 ÷ 1 = %.2f", scale, t3, t1, benchRuns(), t3.Seconds()/t1.Seconds())
}

// BenchmarkNearCopies reads a dataset that fits on one machine from a mount
// on w1's machine, warm, with near copies and without.
func BenchmarkNearCopies(b *testing.B) {
	clusterBench(b)
	ds := fmt.Sprintf("  - {name: near, ufs: \"file://%s\", near_cache: true}\n  - {name: far, ufs: \"file://%s\"}\n", dataDir, dataDir)
	w := newWorld(b, worldOpts{workers: 3, datasets: ds, memQuota: "1GiB"})
	m := w.mountOn(w.workers["w1"].host)
	warmRatio(b, m, "near", "far")
}

// BenchmarkReplicas reads a dataset from a mount on a machine without a
// worker, warm, with replicas 2 and replicas 1.
func BenchmarkReplicas(b *testing.B) {
	clusterBench(b)
	w := newWorld(b, worldOpts{workers: 3, mounts: []string{"m1"}, memQuota: "1GiB"})
	m := w.mount("m1")
	warmRatio(b, m, "r2", "r1")
}

// BenchmarkRemoteEpoch reads the dataset warm through a mount on a machine
// without a worker, so that every block is a remote hit on one of 3
// workers, and the same files from the local directory they came from,
// in turns. The local copy is in memory (tmpfs: dropping the page cache
// before each epoch, as for the mount, leaves it there), the ceiling of
// what a reader on that machine can get.
func BenchmarkRemoteEpoch(b *testing.B) {
	clusterBench(b)
	local, err := os.MkdirTemp("/dev/shm", "granary-bench")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(local) })
	if out, err := exec.Command("cp", "-a", dataDir, filepath.Join(local, "ufs")).CombinedOutput(); err != nil {
		b.Fatalf("copy the dataset to tmpfs: %v: %s", err, out)
	}
	w := newWorld(b, worldOpts{workers: 3, mounts: []string{"m1"}, memQuota: "1GiB"})
	m := w.mount("m1")
	readEpoch(b, m.dir, "r1", 16, 1, 0, nil).check(b, "r1: cold")
	times := map[string][]time.Duration{}
	roots := map[string][2]string{"mount": {m.dir, "r1"}, "local": {local, "ufs"}}
	for run := range 5 {
		for _, name := range []string{"mount", "local"} {
			r := roots[name]
			e := readEpoch(b, r[0], r[1], 16, uint64(run+2), 0, nil)
			e.check(b, name+": warm")
			times[name] = append(times[name], e.took)
		}
	}
	tm, tl := measure.Median(times["mount"]), measure.Median(times["local"])
	b.ReportMetric(tl.Seconds()/tm.Seconds(), "mount/local")
	b.Logf("warm epoch (%d files, %s, 16 readers): through a mount with every read remote %v, local directory %v (medians of 5); mount ÷ local throughput = %.2f",
		len(data.files), config.Size(data.bytes), tm, tl, tl.Seconds()/tm.Seconds())
}

// warmRatio warms two datasets through m, then reads them warm in turns
// (page cache dropped before each epoch) and reports the median epoch
// times and a ÷ base.
func warmRatio(b *testing.B, m *mountProc, a, base string) {
	for _, ds := range []string{a, base} {
		readEpoch(b, m.dir, ds, 16, 1, 0, nil).check(b, ds+": cold")
	}
	times := map[string][]time.Duration{}
	for run := range 5 {
		for _, ds := range []string{a, base} {
			e := readEpoch(b, m.dir, ds, 16, uint64(run+2), 0, nil)
			e.check(b, ds+": warm")
			times[ds] = append(times[ds], e.took)
		}
	}
	ta, tb := measure.Median(times[a]), measure.Median(times[base])
	b.ReportMetric(tb.Seconds()/ta.Seconds(), "speedup")
	b.Logf("warm epoch (%d files, %s): %s %v, %s %v (medians of 5); %s ÷ %s throughput = %.2f",
		len(data.files), config.Size(data.bytes), a, ta, base, tb, a, base, tb.Seconds()/ta.Seconds())
}

func drop(tb testing.TB) {
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("1"), 0); err != nil {
		tb.Fatalf("drop the page cache: %v", err)
	}
}
