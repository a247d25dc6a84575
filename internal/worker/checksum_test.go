package worker

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/granary-cache/granary/internal/block"
	"github.com/granary-cache/granary/internal/client"
	"github.com/granary-cache/granary/internal/config"
	"github.com/granary-cache/granary/internal/wire"
)

// The test layout: a file of four pages, one block.
const (
	testPage  = 256 << 10
	testBlock = 1 << 20
)

// testWorker is a worker serving one file:// dataset, d, from a temporary
// directory, with one MEM tier.
type testWorker struct {
	*Worker
	ufsDir, stateDir string
}

// startWorker starts a worker; extra is more YAML of its worker section,
// and prepare (if any) runs on it before it serves.
func startWorker(tb testing.TB, blockSize, pageSize int64, extra string, prepare ...func(*Worker)) *testWorker {
	tb.Helper()
	return startWorkerWithQuota(tb, blockSize, pageSize, "1GiB", extra, prepare...)
}

// startWorkerWithQuota is startWorker with a MEM tier of quota.
func startWorkerWithQuota(tb testing.TB, blockSize, pageSize int64, quota, extra string, prepare ...func(*Worker)) *testWorker {
	tb.Helper()
	ufsDir, stateDir := tb.TempDir(), tb.TempDir()
	doc := fmt.Sprintf(`datasets:
  - {name: d, ufs: "file://%s"}
worker:
  id: w1
  listen: 127.0.0.1:0
  admin: 127.0.0.1:0
  state_dir: %q
  block_size: %d
  page_size: %d
%s  tiers:
    - {name: MEM, path: %q, quota: %s}
`, ufsDir, stateDir, blockSize, pageSize, extra, filepath.Join(stateDir, "mem"), quota)
	w, stop := serveWorker(tb, doc, prepare...)
	tb.Cleanup(stop)
	return &testWorker{Worker: w, ufsDir: ufsDir, stateDir: stateDir}
}

// serveWorker parses a worker's configuration, starts it and returns it
// with the function that stops it (once, however often called); prepare
// runs on the worker before it serves.
func serveWorker(tb testing.TB, doc string, prepare ...func(*Worker)) (*Worker, func()) {
	tb.Helper()
	cfg, err := config.Parse("worker.yaml", []byte(doc))
	if err != nil {
		tb.Fatal(err)
	}
	w, err := New(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		tb.Fatal(err)
	}
	for _, p := range prepare {
		p(w)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Serve(ctx) }()
	var once sync.Once
	return w, func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				tb.Errorf("worker: %v", err)
			}
		})
	}
}

// writeFile puts a file of random bytes in the dataset.
func (tw *testWorker) writeFile(tb testing.TB, name string, size int) []byte {
	tb.Helper()
	data := make([]byte, size)
	r := rand.New(rand.NewPCG(uint64(size), 7))
	for i := range data {
		data[i] = byte(r.Uint32())
	}
	if err := os.WriteFile(filepath.Join(tw.ufsDir, name), data, 0o644); err != nil {
		tb.Fatal(err)
	}
	return data
}

// ref names block 0 of a dataset file, at the version the worker lists.
func (tw *testWorker) ref(tb testing.TB, name string) block.Ref {
	tb.Helper()
	resp, err := http.Get("http://" + tw.Addr() + wire.PathStat + "?" + url.Values{"ds": {"d"}, "path": {name}}.Encode())
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	var fi wire.FileInfo
	if err := json.NewDecoder(resp.Body).Decode(&fi); err != nil {
		tb.Fatal(err)
	}
	return block.Ref{ID: block.ID{Dataset: "d", Path: name, Version: fi.Version, BlockSize: int64(tw.cfg.Worker.BlockSize)}, Size: fi.Size}
}

// readHTTP reads bytes [off, off+n) of a block over the data endpoint.
func (tw *testWorker) readHTTP(tb testing.TB, hc *http.Client, ref block.Ref, off, n int64) []byte {
	tb.Helper()
	req, _ := http.NewRequest(http.MethodGet, "http://"+tw.Addr()+wire.PathBlock+"?"+wire.RefQuery(ref).Encode(), nil)
	req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", off, off+n-1))
	resp, err := hc.Do(req)
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusPartialContent {
		tb.Fatalf("block read: HTTP %d, %v: %s", resp.StatusCode, err, body)
	}
	return body
}

// local asks the unix socket's local endpoint for a block's file.
func (tw *testWorker) local(tb testing.TB, ref block.Ref, verify string) wire.LocalBlock {
	tb.Helper()
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", tw.Socket())
	}}}
	defer hc.CloseIdleConnections()
	q := wire.RefQuery(ref)
	q.Set(wire.QueryVerify, verify)
	resp, err := hc.Get("http://worker" + wire.PathLocal + "?" + q.Encode())
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	var lb wire.LocalBlock
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(resp.Body)
		tb.Fatalf("local: HTTP %d: %s", resp.StatusCode, body)
	}
	if err := json.NewDecoder(resp.Body).Decode(&lb); err != nil {
		tb.Fatal(err)
	}
	return lb
}

// blockFile is the one block file the worker holds.
func (tw *testWorker) blockFile(tb testing.TB) string {
	tb.Helper()
	files, _ := filepath.Glob(filepath.Join(tw.stateDir, "mem", "blocks", "*", "*"))
	if len(files) != 1 {
		tb.Fatalf("%d block files; want 1: %v", len(files), files)
	}
	return files[0]
}

// flip inverts one byte of a file.
func flip(tb testing.TB, path string, off int64) {
	tb.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	one := make([]byte, 1)
	if _, err := f.ReadAt(one, off); err != nil {
		tb.Fatal(err)
	}
	if _, err := f.WriteAt([]byte{one[0] ^ 0x01}, off); err != nil {
		tb.Fatal(err)
	}
}

// metric is the value of a counter of the worker.
func (tw *testWorker) metric(tb testing.TB, name string) float64 {
	tb.Helper()
	families, err := tw.Registry().Gather()
	if err != nil {
		tb.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() == name {
			var sum float64
			for _, m := range f.GetMetric() {
				sum += m.GetCounter().GetValue()
			}
			return sum
		}
	}
	tb.Fatalf("no metric %s", name)
	return 0
}

// TestChecksumServedPaths: a byte flipped in a cached block file never
// reaches a reader, whichever way it reads: a range over HTTP (the page is
// checked as it is sent), the local endpoint that passthrough opens use
// (the whole block is checked), and a short-circuit client (it checks the
// page, then has the worker check the block). Each time the page is
// counted, dropped and fetched again.
func TestChecksumServedPaths(t *testing.T) {
	tw := startWorker(t, testBlock, testPage, "  scrub_bytes_per_second: 0\n")
	const size = testBlock - 1000
	want := tw.writeFile(t, "f.bin", size)
	ref := tw.ref(t, "f.bin")
	hc := &http.Client{}
	defer hc.CloseIdleConnections()
	if got := tw.readHTTP(t, hc, ref, 0, size); !bytes.Equal(got, want) {
		t.Fatal("cold read: wrong bytes")
	}
	path := tw.blockFile(t)
	corrupt := func() float64 { return tw.metric(t, "granary_cache_corrupt_pages_total") }
	expect := func(what string, n float64) {
		t.Helper()
		if got := corrupt(); got != n {
			t.Errorf("%s: %v corrupt pages counted; want %v", what, got, n)
		}
		if disk, err := os.ReadFile(path); err != nil || !bytes.Equal(disk, want) {
			t.Errorf("%s: the block file was not repaired (%v)", what, err)
		}
	}

	// A warm read first, so that the page was served and checked before:
	// it must be checked again at the next send.
	if got := tw.readHTTP(t, hc, ref, 0, size); !bytes.Equal(got, want) {
		t.Fatal("warm read: wrong bytes")
	}
	flip(t, path, 2*testPage+17)
	if got := tw.readHTTP(t, hc, ref, 0, size); !bytes.Equal(got, want) {
		t.Error("HTTP read of the whole block: wrong bytes")
	}
	expect("HTTP, whole block", 1)

	// A range inside the page, and one that starts in a clean page: the
	// bad page is caught whether it comes first or later in the response.
	flip(t, path, 2*testPage+100)
	if got := tw.readHTTP(t, hc, ref, 2*testPage+50, 1000); !bytes.Equal(got, want[2*testPage+50:2*testPage+1050]) {
		t.Error("HTTP read inside the page: wrong bytes")
	}
	expect("HTTP, inside the page", 2)
	flip(t, path, 3*testPage+1)
	if got := tw.readHTTP(t, hc, ref, testPage-10, 3*testPage-10); !bytes.Equal(got, want[testPage-10:size]) {
		t.Error("HTTP read across pages: wrong bytes")
	}
	expect("HTTP, later page", 3)

	// The local endpoint checks the whole block unless told the client does.
	flip(t, path, 5)
	lb := tw.local(t, ref, "0")
	if corrupt() != 3 {
		t.Error("verify=0: the worker checked the block although the client does")
	}
	if crc := crc32.Checksum(want[:testPage], crc32.MakeTable(crc32.Castagnoli)); lb.CRCs[0] != crc {
		t.Fatalf("CRC of page 0: %08x; want %08x", lb.CRCs[0], crc)
	}
	lb = tw.local(t, ref, "1")
	if lb.File != path || lb.Length != size || len(lb.CRCs) != 4 {
		t.Errorf("local answer %+v", lb)
	}
	expect("local endpoint", 4)

	// A short-circuit client finds the bad page itself, has the worker check
	// the block, and reads the repaired file.
	flip(t, path, testPage+3)
	cl := tw.client(t, true)
	if got := readAll(t, cl, "/d/f.bin", size); !bytes.Equal(got, want) {
		t.Error("short-circuit read: wrong bytes")
	}
	if st := cl.Stats(); st.ShortCircuitReads == 0 || st.RemoteReads != 0 {
		t.Errorf("short-circuit client stats %+v; want short-circuit reads only", st)
	}
	expect("short-circuit", 5)

	// Passthrough: the file handed to the kernel was checked whole.
	flip(t, path, 3*testPage+500)
	f, err := cl.Open(context.Background(), "/d/f.bin")
	if err != nil {
		t.Fatal(err)
	}
	fd, err := f.LocalFile(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(fd)
	fd.Close()
	if err != nil || !bytes.Equal(got, want) {
		t.Errorf("passthrough file: %d bytes, %v; want the file's", len(got), err)
	}
	expect("passthrough", 6)
}

// TestChecksumScrubRepairs: the scrub finds a byte flipped in a block file
// nobody reads, counts it and fetches the page again at once, so that a
// reader through passthrough (which never asks the worker) gets the right
// bytes again.
func TestChecksumScrubRepairs(t *testing.T) {
	tw := startWorker(t, testBlock, testPage, "  scrub_bytes_per_second: 64MiB\n  scrub_interval: 1s\n")
	want := tw.writeFile(t, "f.bin", testBlock)
	ref := tw.ref(t, "f.bin")
	hc := &http.Client{}
	defer hc.CloseIdleConnections()
	tw.readHTTP(t, hc, ref, 0, testBlock)
	path := tw.blockFile(t)
	flip(t, path, 3*testPage+9)
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		disk, _ := os.ReadFile(path)
		if tw.metric(t, "granary_cache_corrupt_pages_total") == 1 && bytes.Equal(disk, want) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the scrub neither counted nor repaired the flipped page: %v counted", tw.metric(t, "granary_cache_corrupt_pages_total"))
		}
	}
	if tw.metric(t, "granary_cache_scrubbed_bytes_total") < testBlock {
		t.Error("scrubbed bytes not counted")
	}
}

// client returns a client of the worker.
func (tw *testWorker) client(tb testing.TB, shortCircuit bool) *client.Client {
	tb.Helper()
	doc := fmt.Sprintf(`datasets:
  - {name: d, ufs: "file://%s"}
membership:
  workers:
    - {id: w1, addr: %q, socket: %q}
worker:
  block_size: %d
  page_size: %d
client:
  short_circuit: %v
`, tw.ufsDir, tw.Addr(), tw.Socket(), tw.cfg.Worker.BlockSize, tw.cfg.Worker.PageSize, shortCircuit)
	cfg, err := config.Parse("client.yaml", []byte(doc))
	if err != nil {
		tb.Fatal(err)
	}
	cl, err := client.New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { cl.Close() })
	return cl
}

func readAll(tb testing.TB, cl *client.Client, p string, size int) []byte {
	tb.Helper()
	f, err := cl.Open(context.Background(), p)
	if err != nil {
		tb.Fatal(err)
	}
	buf := make([]byte, size)
	if n, err := f.ReadAt(buf, 0); n != size || (err != nil && err != io.EOF) {
		tb.Fatalf("read %s: %d bytes, %v", p, n, err)
	}
	return buf
}
