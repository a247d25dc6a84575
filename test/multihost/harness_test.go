// Package multihost tests granary as a cluster of machines, simulated on one
// host: every worker, every mount and etcd runs in a network namespace of
// its own (internal/netnstest), with its own address and state directory, so
// that addresses, partitions and deaths are real. Workers find each other
// through a real etcd; mounts read through them from other "machines".
package multihost

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/granary-cache/granary/internal/client"
	"github.com/granary-cache/granary/internal/config"
	"github.com/granary-cache/granary/internal/etcdtest"
	"github.com/granary-cache/granary/internal/granarytest"
	"github.com/granary-cache/granary/internal/netnstest"
	"github.com/granary-cache/granary/internal/promtest"
)

var (
	granary string // the binary under test
	data    *tree  // the dataset every test reads, in dataDir
	dataDir string
)

func TestMain(m *testing.M) { os.Exit(setup(m)) }

func setup(m *testing.M) int {
	dir, err := os.MkdirTemp("", "granary-multihost")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	if granary, err = granarytest.Build(dir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	dataDir = filepath.Join(dir, "ufs")
	data = &tree{files: map[string][32]byte{}, sizes: map[string]int{}}
	if err := data.write(dataDir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return m.Run()
}

// Layout of every test: small blocks and pages, so that a few megabytes
// make many blocks.
const (
	blockSize = 1 << 20
	pageSize  = 256 << 10
)

// tree is the dataset: files of many sizes in a few directories.
type tree struct {
	files map[string][32]byte // path → sha256
	sizes map[string]int
	bytes int64
}

// write generates the files under dir (deterministically) and records
// their digests.
func (t *tree) write(dir string) error {
	r := rand.New(rand.NewPCG(1, 2))
	add := func(name string, size int) error {
		b := make([]byte, size)
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		t.files[name] = sha256.Sum256(b)
		t.sizes[name] = size
		t.bytes += int64(size)
		return os.WriteFile(p, b, 0o644)
	}
	for i := range 1200 {
		if err := add(fmt.Sprintf("train/c%02d/img%04d.jpg", i%12, i), 1000+r.IntN(100<<10)); err != nil {
			return err
		}
	}
	for i := range 8 {
		if err := add(fmt.Sprintf("shards/s%d.tar", i), 3*blockSize+r.IntN(blockSize)); err != nil {
			return err
		}
	}
	return add("empty", 0)
}

// world is one simulated cluster: etcd, workers and mount hosts, each a
// network namespace.
type world struct {
	t       testing.TB
	dir     string
	net     *netnstest.Net
	etcd    *etcdtest.Server
	token   string // its file
	workers map[string]*workerProc
	order   []string // worker host names, in start order
	o       worldOpts
}

type worldOpts struct {
	workers   int
	mounts    []string // host names of mount machines
	datasets  string   // YAML list items; default: r1 (replicas 1) and r2 (replicas 2) over dataDir
	leaseTTL  string   // default 2s
	ringGrace string   // default 10m
	memQuota  string   // default 256MiB
}

type workerProc struct {
	host   *netnstest.Host
	config string
	state  string
	proc   *netnstest.Proc
}

func (w *workerProc) admin() string { return w.host.Addr(7701) }

func newWorld(t testing.TB, o worldOpts) *world {
	t.Helper()
	if o.datasets == "" {
		o.datasets = fmt.Sprintf("  - {name: r1, ufs: \"file://%s\", replicas: 1}\n  - {name: r2, ufs: \"file://%s\", replicas: 2}\n", dataDir, dataDir)
	}
	if o.leaseTTL == "" {
		o.leaseTTL = "4s"
	}
	if o.ringGrace == "" {
		o.ringGrace = "10m"
	}
	if o.memQuota == "" {
		o.memQuota = "256MiB"
	}
	hosts := []string{"etcd"}
	for i := range o.workers {
		hosts = append(hosts, fmt.Sprintf("w%d", i+1))
	}
	hosts = append(hosts, o.mounts...)
	w := &world{t: t, dir: t.TempDir(), o: o, workers: map[string]*workerProc{}}
	w.net = netnstest.New(t, "", hosts...)
	w.etcd = etcdtest.Start(t, etcdtest.Options{Host: w.net.Host("etcd"), Dir: filepath.Join(w.dir, "etcd")})
	w.token = filepath.Join(w.dir, "token")
	if err := os.WriteFile(w.token, []byte("multihost-secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for i := range o.workers {
		w.addWorker(fmt.Sprintf("w%d", i+1))
	}
	return w
}

// common is the YAML every process shares: datasets, auth, membership.
func (w *world) common() string {
	return fmt.Sprintf(`datasets:
%sauth:
  token_file: %q
membership:
  type: etcd
  endpoints: [%q]
  lease_ttl: %s
  ring_grace: %s
  dial_timeout: 5s
`, w.o.datasets, w.token, w.etcd.Endpoint, w.o.leaseTTL, w.o.ringGrace)
}

// addWorker starts a worker on host name (made if new).
func (w *world) addWorker(name string) *workerProc {
	t := w.t
	t.Helper()
	h := w.host(name)
	wp := &workerProc{host: h, state: filepath.Join(w.dir, name), config: filepath.Join(w.dir, name+".yaml")}
	doc := w.common() + fmt.Sprintf(`worker:
  listen: %q
  admin: %q
  host: %s
  state_dir: %q
  block_size: %d
  page_size: %d
  scrub_bytes_per_second: 0
  tiers:
    - {name: MEM, path: %q, quota: %s}
`, h.Addr(7700), h.Addr(7701), name, wp.state, blockSize, pageSize, filepath.Join(wp.state, "mem"), w.o.memQuota)
	if err := os.WriteFile(wp.config, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	w.workers[name] = wp
	w.order = append(w.order, name)
	w.start(wp)
	return wp
}

func (w *world) host(name string) *netnstest.Host {
	for _, h := range w.net.Hosts() {
		if h.Name == name {
			return h
		}
	}
	return w.net.Add(name)
}

// start runs a worker process and waits until it answers.
func (w *world) start(wp *workerProc) {
	t := w.t
	t.Helper()
	wp.proc = netnstest.Start(t, wp.host.Command(granary, "worker", "--config", wp.config, "--log-level", "info"))
	waitHTTP(t, "worker "+wp.host.Name, "http://"+wp.admin()+"/healthz", wp.proc)
}

// restart stops a worker cleanly and starts it again on the same state.
func (w *world) restart(wp *workerProc) {
	if err := wp.proc.Stop(); err != nil {
		w.t.Errorf("worker %s did not stop cleanly: %v\n%s", wp.host.Name, err, wp.proc.Log())
	}
	w.start(wp)
}

func waitHTTP(t testing.TB, what, url string, p *netnstest.Proc) {
	t.Helper()
	hc := &http.Client{Timeout: time.Second}
	for deadline := time.Now().Add(30 * time.Second); ; {
		if resp, err := hc.Get(url); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		select {
		case <-p.Done():
			t.Fatalf("%s exited at start: %s", what, p.Log())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not come up: %s", what, p.Log())
		}
	}
}

// clientConfig writes the configuration of a reader on host name.
func (w *world) clientConfig(name string) string {
	p := filepath.Join(w.dir, "client-"+name+".yaml")
	doc := w.common() + fmt.Sprintf(`worker:
  block_size: %d
  page_size: %d
client:
  host: %s
`, blockSize, pageSize, name)
	if err := os.WriteFile(p, []byte(doc), 0o600); err != nil {
		w.t.Fatal(err)
	}
	return p
}

// client is a client in the test process (root namespace, no worker of its
// own host).
func (w *world) client() *client.Client {
	t := w.t
	t.Helper()
	cfg, err := config.Load(w.clientConfig("tester"))
	if err != nil {
		t.Fatal(err)
	}
	c, err := client.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// waitLive waits until a client sees n live workers.
func (w *world) waitLive(c *client.Client, n int) {
	w.t.Helper()
	waitFor(w.t, fmt.Sprintf("%d live workers", n), 30*time.Second, func() bool { return c.Membership().Current().Len() == n })
}

func waitFor(t testing.TB, what string, limit time.Duration, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(limit); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", limit, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// mountProc is a FUSE mount served by a process on a mount host.
type mountProc struct {
	host  *netnstest.Host
	dir   string
	admin string
	proc  *netnstest.Proc
}

// mount mounts the namespace on host name.
func (w *world) mount(name string, args ...string) *mountProc {
	return w.mountOn(w.net.Host(name), args...)
}

// mountOn mounts the namespace on host h (a mount host or a worker's).
func (w *world) mountOn(h *netnstest.Host, args ...string) *mountProc {
	t := w.t
	t.Helper()
	name := h.Name
	m := &mountProc{host: h, dir: filepath.Join(w.dir, "mnt-"+name), admin: h.Addr(7800)}
	if err := os.MkdirAll(m.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	argv := append([]string{"mount", "--config", w.clientConfig(name), "--admin", m.admin, "--log-level", "warn"}, append(args, m.dir)...)
	m.proc = netnstest.Start(t, h.Command(granary, argv...))
	t.Cleanup(func() { syscall.Unmount(m.dir, syscall.MNT_DETACH) }) // runs after the process stopped
	waitHTTP(t, "mount on "+name, "http://"+m.admin+"/v1/status", m.proc)
	return m
}

// mountStats is what a mount's /v1/status says of its opens.
type mountStats struct {
	Opens            int64 `json:"opens"`
	PassthroughOpens int64 `json:"passthrough_opens"`
	DaemonReads      int64 `json:"daemon_reads"`
}

func (m *mountProc) stats(t testing.TB) mountStats {
	t.Helper()
	resp, err := http.Get("http://" + m.admin + "/v1/status")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st struct {
		Mount mountStats `json:"mount"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	return st.Mount
}

// metric sums the samples of a metric at a /metrics URL whose labels
// include every match; -1 when it cannot be read.
func metric(url, name string, match ...string) float64 {
	v, err := promtest.Scrape(nil, url, name, match...)
	if err != nil {
		return -1
	}
	return v
}

func (w *world) workerMetric(wp *workerProc, name string, match ...string) float64 {
	return metric("http://"+wp.admin()+"/metrics", name, match...)
}

// ufsReads sums the UFS reads of every running worker for a dataset.
func (w *world) ufsReads(ds string) float64 {
	var sum float64
	for _, wp := range w.workers {
		if v := w.workerMetric(wp, "granary_ufs_operations_total", `dataset="`+ds+`"`, `op="read"`); v > 0 {
			sum += v
		}
	}
	return sum
}

// epoch is one pass over the dataset through a mount.
type epoch struct {
	files, failed, wrong atomic.Int64
	bytes                atomic.Int64
	maxLatency           atomic.Int64 // ns
	took                 time.Duration
	errs                 []string
	mu                   sync.Mutex
}

func (e *epoch) String() string {
	return fmt.Sprintf("%d files, %d bytes in %v (max read %v): %d failed, %d wrong",
		e.files.Load(), e.bytes.Load(), e.took.Round(time.Millisecond), time.Duration(e.maxLatency.Load()).Round(time.Millisecond),
		e.failed.Load(), e.wrong.Load())
}

// readEpoch reads every file of dataset ds under root (a mount's directory)
// with readers goroutines in a shuffled order, checking each against its
// digest. at, if set, runs once when the given fraction of the files is
// read (mid-epoch faults), while the readers go on. The kernel's page cache
// is dropped first: a mount keeps file pages across opens, and an epoch
// served from them would not reach granary at all.
func readEpoch(t testing.TB, root, ds string, readers int, seed uint64, atFrac float64, at func()) *epoch {
	t.Helper()
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("1"), 0); err != nil {
		t.Fatalf("drop the page cache: %v", err)
	}
	names := sortedNames()
	rand.New(rand.NewPCG(seed, 3)).Shuffle(len(names), func(i, j int) { names[i], names[j] = names[j], names[i] })
	e := &epoch{}
	trigger := int64(atFrac * float64(len(names)))
	var atDone sync.WaitGroup
	work := make(chan string)
	var wg sync.WaitGroup
	start := time.Now()
	for range readers {
		wg.Go(func() {
			for name := range work {
				t0 := time.Now()
				b, err := os.ReadFile(filepath.Join(root, ds, name))
				if d := int64(time.Since(t0)); d > e.maxLatency.Load() {
					e.maxLatency.Store(d)
				}
				switch {
				case err != nil:
					e.failed.Add(1)
					e.note(fmt.Sprintf("%s: %v", name, err))
				case sha256.Sum256(b) != data.files[name]:
					e.wrong.Add(1)
					e.note(fmt.Sprintf("%s: %d bytes with the wrong digest", name, len(b)))
				}
				e.bytes.Add(int64(len(b)))
				if e.files.Add(1) == trigger && at != nil {
					atDone.Go(at) // once: only one reader sees the count reach it
				}
			}
		})
	}
	for _, n := range names {
		work <- n
	}
	close(work)
	wg.Wait()
	e.took = time.Since(start)
	atDone.Wait()
	return e
}

func (e *epoch) note(s string) {
	e.mu.Lock()
	if len(e.errs) < 10 {
		e.errs = append(e.errs, s)
	}
	e.mu.Unlock()
}

// check fails the test if the epoch had a failed or wrong read.
func (e *epoch) check(t testing.TB, what string) {
	t.Helper()
	t.Logf("%s: %s", what, e)
	if e.failed.Load() != 0 || e.wrong.Load() != 0 || e.files.Load() != int64(len(data.files)) {
		t.Errorf("%s: %s; first errors: %s", what, e, strings.Join(e.errs, "; "))
	}
}

// sortedNames lists the dataset's files in order.
func sortedNames() []string {
	names := make([]string, 0, len(data.files))
	for n := range data.files {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// walkCount counts the files under dir (a listing through the mount).
func walkCount(dir string) (int, error) {
	n := 0
	err := filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			n++
		}
		return err
	})
	return n, err
}
