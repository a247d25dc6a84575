package worker

import (
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/granary-cache/granary/internal/ufs"
	"github.com/granary-cache/granary/internal/wire"
)

// inFlight counts the UFS reads of dataset d open at once (from the
// request until the body is closed), and the most seen.
type inFlight struct {
	ufs.FS
	now, most, reads atomic.Int64
}

func (f *inFlight) install(w *Worker) {
	ds, _ := w.datasets.Get("d")
	f.FS, ds.FS = ds.FS, f
}

func (f *inFlight) ReadRange(ctx context.Context, name string, r ufs.Range) (io.ReadCloser, error) {
	n := f.now.Add(1)
	for m := f.most.Load(); n > m && !f.most.CompareAndSwap(m, n); m = f.most.Load() {
	}
	f.reads.Add(1)
	time.Sleep(2 * time.Millisecond) // long enough for the others to start
	rc, err := f.FS.ReadRange(ctx, name, r)
	if err != nil {
		f.now.Add(-1)
		return nil, err
	}
	return &closeCounted{ReadCloser: rc, now: &f.now}, nil
}

type closeCounted struct {
	io.ReadCloser
	now  *atomic.Int64
	done atomic.Bool
}

func (c *closeCounted) Close() error {
	if c.done.CompareAndSwap(false, true) {
		c.now.Add(-1)
	}
	return c.ReadCloser.Close()
}

// TestFetchBoundedPerRequest: a request for a whole block of many pages
// fetches them in parallel, but never more than pagesInFlight at once (each
// holds a page buffer until it is stored).
func TestFetchBoundedPerRequest(t *testing.T) {
	const page, pages = 64 << 10, 4 * pagesInFlight
	counting := &inFlight{}
	tw := startWorker(t, pages*page, page, "", counting.install, func(w *Worker) { w.locateFetchMax = pages * page })
	want := tw.writeFile(t, "big", pages*page)
	lb, err := tw.locate(context.Background(), tw.ref(t, "big"), wire.VerifyNone, false)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(lb.File); err != nil || string(got) != string(want) {
		t.Fatalf("the block file: %d bytes, %v", len(got), err)
	}
	if n := counting.reads.Load(); n != pages {
		t.Errorf("%d UFS reads for %d pages", n, pages)
	}
	if m := counting.most.Load(); m > pagesInFlight || m < 2 {
		t.Errorf("%d UFS reads at once; want 2 to %d", m, pagesInFlight)
	}
}

// TestLocateFillsLargeBlock: a block larger than locateFetchMax is not
// fetched before a locate answers. The locate is refused at once (the
// client reads through the worker meanwhile), the block is fetched whole in
// the background, once however many ask, and located when complete.
func TestLocateFillsLargeBlock(t *testing.T) {
	const page, pages = 64 << 10, 32
	counting := &inFlight{}
	tw := startWorker(t, pages*page, page, "", counting.install, func(w *Worker) { w.locateFetchMax = 4 * page })
	want := tw.writeFile(t, "big", pages*page-100)
	tw.writeFile(t, "small", 4*page)
	ref := tw.ref(t, "big")
	ctx := context.Background()
	for range 3 {
		if _, err := tw.locate(ctx, ref, wire.VerifyChanged, false); !errors.Is(err, errNotLocal) {
			t.Fatalf("locate of a cold large block: %v; want errNotLocal at once", err)
		}
	}
	// Meanwhile a read of a few pages through the worker is served.
	if got := tw.readHTTP(t, http.DefaultClient, ref, 3*page, 2*page); string(got) != string(want[3*page:5*page]) {
		t.Fatal("a read through the worker meanwhile: wrong bytes")
	}

	req, err := tw.blockRequest(ref)
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		_, busy := tw.fills.Load(req.key)
		if !busy && tw.metric(t, "granary_worker_block_fills_total") == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the block was not filled in 20 s")
		}
	}
	// The fill checked every page, read back from the file: the open that
	// hands it to the kernel has nothing left to check.
	b := tw.store.Lookup(req.key)
	f, err := tw.store.OpenShared(b)
	if err != nil {
		t.Fatal(err)
	}
	for p := range pages {
		if !tw.store.Trusted(f, p) {
			t.Errorf("page %d of the filled block is not checked", p)
		}
	}
	f.Close()
	lb, err := tw.locate(ctx, ref, wire.VerifyChanged, false)
	if err != nil {
		t.Fatalf("locate once filled: %v", err)
	}
	if got, err := os.ReadFile(lb.File); err != nil || string(got) != string(want) {
		t.Fatalf("the block file: %d bytes, %v", len(got), err)
	}
	if n := counting.reads.Load(); n != pages {
		t.Errorf("%d UFS reads for a block of %d pages; want one each", n, pages)
	}
	if n := tw.metric(t, "granary_worker_block_fills_total"); n != 1 {
		t.Errorf("%v fills; want 1", n)
	}
	// A block up to locateFetchMax is still fetched by the locate itself.
	if _, err := tw.locate(ctx, tw.ref(t, "small"), wire.VerifyChanged, false); err != nil {
		t.Errorf("locate of a block of locateFetchMax: %v", err)
	}
}

// TestNoRoomForLargeBlock: a block with no room in any tier, whose file a
// locate wants, is refused before anything is fetched (its pages would all
// be held in memory); a read of some of its bytes is served as ever.
func TestNoRoomForLargeBlock(t *testing.T) {
	const page, pages = 64 << 10, 2 * pagesInFlight
	counting := &inFlight{}
	tw := startWorkerWithQuota(t, pages*page, page, "1MiB", "", counting.install, func(w *Worker) { w.locateFetchMax = pages * page })
	want := tw.writeFile(t, "big", pages*page)
	ref := tw.ref(t, "big")
	if _, err := tw.locate(context.Background(), ref, wire.VerifyNone, false); !errors.Is(err, errNotLocal) {
		t.Fatalf("locate of a block larger than the cache: %v; want errNotLocal", err)
	}
	if n := counting.reads.Load(); n != 0 {
		t.Errorf("%d UFS reads for a block refused for want of room; want none", n)
	}
	if got := tw.readHTTP(t, http.DefaultClient, ref, 5*page, 3*page); string(got) != string(want[5*page:8*page]) {
		t.Error("a read of the block: wrong bytes")
	}
}

// rangeRecorder is a transport.RangeWriter that keeps what it is given,
// and how: from memory (Write) or from a file (WriteFile, sendfile on a
// real connection), by source.
type rangeRecorder struct {
	data              []byte
	fromFile, fromMem map[wire.Source]int64
}

func (r *rangeRecorder) Write(p []byte, src wire.Source) error {
	r.data = append(r.data, p...)
	r.fromMem[src] += int64(len(p))
	return nil
}

func (r *rangeRecorder) WriteFile(f *os.File, off, n int64, src wire.Source) error {
	buf := make([]byte, n)
	if _, err := f.ReadAt(buf, off); err != nil {
		return err
	}
	r.data = append(r.data, buf...)
	r.fromFile[src] += n
	return nil
}

// TestSendFromFile: the pages a read fetches and stores go to the reader
// from the block file (sendfile), not read back into memory first, and
// count as bytes from the UFS; the same pages read again, checked once,
// go from the file too, as bytes of the tier (checksum_test.go has the
// pages that fail their check).
func TestSendFromFile(t *testing.T) {
	const page, pages = 64 << 10, 4
	tw := startWorker(t, pages*page, page, "")
	want := tw.writeFile(t, "f", pages*page-100)
	ref := tw.ref(t, "f")
	read := func(off, n int64) *rangeRecorder {
		t.Helper()
		rec := &rangeRecorder{fromFile: map[wire.Source]int64{}, fromMem: map[wire.Source]int64{}}
		if err := tw.ServeRead(context.Background(), wire.ReadRequest{Block: ref, Offset: off, Length: n}, rec); err != nil {
			t.Fatal(err)
		}
		if string(rec.data) != string(want[off:off+n]) {
			t.Fatalf("bytes %d+%d differ", off, n)
		}
		return rec
	}
	n := int64(len(want))
	cold := read(100, n-100)
	if ufsSrc := wire.SourceOf("ufs"); cold.fromFile[ufsSrc] != n-100 || len(cold.fromMem) != 0 {
		t.Errorf("cold: from file %v, from memory %v; want all %d bytes from the file, as the UFS's", cold.fromFile, cold.fromMem, n-100)
	}
	// The first read of stored pages checks them (from memory), the next
	// sends them from the file.
	read(0, n)
	warm := read(0, n)
	if mem := wire.SourceOf("mem"); warm.fromFile[mem] != n || len(warm.fromMem) != 0 {
		t.Errorf("warm: from file %v, from memory %v; want all %d bytes from the file", warm.fromFile, warm.fromMem, n)
	}
}
