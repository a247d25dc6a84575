package multihost

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/granary-cache/granary/internal/block"
	"github.com/granary-cache/granary/internal/client"
	"github.com/granary-cache/granary/internal/wire"
)

// TestEtcdOutage: etcd stopped for 30 s under reads: the reads go on with
// the last member set, the workers say so in /healthz; etcd back, every
// member is live again and everyone sees it.
func TestEtcdOutage(t *testing.T) {
	w := newWorld(t, worldOpts{workers: 3, mounts: []string{"m1"}})
	m := w.mount("m1")
	readEpoch(t, m.dir, "r2", 16, 1, 0, nil).check(t, "before the outage")
	w.etcd.Stop()
	stopped := time.Now()
	for _, wp := range w.workers {
		waitFor(t, wp.host.Name+" to notice", 20*time.Second, func() bool {
			return strings.Contains(healthz(wp), "unreachable since")
		})
	}
	for i := 0; time.Since(stopped) < 30*time.Second; i++ {
		readEpoch(t, m.dir, "r2", 16, uint64(10+i), 0, nil).check(t, fmt.Sprintf("epoch %d without etcd", i+1))
	}
	if v := metric("http://"+w.workers["w1"].admin()+"/metrics", "granary_membership_healthy"); v != 0 {
		t.Errorf("granary_membership_healthy is %v while etcd is down", v)
	}
	w.etcd.Restart(t)
	for _, wp := range w.workers {
		waitFor(t, wp.host.Name+" to reach etcd again", 30*time.Second, func() bool {
			h := healthz(wp)
			return strings.Contains(h, "membership etcd: ok")
		})
	}
	c := w.client()
	w.waitLive(c, 3)
	waitFor(t, "the mount to see etcd again", 30*time.Second, func() bool {
		return metric("http://"+m.admin+"/metrics", "granary_client_membership_healthy") == 1
	})
	readEpoch(t, m.dir, "r2", 16, 99, 0, nil).check(t, "after the outage")
}

func healthz(wp *workerProc) string {
	hc := &http.Client{Timeout: 2 * time.Second}
	resp, err := hc.Get("http://" + wp.admin() + "/healthz")
	if err != nil {
		return err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// TestWorkerJoinsUnderLoad: a fourth worker joins while a mount reads: no
// read fails, and only its share of the keys moves (at most 1/4 + 2 %).
func TestWorkerJoinsUnderLoad(t *testing.T) {
	w := newWorld(t, worldOpts{workers: 3, mounts: []string{"m1"}})
	m := w.mount("m1")
	c := w.client()
	w.waitLive(c, 3)
	before := sampleOwners(c.Membership().Current(), 50000)
	blocksBefore := blockOwners(c)
	readEpoch(t, m.dir, "r1", 16, 1, 0, nil).check(t, "three workers")
	e := readEpoch(t, m.dir, "r1", 16, 2, 0.2, func() { w.addWorker("w4") })
	e.check(t, "epoch while w4 joins")
	w.waitLive(c, 4)
	moved := float64(diff(before, sampleOwners(c.Membership().Current(), 50000))) / 50000
	blocksMoved := float64(diff(blocksBefore, blockOwners(c))) / float64(len(blocksBefore))
	t.Logf("keys moved when w4 joined: %.2f%% of 50000 sample keys, %.2f%% of the dataset's %d blocks", 100*moved, 100*blocksMoved, len(blocksBefore))
	if moved > 0.25+0.02 {
		t.Errorf("%.2f%% of the keys moved; want at most 27%%", 100*moved)
	}
	readEpoch(t, m.dir, "r1", 16, 3, 0, nil).check(t, "four workers")
	if served := w.workerMetric(w.workers["w4"], "granary_worker_requests_total", `op="block"`); served <= 0 {
		t.Errorf("w4 served no block")
	}
}

// blockOwners places every block of the dataset.
func blockOwners(c *client.Client) []string {
	var out []string
	for _, name := range sortedNames() {
		for idx := range max(1, (data.sizes[name]+blockSize-1)/blockSize) {
			m, _ := c.Membership().Current().Table().Owner(block.PlacementKey("r1", name, int64(idx)))
			out = append(out, m.ID)
		}
	}
	return out
}

// TestRestartKeepsCache: a worker restarted on its state directory keeps
// its identity, hence its keys, and its cache: the next epoch hits.
func TestRestartKeepsCache(t *testing.T) {
	w := newWorld(t, worldOpts{workers: 3, mounts: []string{"m1"}})
	m := w.mount("m1")
	c := w.client()
	w.waitLive(c, 3)
	ids := fmt.Sprint(ringIDs(c.Membership().Current()))
	readEpoch(t, m.dir, "r1", 16, 1, 0, nil).check(t, "cold epoch")
	wp := w.workers["w2"]
	w.restart(wp)
	w.waitLive(c, 3)
	if got := fmt.Sprint(ringIDs(c.Membership().Current())); got != ids {
		t.Fatalf("members were %s, after the restart %s: the worker did not keep its identity", ids, got)
	}
	waitFor(t, "the mount to see w2 live", 20*time.Second, func() bool {
		return metric("http://"+m.admin+"/metrics", "granary_client_workers_down") == 0
	})
	readEpoch(t, m.dir, "r1", 16, 2, 0, nil).check(t, "epoch after the restart")
	hit := w.workerMetric(wp, "granary_worker_pages_total", `result="hit"`)
	miss := w.workerMetric(wp, "granary_worker_pages_total", `result="miss"`)
	t.Logf("restarted worker: %v page hits, %v misses", hit, miss)
	if hit == 0 || hit/(hit+miss) < 0.99 {
		t.Errorf("restarted worker: %v hits, %v misses: below 99%% hits", hit, miss)
	}
}

// TestLoadCancelResume: `granary load` of the imagenet bench profile
// across 3 workers with replicas 2, cancelled halfway (SIGINT) and run
// again: the second run skips what the first loaded, afterwards every block
// is cached exactly twice, and an epoch costs the UFS nothing.
func TestLoadCancelResume(t *testing.T) {
	// A slow UFS, so that the load is cancelled halfway for sure.
	dir, w, c, cfg := imagenetWorld(t, "48MiB", "replicas: 2, ufs_limits: {bytes_per_second: 6MiB}")

	signalled := false
	first, stderr, err := runLoad(t, cfg, func(p wire.LoadProgress, proc *os.Process) {
		if !signalled && p.BytesDone >= p.Bytes/3 {
			proc.Signal(syscall.SIGINT)
			signalled = true
		}
	})
	if !signalled || err == nil || !strings.Contains(stderr, "cancelled") {
		t.Fatalf("the first load was not cancelled (signalled %v, exit %v): %s", signalled, err, stderr)
	}
	t.Logf("cancelled at %d of %d bytes", first.Progress.BytesDone, first.Progress.Bytes)
	res, stderr, err := runLoad(t, cfg, nil)
	if err != nil {
		t.Fatalf("second load: %v\n%s", err, stderr)
	}
	p := res.Progress
	t.Logf("second load: %+v in %.1fs", p, res.Elapsed)
	if p.State != wire.LoadDone || p.Failed != 0 || p.FilesDone != p.Files || p.BytesSkipped == 0 || p.BytesSkipped >= p.Bytes {
		t.Errorf("the second load did not resume: %+v", p)
	}

	// Every block of every file, exactly twice, on its two owners.
	want := map[string]int{}
	filepathWalk(t, dir, func(rel string, size int64) {
		for idx := range (size + blockSize - 1) / blockSize {
			want[fmt.Sprintf("%s#%d", rel, idx)] = 0
		}
	})
	for name, wp := range w.workers {
		for _, b := range cachedBlocks(t, w, wp, "im") {
			k := fmt.Sprintf("%s#%d", b.Path, b.Index)
			if _, ok := want[k]; !ok || !b.Complete || b.Near {
				t.Errorf("%s holds %s (complete %v, near %v): not a block of the dataset", name, k, b.Complete, b.Near)
				continue
			}
			want[k]++
		}
	}
	for k, n := range want {
		if n != 2 {
			t.Errorf("block %s is cached %d times, want 2", k, n)
		}
	}
	// An epoch costs the UFS nothing.
	before := w.ufsReads("im")
	for _, rel := range walkFiles(t, dir) {
		f, err := c.Open(t.Context(), "/im/"+rel)
		if err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, f.Size())
		if _, err := f.ReadAt(buf, 0); err != nil && err != io.EOF {
			t.Fatal(err)
		}
	}
	if after := w.ufsReads("im"); after != before {
		t.Errorf("an epoch after the load made %v UFS reads", after-before)
	}
	// Status: the dataset's size as measured by the workers, all cached.
	var files, bytes int64
	filepathWalk(t, dir, func(_ string, size int64) { files, bytes = files+1, bytes+size })
	var st client.ClusterStatus
	waitFor(t, "the dataset measured", 30*time.Second, func() bool {
		out, err := exec.Command(granary, "status", "--json", "--config", cfg).Output()
		if err != nil || json.Unmarshal(out, &st) != nil || len(st.Datasets) != 1 {
			return false
		}
		u := st.Datasets[0].Usage
		return u != nil && u.Complete
	})
	ds := st.Datasets[0]
	if ds.Usage.Files != files || ds.Usage.Bytes != bytes || ds.CachedBytes != 2*bytes || ds.CachedPercent != 100 {
		t.Errorf("status says %d files, %d bytes, %d cached (%.1f%%); the dataset has %d files, %d bytes, cached twice",
			ds.Usage.Files, ds.Usage.Bytes, ds.CachedBytes, ds.CachedPercent, files, bytes)
	}
	// The load is on record, on every worker.
	out2, err := exec.Command(granary, "load", "status", "--config", cfg).CombinedOutput()
	if err != nil || strings.Count(string(out2), "/im/") != 2 || !strings.Contains(string(out2), "canceled") || !strings.Contains(string(out2), "done") {
		t.Errorf("load status: %v\n%s", err, out2)
	}
}

func cachedBlocks(t *testing.T, w *world, wp *workerProc, ds string) []wire.CachedBlock {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, "http://"+wp.host.Addr(7700)+wire.PathBlocks+"?ds="+ds, nil)
	tok, _ := os.ReadFile(w.token)
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(tok)))
	resp, err := http.DefaultClient.Do(req)
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

func filepathWalk(t *testing.T, dir string, fn func(rel string, size int64)) {
	t.Helper()
	err := filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil || fi.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		fn(rel, fi.Size())
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func walkFiles(t *testing.T, dir string) []string {
	var out []string
	filepathWalk(t, dir, func(rel string, _ int64) { out = append(out, rel) })
	return out
}

// loadResult is the last line of `granary load --json`.
type loadResult struct {
	Progress wire.LoadProgress `json:"progress"`
	Elapsed  float64           `json:"elapsed_seconds"`
	Failures []struct {
		Worker, Path, Error string
	} `json:"failures"`
}

// runLoad runs `granary load --json` of /im/ with cfg, calling each with
// every progress line, and returns its result, stderr and exit.
func runLoad(t *testing.T, cfg string, each func(wire.LoadProgress, *os.Process)) (loadResult, string, error) {
	t.Helper()
	cmd := exec.Command(granary, "load", "--json", "--config", cfg, "/im/")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var res loadResult
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		line := sc.Bytes()
		if strings.Contains(string(line), `"elapsed_seconds"`) {
			if err := json.Unmarshal(line, &res); err != nil {
				t.Fatalf("load result: %v: %s", err, line)
			}
			continue
		}
		var p wire.LoadProgress
		if json.Unmarshal(line, &p) == nil && p.Bytes > 0 && each != nil {
			each(p, cmd.Process)
		}
	}
	err = cmd.Wait()
	return res, stderr.String(), err
}

// TestLoadWorkerDies: a worker killed during granary load is reported, its
// blocks as failures; the next run loads its share on the next owners, and
// then every block is cached once on the live workers.
func TestLoadWorkerDies(t *testing.T) {
	dir, w, c, cfg := imagenetWorld(t, "32MiB", "ufs_limits: {bytes_per_second: 2MiB}")
	victim := w.workers["w3"]
	killed := false
	res, stderr, err := runLoad(t, cfg, func(p wire.LoadProgress, _ *os.Process) {
		// At the first progress line (after a second): every worker's share
		// takes about 5 s at 2 MiB/s.
		if !killed && p.BytesDone > 0 {
			victim.proc.Kill()
			killed = true
		}
	})
	if !killed || err == nil || res.Progress.Failed == 0 || res.Progress.State != wire.LoadFailed {
		t.Fatalf("the load with a dead worker: exit %v, %+v\n%s", err, res.Progress, stderr)
	}
	for _, f := range res.Failures {
		if f.Worker != victim.id(t, c) || f.Error == "" {
			t.Errorf("a failure on %s: %+v", f.Worker, f)
		}
	}
	t.Logf("first load: %d blocks failed, e.g. %+v", res.Progress.Failed, res.Failures[0])
	w.waitLive(c, 2)
	again, stderr, err := runLoad(t, cfg, nil)
	if err != nil || again.Progress.State != wire.LoadDone || again.Progress.Failed != 0 || again.Progress.FilesDone != again.Progress.Files {
		t.Fatalf("the load run again: exit %v, %+v\n%s", err, again.Progress, stderr)
	}
	t.Logf("second load: %+v", again.Progress)
	want := map[string]int{}
	filepathWalk(t, dir, func(rel string, size int64) {
		for idx := range (size + blockSize - 1) / blockSize {
			want[fmt.Sprintf("%s#%d", rel, idx)] = 0
		}
	})
	for _, name := range []string{"w1", "w2"} {
		for _, b := range cachedBlocks(t, w, w.workers[name], "im") {
			if b.Complete {
				want[fmt.Sprintf("%s#%d", b.Path, b.Index)]++
			}
		}
	}
	for k, n := range want {
		if n != 1 {
			t.Errorf("block %s is cached %d times on the live workers, want 1", k, n)
		}
	}
}

// id is the membership ID of a worker process (it made it up at its start).
func (wp *workerProc) id(t *testing.T, c *client.Client) string {
	for _, m := range c.Membership().Current().Members() {
		if m.Host == wp.host.Name {
			return m.ID
		}
	}
	t.Fatalf("no member on host %s", wp.host.Name)
	return ""
}

// imagenetWorld generates the imagenet bench profile at scale and starts 3
// workers serving it as dataset im with the given YAML settings; it returns
// the tree's directory, the world, a client and a client configuration.
func imagenetWorld(t *testing.T, scale, settings string) (string, *world, *client.Client, string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "imagenet")
	gen := exec.Command(granary, "bench", "gen", "--ufs", "file://"+dir, "--profile", "imagenet", "--scale", scale,
		"--files-per-dir", "100", "--quiet")
	if out, err := gen.CombinedOutput(); err != nil {
		t.Fatalf("bench gen: %v\n%s", err, out)
	}
	w := newWorld(t, worldOpts{workers: 3, datasets: fmt.Sprintf("  - {name: im, ufs: \"file://%s\", %s}\n", dir, settings)})
	c := w.client()
	w.waitLive(c, 3)
	return dir, w, c, w.clientConfig("tester")
}
