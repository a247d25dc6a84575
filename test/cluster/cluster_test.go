package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/granary-cache/granary/internal/s3test"
	"github.com/granary-cache/granary/internal/wire"
)

// TestReadThroughThreeWorkers: every file read through 3 workers by 32
// readers has the source's sha256, cold then warm, over HTTP and
// short-circuit, from a directory and from a real S3 server; the warm passes
// cost the UFS nothing.
func TestReadThroughThreeWorkers(t *testing.T) {
	tr := makeTree(1, 300)
	dir := t.TempDir()
	tr.writeDir(t, dir)
	datasets := fmt.Sprintf("  - {name: local, ufs: \"file://%s\"}\n", dir)
	if s3srv != nil {
		tr.writeBucket(t, s3srv, "cluster")
		datasets += fmt.Sprintf(`  - name: s3
    ufs: s3://cluster
    options: {endpoint: %q, path_style: true, access_key: %q, secret_key: %q}
`, s3srv.Endpoint, s3test.AccessKey, s3test.SecretKey)
	} else if s3test.Required() {
		t.Fatal("no S3 server")
	}
	c := startCluster(t, clusterOpts{workers: 3, datasets: datasets})
	for _, ds := range []string{"local", "s3"} {
		if ds == "s3" && s3srv == nil {
			continue
		}
		t.Run(ds, func(t *testing.T) {
			remote := c.client(false)
			readTree(t, remote, ds, tr, 32, 1) // cold
			stat, list, read := c.ufsTotals(remote, ds)
			if read == 0 || list == 0 {
				t.Fatalf("cold pass: %d UFS reads, %d lists: the reads did not go through the workers", read, list)
			}
			// Listings answer every file's stat: only directories are stat'ed.
			if stat > 16 {
				t.Errorf("cold pass made %d UFS stats for %d files; the listings should answer them", stat, len(tr.files))
			}
			// Warm, over HTTP, by a client that knows nothing yet: the
			// workers answer metadata and data from their caches.
			readTree(t, c.client(false), ds, tr, 32, 2)
			// Warm, short-circuit: block files read directly.
			local := c.client(true)
			readTree(t, local, ds, tr, 32, 3)
			if s2, l2, r2 := c.ufsTotals(remote, ds); s2 != stat || l2 != list || r2 != read {
				t.Errorf("warm passes reached the UFS: stat %d->%d, list %d->%d, read %d->%d", stat, s2, list, l2, read, r2)
			}
			if st := local.Stats(); st.ShortCircuitReads == 0 || st.RemoteReads != 0 {
				t.Errorf("short-circuit client stats %+v; want local reads only", st)
			}
			if st := remote.Stats(); st.RemoteReads == 0 || st.ShortCircuitReads != 0 || st.FallbackReads != 0 {
				t.Errorf("remote client stats %+v", st)
			}
		})
	}
	// Each worker holds a share: placement spreads the blocks.
	for id, s := range c.status(c.client(false)) {
		var blocks int
		for _, tier := range s.Tiers {
			blocks += tier.Blocks
		}
		if blocks == 0 {
			t.Errorf("worker %s caches nothing: placement did not spread the keys", id)
		}
	}
}

// TestSingleFlight: 64 concurrent cold reads of one file cost one UFS read
// per page.
func TestSingleFlight(t *testing.T) {
	dir := t.TempDir()
	tr := &tree{files: map[string][]byte{"one.bin": makeTree(2, 0).files["edge/block"]}} // 4 pages
	tr.writeDir(t, dir)
	// A slow UFS (2 MiB/s), so that every reader arrives while the first
	// fetch is still running.
	c := startCluster(t, clusterOpts{workers: 1, datasets: fmt.Sprintf("  - {name: d, ufs: \"file://%s\", ufs_limits: {bytes_per_second: 2MiB}}\n", dir)})
	for _, short := range []bool{false, true} {
		cl := c.client(short)
		_, _, before := c.ufsTotals(cl, "d")
		var wg sync.WaitGroup
		start := make(chan struct{})
		for range 64 {
			wg.Go(func() {
				<-start
				if err := checkFile(cl, "/d/one.bin", tr.files["one.bin"]); err != nil {
					t.Error(err)
				}
			})
		}
		close(start)
		wg.Wait()
		_, _, read := c.ufsTotals(cl, "d")
		if want := int64(blockSize / pageSize); !short && read-before != want {
			t.Errorf("64 cold readers made %d UFS reads; want %d (one per page)", read-before, want)
		}
		if short && read != before {
			t.Errorf("the file was cached, yet %d more UFS reads", read-before)
		}
	}
	if merged := c.metric("granary_worker_singleflight_merged_total", `kind="page"`); merged == 0 {
		t.Error("no merged page fetches counted")
	}
}

// TestRestartAndCorruption: a restarted worker reloads its index and serves
// all hits; a byte flipped in a block file is caught by its CRC, the page
// fetched again and counted.
func TestRestartAndCorruption(t *testing.T) {
	tr := makeTree(3, 40)
	dir := t.TempDir()
	tr.writeDir(t, dir)
	c := startCluster(t, clusterOpts{workers: 1, datasets: fmt.Sprintf("  - {name: d, ufs: \"file://%s\"}\n", dir),
		tiers: func(_ int, d string) string {
			return fmt.Sprintf("    - {name: SSD, path: %s/ssd, quota: 256MiB}\n", d)
		}})
	cl := c.client(false)
	readTree(t, cl, "d", tr, 8, 1)
	w := c.workers[0]
	c.stop(w, syscall.SIGTERM)
	c.start(w)
	readTree(t, cl, "d", tr, 8, 2) // the client keeps its metadata: only block reads reach the worker
	st := c.status(cl)[w.id]
	if st.Misses != 0 || st.Hits == 0 || st.Datasets["d"].UFS.Read != 0 {
		t.Errorf("after a restart: %d page hits, %d misses, %d UFS reads; want all hits", st.Hits, st.Misses, st.Datasets["d"].UFS.Read)
	}

	// Flip one byte in every block file, restart, read everything again.
	c.stop(w, syscall.SIGTERM)
	files, _ := filepath.Glob(filepath.Join(w.dir, "ssd", "blocks", "*", "*"))
	flipped := 0
	for _, f := range files {
		fh, err := os.OpenFile(f, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		b := make([]byte, 1)
		if n, _ := fh.ReadAt(b, 0); n == 1 {
			fh.WriteAt([]byte{b[0] ^ 0xff}, 0)
			flipped++
		}
		fh.Close()
	}
	c.start(w)
	readTree(t, cl, "d", tr, 8, 3)
	if got := c.metric("granary_cache_corrupt_pages_total"); int(got) != flipped || flipped == 0 {
		t.Errorf("corrupt pages counted: %v; want %d (one per flipped block)", got, flipped)
	}
}

// TestKillWorkerMidRead: kill -9 one of three workers while 16 readers loop
// over the tree; every read completes with the right bytes.
func TestKillWorkerMidRead(t *testing.T) {
	tr := makeTree(4, 200)
	dir := t.TempDir()
	tr.writeDir(t, dir)
	c := startCluster(t, clusterOpts{workers: 3, datasets: fmt.Sprintf("  - {name: d, ufs: \"file://%s\"}\n", dir)})
	cl := c.client(false)
	// Readers loop over the tree until one whole pass has run after the kill.
	var killed atomic.Bool
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < 50; i++ {
			after := killed.Load()
			readTree(t, cl, "d", tr, 16, uint64(10+i))
			if after {
				return
			}
		}
		t.Error("the kill never came")
	}()
	// Kill once some reads have been served.
	for deadline := time.Now().Add(30 * time.Second); c.metric("granary_worker_requests_total", `op="block"`) < 50 && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
	c.stop(c.workers[1], syscall.SIGKILL)
	killed.Store(true)
	<-done
	if st := cl.Stats(); st.Retries == 0 {
		t.Errorf("no request moved to another owner after the kill: %+v", st)
	}
}

// TestDiskFull: a MEM tier on a 512 KiB tmpfs with a far larger quota, and
// a worker whose quota is smaller than a block: reads succeed from the UFS
// and the uncached pages are counted.
func TestDiskFull(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting a tmpfs needs root")
	}
	tr := makeTree(5, 30)
	dir := t.TempDir()
	tr.writeDir(t, dir)
	tiny := t.TempDir()
	if err := syscall.Mount("tmpfs", tiny, "tmpfs", 0, "size=512k"); err != nil {
		t.Skipf("cannot mount a tmpfs: %v", err)
	}
	t.Cleanup(func() { syscall.Unmount(tiny, syscall.MNT_DETACH) })
	c := startCluster(t, clusterOpts{workers: 2, datasets: fmt.Sprintf("  - {name: d, ufs: \"file://%s\"}\n", dir),
		tiers: func(i int, d string) string {
			if i == 0 {
				return fmt.Sprintf("    - {name: MEM, path: %s/w1, quota: 1GiB}\n", tiny)
			}
			return fmt.Sprintf("    - {name: SSD, path: %s/ssd, quota: 100KiB}\n", d)
		}})
	for _, short := range []bool{false, true} {
		readTree(t, c.client(short), "d", tr, 8, 1)
	}
	if n := c.metric("granary_worker_uncached_pages_total"); n == 0 {
		t.Error("no uncached pages counted on a full disk")
	}
	if n := c.metric("granary_cache_store_errors_total", `reason="no_space"`); n == 0 {
		t.Error("no no_space errors counted")
	}
}

// TestEvictionDemotionPinning: a small MEM tier over a larger SSD tier; a
// pinned dataset stays in MEM, the rest is demoted rather than dropped.
func TestEvictionDemotionPinning(t *testing.T) {
	tr := makeTree(6, 60)
	dir, pinnedDir := t.TempDir(), t.TempDir()
	tr.writeDir(t, dir)
	pinned := &tree{files: map[string][]byte{"keep.bin": tr.files["edge/block"]}}
	pinned.writeDir(t, pinnedDir)
	c := startCluster(t, clusterOpts{workers: 1,
		datasets: fmt.Sprintf("  - {name: d, ufs: \"file://%s\"}\n  - {name: p, ufs: \"file://%s\", pin: true}\n", dir, pinnedDir),
		tiers: func(_ int, d string) string {
			return fmt.Sprintf("    - {name: MEM, path: %s/mem, quota: 3MiB}\n    - {name: SSD, path: %s/ssd, quota: 256MiB}\n", d, d)
		}})
	cl := c.client(false)
	readTree(t, cl, "p", pinned, 1, 1)
	readTree(t, cl, "d", tr, 4, 1)
	// The evictor runs at least once a second.
	for deadline := time.Now().Add(10 * time.Second); c.metric("granary_cache_evictions_total", `action="demote"`) == 0 && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
	}
	if c.metric("granary_cache_evictions_total", `action="demote"`) == 0 {
		t.Fatal("nothing was demoted from a full MEM tier")
	}
	if dropped := c.metric("granary_cache_evictions_total", `action="evict"`); dropped != 0 {
		t.Errorf("%v blocks dropped while the SSD tier had room", dropped)
	}
	readTree(t, cl, "d", tr, 4, 2)
	readTree(t, cl, "p", pinned, 1, 2)
	if _, _, read := c.ufsTotals(cl, "p"); read != blockSize/pageSize {
		t.Errorf("the pinned file was fetched %d times; want once per page", read)
	}
	// Ask the worker where the pinned block is: still on MEM.
	w := c.workers[0]
	fi, err := cl.Stat(context.Background(), "/p/keep.bin")
	if err != nil {
		t.Fatal(err)
	}
	unix := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", w.socket)
	}}}
	q := url.Values{"ds": {"p"}, "path": {"keep.bin"}, "ver": {fi.Version}, "size": {fmt.Sprint(fi.Size)}, "bs": {fmt.Sprint(blockSize)}, "idx": {"0"}}
	resp, err := unix.Get("http://worker/v1/local?" + q.Encode())
	if err != nil {
		t.Fatal(err)
	}
	var lb wire.LocalBlock
	json.NewDecoder(resp.Body).Decode(&lb)
	resp.Body.Close()
	if !strings.HasPrefix(lb.File, filepath.Join(w.dir, "mem")+"/") {
		t.Errorf("the pinned block is at %q; want it kept on MEM", lb.File)
	}
}

// TestAuth: with a token, requests without it or with a wrong one get 401
// and are counted; a worker on a non-loopback address refuses to start
// without a token.
func TestAuth(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "f"), []byte("secret data"), 0o644)
	tokenFile := filepath.Join(t.TempDir(), "token")
	os.WriteFile(tokenFile, []byte("s3cr3t-token\n"), 0o600)
	ds := fmt.Sprintf("  - {name: d, ufs: \"file://%s\"}\n", dir)
	c := startCluster(t, clusterOpts{workers: 1, datasets: ds, extra: fmt.Sprintf("auth:\n  token_file: %s\n", tokenFile)})
	w := c.workers[0]
	url := "http://" + w.addr + "/v1/stat?ds=d&path=f"
	for _, token := range []string{"", "Bearer wrong", "s3cr3t-token", "Bearer s3cr3t-token"} {
		req, _ := http.NewRequest(http.MethodGet, url, nil)
		if token != "" {
			req.Header.Set("Authorization", token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		want := http.StatusUnauthorized
		if token == "Bearer s3cr3t-token" {
			want = http.StatusOK
		}
		if resp.StatusCode != want {
			t.Errorf("Authorization %q: HTTP %d; want %d", token, resp.StatusCode, want)
		}
	}
	if n := c.metric("granary_worker_unauthorized_total"); n != 3 {
		t.Errorf("unauthorized requests counted: %v; want 3", n)
	}
	// The client sends the token from the same config.
	if err := checkFile(c.client(false), "/d/f", []byte("secret data")); err != nil {
		t.Error(err)
	}

	// Off loopback without a token: refused at start, with the reason.
	cfg := filepath.Join(t.TempDir(), "open.yaml")
	os.WriteFile(cfg, []byte("datasets:\n"+ds+fmt.Sprintf("worker:\n  listen: 0.0.0.0:0\n  state_dir: %s\n  tiers: [{name: SSD, path: %s/ssd, quota: 1GiB}]\n", t.TempDir(), t.TempDir())), 0o600)
	out, err := exec.Command(granary, "worker", "--config", cfg).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "not loopback: set auth.token_file") {
		t.Errorf("a worker on 0.0.0.0 without a token: %v: %s", err, out)
	}
}

// TestUnknownDatasetAndEscape: a worker refuses datasets it does not serve
// and paths that are not clean.
func TestUnknownDatasetAndEscape(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "f"), []byte("x"), 0o644)
	c := startCluster(t, clusterOpts{workers: 1, datasets: fmt.Sprintf("  - {name: d, ufs: \"file://%s\"}\n", dir)})
	base := "http://" + c.workers[0].addr
	for _, q := range []string{
		"/v1/stat?ds=other&path=f",
		"/v1/stat?ds=d&path=../f",
		"/v1/stat?ds=d&path=a/../../etc/passwd",
		"/v1/block?ds=d&path=../../etc/passwd&ver=x&size=10&idx=0",
		"/v1/block?ds=d&path=f&ver=x&size=1&bs=1048576&idx=5",
		"/v1/block?ds=d&path=f&ver=x&size=1&bs=1000&idx=0", // not whole pages
	} {
		resp, err := http.Get(base + q)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("%s: HTTP %d; want 400", q, resp.StatusCode)
		}
	}
	cl := c.client(false)
	if _, err := cl.Open(context.Background(), "/d/../../etc/passwd"); err == nil {
		t.Error("the client opened a path outside the namespace")
	}
}

// TestFallback: with every worker down, a dataset with fallback: ufs is read
// straight from the UFS (counted); one with fallback: none fails clearly.
func TestFallback(t *testing.T) {
	tr := makeTree(7, 20)
	dir := t.TempDir()
	tr.writeDir(t, dir)
	c := startCluster(t, clusterOpts{workers: 2, datasets: fmt.Sprintf(
		"  - {name: d, ufs: \"file://%s\"}\n  - {name: strict, ufs: \"file://%s\", fallback: none}\n", dir, dir)})
	for _, p := range c.workers {
		c.stop(p, syscall.SIGKILL)
	}
	cl := c.client(false)
	readTree(t, cl, "d", tr, 4, 1)
	if st := cl.Stats(); st.FallbackReads == 0 {
		t.Errorf("no fallback reads counted: %+v", st)
	}
	_, err := cl.Open(context.Background(), "/strict/edge/one")
	if err == nil || !strings.Contains(err.Error(), "every owner failed") {
		t.Errorf("fallback: none with every worker down = %v; want an error naming the failed owners", err)
	}
}
