// Package cluster tests granary's cache as it runs: worker processes started
// from the built binary, a client reading through them, real UFSes (local
// directories and a real S3 server), and the failures of a real deployment
// (a worker killed mid-read, a restart, a corrupted block file, a full disk).
package cluster

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/granary-cache/granary/internal/client"
	"github.com/granary-cache/granary/internal/config"
	"github.com/granary-cache/granary/internal/granarytest"
	"github.com/granary-cache/granary/internal/mountinfo"
	"github.com/granary-cache/granary/internal/promtest"
	"github.com/granary-cache/granary/internal/s3test"
	"github.com/granary-cache/granary/internal/wire"
)

var (
	granary string
	s3srv   *s3test.Server
	// runDir holds what one run of the package makes (the binary, the
	// S3 server's data, a generated benchmark tree); removed at the end.
	runDir string
)

func TestMain(m *testing.M) {
	os.Exit(setup(m))
}

func setup(m *testing.M) int {
	dir, err := os.MkdirTemp("", "granary-cluster")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	runDir = dir
	// The workers run with the race detector when the tests do; CephFS
	// datasets need the cgo build.
	granary, err = granarytest.BuildWith(dir, granarytest.BuildOptions{Race: raceEnabled, CephFS: os.Getenv("GRANARY_CEPH_DIR") != ""})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	s3srv, err = s3test.StartServer(dir)
	if err != nil {
		if s3test.Required() {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		fmt.Fprintln(os.Stderr, "S3 cases will skip:", err)
	} else {
		defer s3srv.Stop()
	}
	return m.Run()
}

// Test layout: small blocks and pages, so that small files span several.
const (
	blockSize = 1 << 20
	pageSize  = 256 << 10
)

// tree is a dataset written by the test, with the content of every file.
type tree struct {
	files map[string][]byte // path inside the dataset -> content
}

// makeTree builds files of many sizes: empty, one byte, page and block edges,
// several blocks, and many small ones in nested directories.
func makeTree(seed uint64, small int) *tree {
	r := rand.New(rand.NewPCG(seed, 1))
	t := &tree{files: map[string][]byte{}}
	add := func(name string, size int) {
		b := make([]byte, size)
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		t.files[name] = b
	}
	add("edge/empty", 0)
	add("edge/one", 1)
	add("edge/page-1", pageSize-1)
	add("edge/page+1", pageSize+1)
	add("edge/block", blockSize)
	add("edge/block+1", blockSize+1)
	add("big/five-blocks.bin", 5*blockSize+12345)
	add("names/with space ü#%.dat", 3000)
	for i := range small {
		add(fmt.Sprintf("train/class%02d/img%04d.jpg", i%10, i), 1000+r.IntN(120<<10))
	}
	return t
}

func (t *tree) writeDir(tb testing.TB, dir string) {
	tb.Helper()
	for name, data := range t.files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			tb.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			tb.Fatal(err)
		}
	}
}

func (t *tree) writeBucket(tb testing.TB, srv *s3test.Server, bucket string) {
	ctx := context.Background()
	if err := srv.CreateBucket(ctx, bucket); err != nil {
		tb.Fatal(err)
	}
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	for name, data := range t.files {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			if err := srv.Put(ctx, bucket, name, data); err != nil {
				tb.Error(err)
			}
		})
	}
	wg.Wait()
}

// proc is one worker process.
type proc struct {
	id, addr, admin, socket, dir, config string
	cmd                                  *exec.Cmd
	log                                  *bytes.Buffer
	done                                 chan struct{}
}

// cluster is a set of worker processes and the configuration that reaches them.
type cluster struct {
	t       testing.TB
	dir     string
	workers []*proc
	// base is the YAML of the datasets and anything else shared.
	base string
	// tiers returns the tiers section of worker i.
	tiers func(i int, dir string) string
	// the layout every worker and client uses
	blockSize, pageSize int64
}

type clusterOpts struct {
	workers   int
	blockSize int64 // default: the test's blockSize
	pageSize  int64
	datasets  string // YAML list items under "datasets:"
	extra     string // more top-level YAML (auth, ...)
	tiers     func(i int, dir string) string
}

func defaultTiers(_ int, dir string) string {
	return fmt.Sprintf("    - {name: MEM, path: %s/mem, quota: 64MiB}\n    - {name: SSD, path: %s/ssd, quota: 256MiB}\n", dir, dir)
}

func freeAddr(t testing.TB) string { return granarytest.FreeAddr(t) }

// startCluster writes a config per worker and starts them all.
func startCluster(t testing.TB, o clusterOpts) *cluster {
	if o.tiers == nil {
		o.tiers = defaultTiers
	}
	if o.blockSize == 0 {
		o.blockSize, o.pageSize = blockSize, pageSize
	}
	c := &cluster{t: t, dir: t.TempDir(), tiers: o.tiers, blockSize: o.blockSize, pageSize: o.pageSize}
	c.base = "datasets:\n" + o.datasets + o.extra
	var members strings.Builder
	members.WriteString("membership:\n  workers:\n")
	for i := range o.workers {
		p := &proc{id: fmt.Sprintf("w%d", i+1), addr: freeAddr(t), admin: freeAddr(t)}
		p.dir = filepath.Join(c.dir, p.id)
		p.socket = filepath.Join(p.dir, "worker.sock")
		fmt.Fprintf(&members, "    - {id: %s, addr: %q, socket: %q}\n", p.id, p.addr, p.socket)
		c.workers = append(c.workers, p)
	}
	for i, p := range c.workers {
		p.config = filepath.Join(c.dir, p.id+".yaml")
		doc := c.base + members.String() + fmt.Sprintf(`worker:
  id: %s
  listen: %q
  admin: %q
  state_dir: %q
  block_size: %d
  page_size: %d
  tiers:
%s`, p.id, p.addr, p.admin, p.dir, c.blockSize, c.pageSize, o.tiers(i, p.dir))
		if err := os.WriteFile(p.config, []byte(doc), 0o600); err != nil {
			t.Fatal(err)
		}
		c.start(p)
	}
	t.Cleanup(c.stopAll)
	return c
}

// start runs a worker process and waits until it answers.
func (c *cluster) start(p *proc) {
	t := c.t
	p.log = &bytes.Buffer{}
	p.done = make(chan struct{})
	p.cmd = exec.Command(granary, "worker", "--config", p.config, "--log-level", "warn")
	p.cmd.Stdout, p.cmd.Stderr = p.log, p.log
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.cmd.Wait(); close(p.done) }()
	for deadline := time.Now().Add(20 * time.Second); ; {
		resp, err := http.Get("http://" + p.admin + "/healthz")
		if err == nil {
			resp.Body.Close()
			return
		}
		select {
		case <-p.done:
			t.Fatalf("worker %s exited at start: %s", p.id, p.log)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("worker %s did not come up: %s", p.id, p.log)
		}
	}
}

// stop ends a worker: SIGTERM (clean) or SIGKILL.
func (c *cluster) stop(p *proc, sig syscall.Signal) {
	if p.cmd == nil || p.cmd.Process == nil {
		return
	}
	p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
	if sig == syscall.SIGTERM && p.cmd.ProcessState.ExitCode() != 0 {
		c.t.Errorf("worker %s did not stop cleanly (exit %d): %s", p.id, p.cmd.ProcessState.ExitCode(), p.log)
	}
}

func (c *cluster) stopAll() {
	for _, p := range c.workers {
		select {
		case <-p.done:
		default:
			c.stop(p, syscall.SIGTERM)
		}
	}
	unmountLeft(c.dir)
}

// unmountLeft detaches what is still mounted at dir or below it: the
// tmpfs of a MEM tier whose worker was killed (a worker that stops
// unmounts its own), which would keep dir from being removed.
func unmountLeft(dir string) {
	mounts, _ := mountinfo.Read()
	below := mountinfo.Below(mounts, dir)
	for i := len(below) - 1; i >= 0; i-- {
		syscall.Unmount(below[i].Point, syscall.MNT_DETACH)
	}
}

// client returns a client of the cluster; extra YAML goes in its config.
func (c *cluster) client(shortCircuit bool) *client.Client {
	c.t.Helper()
	doc := c.base + "membership:\n  workers:\n"
	for _, p := range c.workers {
		doc += fmt.Sprintf("    - {id: %s, addr: %q, socket: %q}\n", p.id, p.addr, p.socket)
	}
	doc += fmt.Sprintf("worker:\n  block_size: %d\n  page_size: %d\nclient:\n  short_circuit: %v\n  timeout: 10s\n", c.blockSize, c.pageSize, shortCircuit)
	cfg, err := config.Parse("client.yaml", []byte(doc))
	if err != nil {
		c.t.Fatal(err)
	}
	cl, err := client.New(cfg)
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { cl.Close() })
	return cl
}

// status returns every worker's status (skipping dead ones).
func (c *cluster) status(cl *client.Client) map[string]*wire.Status {
	out := map[string]*wire.Status{}
	for _, ws := range cl.Status(context.Background()) {
		if ws.Status != nil {
			out[ws.ID] = ws.Status
		}
	}
	return out
}

// ufsTotals sums the UFS operations of a dataset over the workers.
func (c *cluster) ufsTotals(cl *client.Client, ds string) (stat, list, read int64) {
	for _, s := range c.status(cl) {
		u := s.Datasets[ds].UFS
		stat, list, read = stat+u.Stat, list+u.List, read+u.Read
	}
	return
}

// metric returns the sum of a worker metric's samples whose line contains all of match.
func (c *cluster) metric(name string, match ...string) float64 {
	var sum float64
	for _, p := range c.workers {
		sum += p.metric(name, match...)
	}
	return sum
}

// metric sums the samples of a metric of one worker whose labels include
// every match (`label="value"`); 0 when the worker does not answer.
func (p *proc) metric(name string, match ...string) float64 {
	v, _ := promtest.Scrape(nil, "http://"+p.admin+"/metrics", name, match...)
	return v
}

// readTree walks the dataset like a training job's file list does, then
// reads every file through cl with the given number of readers, in a
// shuffled order, and checks each file's sha256 and that the walk found
// exactly the tree's files.
func readTree(t *testing.T, cl *client.Client, ds string, tr *tree, readers int, seed uint64) {
	t.Helper()
	var names []string
	if err := walk(cl, "/"+ds, "", &names); err != nil {
		t.Fatal(err)
	}
	if len(names) != len(tr.files) {
		t.Fatalf("walk found %d files; want %d", len(names), len(tr.files))
	}
	rand.New(rand.NewPCG(seed, 2)).Shuffle(len(names), func(i, j int) { names[i], names[j] = names[j], names[i] })
	work := make(chan string)
	var wg sync.WaitGroup
	for range readers {
		wg.Go(func() {
			for name := range work {
				if err := checkFile(cl, "/"+ds+"/"+name, tr.files[name]); err != nil {
					t.Error(err)
				}
			}
		})
	}
	for _, n := range names {
		work <- n
	}
	close(work)
	wg.Wait()
}

func checkFile(cl *client.Client, p string, want []byte) error {
	ctx := context.Background()
	f, err := cl.Open(ctx, p)
	if err != nil {
		return fmt.Errorf("open %s: %w", p, err)
	}
	if f.Size() != int64(len(want)) {
		return fmt.Errorf("%s: size %d, want %d", p, f.Size(), len(want))
	}
	got := make([]byte, len(want))
	n, err := f.ReadAt(got, 0)
	if err != nil && err != io.EOF {
		return fmt.Errorf("read %s: %w", p, err)
	}
	if n != len(want) || sha256.Sum256(got) != sha256.Sum256(want) {
		return fmt.Errorf("%s: %d bytes with the wrong sha256", p, n)
	}
	return nil
}

func walk(cl *client.Client, root, dir string, out *[]string) error {
	entries, err := cl.List(context.Background(), root+"/"+dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		p := strings.TrimPrefix(dir+"/"+e.Name, "/")
		if e.IsDir() {
			if err := walk(cl, root, p, out); err != nil {
				return err
			}
			continue
		}
		*out = append(*out, p)
	}
	return nil
}
