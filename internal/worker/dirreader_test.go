package worker

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/url"
	"sync/atomic"
	"testing"

	"github.com/granary-cache/granary/internal/transport"
	"github.com/granary-cache/granary/internal/ufs"
	"github.com/granary-cache/granary/internal/wire"
)

// readCounting counts the reads made of the files it opens that return
// bytes: on CephFS, each is an OSD request for a file not yet cached.
type readCounting struct {
	ufs.FS
	reads atomic.Int64
}

// install puts f in front of dataset d's UFS, before w serves.
func (f *readCounting) install(w *Worker) {
	ds, _ := w.datasets.Get("d")
	f.FS, ds.FS = ds.FS, f
}

func (f *readCounting) ReadRange(ctx context.Context, name string, r ufs.Range) (io.ReadCloser, error) {
	rc, err := f.FS.ReadRange(ctx, name, r)
	if err != nil {
		return nil, err
	}
	return countedBody{rc, &f.reads}, nil
}

type countedBody struct {
	io.ReadCloser
	reads *atomic.Int64
}

func (b countedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if n > 0 {
		b.reads.Add(1)
	}
	return n, err
}

// TestUFSReadForPeerOneRead: a whole small file read for a peer (the
// directory reader's service) costs the UFS one read, not a first one of
// 512 bytes to sniff its type and another for the rest.
func TestUFSReadForPeerOneRead(t *testing.T) {
	counting := &readCounting{}
	tw := startWorker(t, testBlock, testPage, "", counting.install)
	data := tw.writeFile(t, "f", 100<<10)
	for _, r := range []struct{ off, n string }{{"0", "-1"}, {"0", "102400"}} {
		counting.reads.Store(0)
		q := url.Values{"ds": {"d"}, "path": {"f"}, "off": {r.off}, "len": {r.n}}
		resp, err := http.Get("http://" + tw.Addr() + wire.PathUFSRead + "?" + q.Encode())
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK || !bytes.Equal(body, data) {
			t.Fatalf("off %s len %s: status %d, %d bytes of %d, %v", r.off, r.n, resp.StatusCode, len(body), len(data), err)
		}
		if n := counting.reads.Load(); n != 1 {
			t.Errorf("off %s len %s: %d reads of the UFS file; want 1", r.off, r.n, n)
		}
	}
}

// TestUFSReadForPeerFramed: the same service on the block protocol, as
// peers use it: one UFS read per range, UFS errors with their class, and
// no read larger than a page.
func TestUFSReadForPeerFramed(t *testing.T) {
	counting := &readCounting{}
	tw := startWorker(t, testBlock, testPage, "", counting.install)
	data := tw.writeFile(t, "f", 100<<10)
	ref := tw.ref(t, "f")
	fr := transport.NewFramed(transport.Options{})
	defer fr.Close()
	ctx := context.Background()
	for _, r := range []struct{ off, n int64 }{{0, int64(len(data))}, {4096, 50 << 10}} {
		counting.reads.Store(0)
		buf := make([]byte, r.n)
		if err := fr.ReadUFS(ctx, tw.Addr(), wire.ReadRequest{Block: ref, Offset: r.off}, buf); err != nil {
			t.Fatalf("off %d len %d: %v", r.off, r.n, err)
		}
		if !bytes.Equal(buf, data[r.off:r.off+r.n]) {
			t.Errorf("off %d len %d: wrong bytes", r.off, r.n)
		}
		if n := counting.reads.Load(); n != 1 {
			t.Errorf("off %d len %d: %d reads of the UFS file; want 1", r.off, r.n, n)
		}
	}
	if n := tw.metric(t, "granary_worker_requests_total"); n < 2 {
		t.Errorf("%v requests counted", n)
	}

	var ue *ufs.Error
	gone := ref
	gone.Path = "gone"
	if err := fr.ReadUFS(ctx, tw.Addr(), wire.ReadRequest{Block: gone}, make([]byte, 10)); !errors.As(err, &ue) || ue.Class != ufs.ClassNotExist {
		t.Errorf("a missing file: %v", err)
	}
	changed := ref
	changed.Version = "another"
	if err := fr.ReadUFS(ctx, tw.Addr(), wire.ReadRequest{Block: changed}, make([]byte, len(data))); !errors.As(err, &ue) || ue.Class != ufs.ClassVersionChanged {
		t.Errorf("a file changed since it was listed: %v", err)
	}
	if err := fr.ReadUFS(ctx, tw.Addr(), wire.ReadRequest{Block: ref}, make([]byte, testPage+1)); !errors.As(err, &ue) || ue.Class != ufs.ClassInvalid {
		t.Errorf("a read larger than a page: %v", err)
	}
}
