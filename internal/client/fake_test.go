package client

// Test scaffolding: fake workers (httptest servers answering the data
// endpoints the way internal/worker does) in front of file:// datasets in
// temporary directories, and clients built over them with a static
// membership.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/granary-cache/granary/internal/block"
	"github.com/granary-cache/granary/internal/config"
	"github.com/granary-cache/granary/internal/membership"
	"github.com/granary-cache/granary/internal/ufs"
	"github.com/granary-cache/granary/internal/ufs/local"
	"github.com/granary-cache/granary/internal/wire"
)

// Layout of every test configuration: small blocks, several pages each.
const (
	testBlockSize = 64 << 10
	testPageSize  = 16 << 10
	testHost      = "testhost" // client.host, and the host of local workers
)

// How a fake worker answers a kind of request.
const (
	answerOK       int32 = iota
	answerBusy           // 503 with class retryable, as a worker whose UFS throttles
	answerNotExist       // 404 with class not_exist: an error of the UFS
	answerClose          // the connection is closed without an answer
	answerHang           // no answer until the request is cancelled or the test ends
)

// How a fake worker answers PathLocal (its unix socket).
const (
	localOK            int32 = iota
	localRefuse              // 503: no room for a near copy
	localCorruptOnce         // a flipped byte, unless the worker is asked to verify all
	localCorruptAlways       // a flipped byte every time
	localWrongLength         // a description that does not match the block
	localNotYet              // 409: not all cached yet (a large block being filled)
)

// TestMain keeps the expected "worker marked down" warnings out of the
// output of failing tests.
func TestMain(m *testing.M) {
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError})))
	os.Exit(m.Run())
}

// fakeWorker answers PathStat, PathList, PathBlock and PathPing from the
// datasets' directories, like internal/worker, and PathLocal on a unix
// socket when it is local.
type fakeWorker struct {
	t        *testing.T
	id       string
	srv      *httptest.Server
	datasets map[string]ufs.FS
	release  chan struct{} // closed when the test ends: hanging handlers return

	meta, block, ping, local atomic.Int32 // answer* / local*

	// Requests seen, and hanging requests whose client went away.
	blocks, pings, metas, locals, cancelled atomic.Int64
	arrived                                 chan string // a request path, as it arrives (non-blocking send)

	socket   string // unix socket, for a local worker
	blockDir string

	mu      sync.Mutex
	queries []string // PathLocal queries, in order
}

func newFakeWorker(t *testing.T, id string, datasets map[string]ufs.FS) *fakeWorker {
	fw := &fakeWorker{t: t, id: id, datasets: datasets, release: make(chan struct{}), arrived: make(chan string, 64)}
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+wire.PathStat, fw.handleStat)
	mux.HandleFunc("GET "+wire.PathList, fw.handleList)
	mux.HandleFunc("GET "+wire.PathBlock, fw.handleBlock)
	mux.HandleFunc("GET "+wire.PathPing, fw.handlePing)
	mux.HandleFunc("GET "+wire.PathLocal, fw.handleLocal)
	fw.srv = httptest.NewServer(mux)
	// Cleanups run last first: hanging handlers are released before the
	// server waits for them.
	t.Cleanup(fw.srv.Close)
	t.Cleanup(func() { close(fw.release) })
	return fw
}

// listenUnix makes the worker answer on a unix socket too (a worker on
// the client's host).
func (fw *fakeWorker) listenUnix(t *testing.T) {
	dir := shortTempDir(t)
	fw.socket = filepath.Join(dir, "w.sock")
	fw.blockDir = filepath.Join(dir, "blocks")
	if err := os.Mkdir(fw.blockDir, 0o755); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("unix", fw.socket)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: fw.srv.Config.Handler}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
}

func (fw *fakeWorker) addr() string { return fw.srv.Listener.Addr().String() }

func (fw *fakeWorker) note(path string) {
	select {
	case fw.arrived <- path:
	default:
	}
}

// hang holds a request until its client goes away or the test ends.
func (fw *fakeWorker) hang(r *http.Request) {
	select {
	case <-r.Context().Done():
		fw.cancelled.Add(1)
	case <-fw.release:
	}
}

// misbehave answers a request as mode says, unless it is answerOK; it
// reports whether it answered.
func (fw *fakeWorker) misbehave(rw http.ResponseWriter, r *http.Request, mode int32) bool {
	switch mode {
	case answerBusy:
		wire.WriteError(rw, ufs.NewError("read", r.URL.Query().Get("path"), ufs.ClassRetryable, errors.New("slow down")))
	case answerNotExist:
		wire.WriteError(rw, ufs.NewError("read", r.URL.Query().Get("path"), ufs.ClassNotExist, os.ErrNotExist))
	case answerClose:
		conn, _, err := rw.(http.Hijacker).Hijack()
		if err != nil {
			fw.t.Errorf("hijack: %v", err)
			return true
		}
		conn.Close()
	case answerHang:
		fw.hang(r)
	default:
		return false
	}
	return true
}

func (fw *fakeWorker) dataset(rw http.ResponseWriter, name string) (ufs.FS, bool) {
	fs, ok := fw.datasets[name]
	if !ok {
		wire.WriteError(rw, ufs.NewError("read", "", ufs.ClassInvalid, fmt.Errorf("no dataset %q", name)))
	}
	return fs, ok
}

func (fw *fakeWorker) handleStat(rw http.ResponseWriter, r *http.Request) {
	fw.metas.Add(1)
	fw.note(r.URL.Path)
	if fw.misbehave(rw, r, fw.meta.Load()) {
		return
	}
	q := r.URL.Query()
	fs, ok := fw.dataset(rw, q.Get("ds"))
	if !ok {
		return
	}
	fi, err := fs.Stat(r.Context(), q.Get("path"))
	if err != nil {
		wire.WriteError(rw, err)
		return
	}
	rw.Header().Set("Content-Type", "application/json")
	json.NewEncoder(rw).Encode(wire.FromInfo(fi))
}

func (fw *fakeWorker) handleList(rw http.ResponseWriter, r *http.Request) {
	fw.metas.Add(1)
	fw.note(r.URL.Path)
	if fw.misbehave(rw, r, fw.meta.Load()) {
		return
	}
	q := r.URL.Query()
	fs, ok := fw.dataset(rw, q.Get("ds"))
	if !ok {
		return
	}
	var all []ufs.FileInfo
	for page, err := range fs.List(r.Context(), q.Get("path")) {
		if err != nil {
			wire.WriteError(rw, err)
			return
		}
		all = append(all, page...)
	}
	rw.Header().Set("Content-Type", "application/x-ndjson")
	enc := json.NewEncoder(rw)
	for _, fi := range all {
		enc.Encode(wire.FromInfo(fi))
	}
}

func (fw *fakeWorker) handleBlock(rw http.ResponseWriter, r *http.Request) {
	fw.blocks.Add(1)
	fw.note(r.URL.Path)
	if fw.misbehave(rw, r, fw.block.Load()) {
		return
	}
	ref, err := wire.ParseRef(r.URL.Query())
	if err != nil {
		wire.WriteError(rw, ufs.NewError("read", "", ufs.ClassInvalid, err))
		return
	}
	fs, ok := fw.dataset(rw, ref.Dataset)
	if !ok {
		return
	}
	blen := min(ref.BlockSize, ref.Size-ref.Index*ref.BlockSize)
	first, last := int64(0), blen-1
	if h := r.Header.Get("Range"); h != "" {
		if _, err := fmt.Sscanf(h, "bytes=%d-%d", &first, &last); err != nil || first < 0 || last >= blen || first > last {
			http.Error(rw, "bad range "+h, http.StatusRequestedRangeNotSatisfiable)
			return
		}
	}
	n := last - first + 1
	rc, err := fs.ReadRange(r.Context(), ref.Path, ufs.Range{Off: ref.Index*ref.BlockSize + first, Len: n, IfVersion: ref.Version})
	if err != nil {
		wire.WriteError(rw, err)
		return
	}
	defer rc.Close()
	rw.Header().Set("Content-Length", fmt.Sprint(n))
	rw.Header().Set("Content-Type", "application/octet-stream")
	rw.WriteHeader(http.StatusPartialContent)
	io.Copy(rw, rc)
}

func (fw *fakeWorker) handlePing(rw http.ResponseWriter, r *http.Request) {
	fw.pings.Add(1)
	fw.note(r.URL.Path)
	if fw.misbehave(rw, r, fw.ping.Load()) {
		return
	}
	rw.WriteHeader(http.StatusNoContent)
}

// handleLocal writes the block to a file of its own and describes it, as a
// worker does for a short-circuit reader or a near copy.
func (fw *fakeWorker) handleLocal(rw http.ResponseWriter, r *http.Request) {
	fw.locals.Add(1)
	fw.note(r.URL.Path)
	q := r.URL.Query()
	fw.mu.Lock()
	fw.queries = append(fw.queries, fmt.Sprintf("verify=%s near=%s", q.Get(wire.QueryVerify), q.Get(wire.QueryNear)))
	fw.mu.Unlock()
	mode := fw.local.Load()
	if mode == localRefuse {
		wire.WriteError(rw, ufs.NewError("read", q.Get("path"), ufs.ClassRetryable, errors.New("no room for a near copy")))
		return
	}
	if mode == localNotYet {
		http.Error(rw, "not all cached yet, and being fetched", http.StatusConflict)
		return
	}
	ref, err := wire.ParseRef(q)
	if err != nil {
		wire.WriteError(rw, ufs.NewError("read", "", ufs.ClassInvalid, err))
		return
	}
	fs, ok := fw.dataset(rw, ref.Dataset)
	if !ok {
		return
	}
	blen := min(ref.BlockSize, ref.Size-ref.Index*ref.BlockSize)
	rc, err := fs.ReadRange(r.Context(), ref.Path, ufs.Range{Off: ref.Index * ref.BlockSize, Len: blen, IfVersion: ref.Version})
	if err != nil {
		wire.WriteError(rw, err)
		return
	}
	data, err := io.ReadAll(rc)
	rc.Close()
	if err != nil {
		wire.WriteError(rw, err)
		return
	}
	info := wire.LocalBlock{Length: blen, PageSize: testPageSize}
	for p := int64(0); p < blen; p += testPageSize {
		info.CRCs = append(info.CRCs, crc32.Checksum(data[p:min(blen, p+testPageSize)], castagnoli))
	}
	if mode == localCorruptAlways || mode == localCorruptOnce && q.Get(wire.QueryVerify) != wire.VerifyAll {
		data[len(data)/2] ^= 0xff // the file no longer matches its CRCs
	}
	if mode == localWrongLength {
		info.Length--
	}
	info.File = filepath.Join(fw.blockDir, fmt.Sprintf("%s-%x-%d", ref.Dataset, crc32.ChecksumIEEE([]byte(ref.Path)), ref.Index))
	if err := os.WriteFile(info.File, data, 0o644); err != nil {
		wire.WriteError(rw, err)
		return
	}
	rw.Header().Set("Content-Type", "application/json")
	json.NewEncoder(rw).Encode(info)
}

func (fw *fakeWorker) localQueries() []string {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	return slices.Clone(fw.queries)
}

// shortTempDir is a temporary directory with a path short enough for a
// unix socket.
func shortTempDir(t *testing.T) string {
	dir, err := os.MkdirTemp("", "gcl")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// envOpts describes a test cluster.
type envOpts struct {
	workers int // fake workers over TCP
	local   bool
	// datasets: name → extra YAML lines of its entry (indented by 4).
	datasets map[string]string
	client   string // extra YAML lines of the client section (indented by 2)
}

// env is a client over fake workers and file:// datasets.
type env struct {
	t       *testing.T
	dirs    map[string]string
	fss     map[string]ufs.FS
	workers []*fakeWorker
	byID    map[string]*fakeWorker
	local   *fakeWorker // the worker of the client's host, if any
	c       *Client
}

func newEnv(t *testing.T, o envOpts) *env {
	t.Helper()
	e := &env{t: t, dirs: map[string]string{}, fss: map[string]ufs.FS{}, byID: map[string]*fakeWorker{}}
	var dsYAML strings.Builder
	names := make([]string, 0, len(o.datasets))
	for name := range o.datasets {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		dir := t.TempDir()
		fs, err := local.Open(dir)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { fs.Close() })
		e.dirs[name], e.fss[name] = dir, fs
		fmt.Fprintf(&dsYAML, "  - name: %s\n    ufs: file://%s\n", name, dir)
		for line := range strings.Lines(o.datasets[name]) {
			fmt.Fprintf(&dsYAML, "    %s", line)
			if !strings.HasSuffix(line, "\n") {
				dsYAML.WriteString("\n")
			}
		}
	}
	var members []membership.Member
	for i := range o.workers {
		fw := newFakeWorker(t, fmt.Sprintf("w%d", i), e.fss)
		e.workers = append(e.workers, fw)
		e.byID[fw.id] = fw
		members = append(members, membership.Member{ID: fw.id, Addr: fw.addr(), Host: "elsewhere"})
	}
	if o.local {
		fw := newFakeWorker(t, "wlocal", e.fss)
		fw.listenUnix(t)
		e.workers = append(e.workers, fw)
		e.byID[fw.id] = fw
		e.local = fw
		members = append(members, membership.Member{ID: fw.id, Addr: fw.addr(), Socket: fw.socket, Host: testHost})
	}
	client := "  host: " + testHost + "\n"
	for line := range strings.Lines(o.client) {
		client += "  " + strings.TrimRight(line, "\n") + "\n"
	}
	yaml := fmt.Sprintf("worker:\n  block_size: %d\n  page_size: %d\nclient:\n%sdatasets:\n%s", testBlockSize, testPageSize, client, dsYAML.String())
	cfg, err := config.Parse("test.yaml", []byte(yaml))
	if err != nil {
		t.Fatalf("config:\n%s\n%v", yaml, err)
	}
	src, err := membership.NewStatic(members)
	if err != nil {
		t.Fatal(err)
	}
	e.c = NewWithMembership(cfg, src)
	t.Cleanup(func() { e.c.Close() })
	return e
}

// write puts a file of size random bytes into a dataset and returns them.
func (e *env) write(ds, name string, size int) []byte {
	e.t.Helper()
	data := make([]byte, size)
	r := rand.New(rand.NewPCG(uint64(size), uint64(len(name))))
	for i := range data {
		data[i] = byte(r.Uint32())
	}
	p := filepath.Join(e.dirs[ds], name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		e.t.Fatal(err)
	}
	if err := os.WriteFile(p, data, 0o644); err != nil {
		e.t.Fatal(err)
	}
	return data
}

// setAll sets how every worker answers a kind of request.
func (e *env) setAll(kind func(*fakeWorker) *atomic.Int32, mode int32) {
	for _, fw := range e.workers {
		kind(fw).Store(mode)
	}
}

func blockAnswer(fw *fakeWorker) *atomic.Int32 { return &fw.block }
func metaAnswer(fw *fakeWorker) *atomic.Int32  { return &fw.meta }
func pingAnswer(fw *fakeWorker) *atomic.Int32  { return &fw.ping }

// open opens a file of the namespace, failing the test on error.
func (e *env) open(p string) *File {
	e.t.Helper()
	f, err := e.c.Open(context.Background(), p)
	if err != nil {
		e.t.Fatalf("open %s: %v", p, err)
	}
	return f
}

// firstOwner is the worker the client tries first for block idx of a file.
func (e *env) firstOwner(ds, p string, idx int64) *fakeWorker {
	d, _ := e.c.Dataset(ds)
	return e.byID[e.c.owners(block.PlacementKey(ds, p, idx), d.Replicas)[0].ID]
}

// readAll reads a whole file through the client.
func readAll(t *testing.T, f *File) []byte {
	t.Helper()
	buf := make([]byte, f.Size())
	n, err := f.ReadAt(buf, 0)
	if err != nil && !(err == io.EOF && n == len(buf)) {
		t.Fatalf("read: %v", err)
	}
	return buf[:n]
}

// eventually waits for cond, failing the test after a few seconds.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
