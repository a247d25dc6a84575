package transport_test

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"

	"github.com/granary-cache/granary/internal/block"
	"github.com/granary-cache/granary/internal/transport"
	"github.com/granary-cache/granary/internal/ufs"
	"github.com/granary-cache/granary/internal/wire"
)

// ufsHandler reads "UFS files" for peers: name -> content.
type ufsHandler struct {
	memHandler
	ufs map[string][]byte
}

func (h *ufsHandler) ServeUFSRead(_ context.Context, r wire.ReadRequest, w transport.RangeWriter) error {
	switch r.Block.Path {
	case "slow-ufs":
		return &ufs.Error{Op: "read", Dataset: "d", Path: r.Block.Path, Class: ufs.ClassRetryable, Err: errors.New("the UFS did not answer in time")}
	case "broken-disk":
		return errors.New("read the page buffer: input/output error")
	}
	data, ok := h.ufs[r.Block.Path]
	if !ok {
		return &ufs.Error{Op: "read", Dataset: "d", Path: r.Block.Path, Class: ufs.ClassNotExist, Err: os.ErrNotExist}
	}
	return w.Write(data[r.Offset:r.Offset+r.Length], wire.SourceUFS)
}

// serveTCP serves h's block protocol (and HTTP beside it) on loopback.
func serveTCP(t *testing.T, h transport.Handler) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &transport.Server{Handler: h}
	hs := &http.Server{Handler: http.NotFoundHandler()}
	go hs.Serve(transport.Listen(ln, srv))
	t.Cleanup(func() {
		hs.Close()
		srv.Close()
	})
	return ln.Addr().String()
}

func TestReadUFS(t *testing.T) {
	data := []byte(strings.Repeat("granary ", 4096))
	addr := serveTCP(t, &ufsHandler{memHandler: memHandler{dir: t.TempDir(), files: map[string]memFile{}}, ufs: map[string][]byte{"f": data}})
	fr := transport.NewFramed(transport.Options{})
	defer fr.Close()
	ctx := context.Background()
	req := func(name string, off int64) wire.ReadRequest {
		return wire.ReadRequest{Block: block.Ref{ID: block.ID{Dataset: "d", Path: name, Version: "v", BlockSize: 1 << 20}, Size: int64(len(data))}, Offset: off}
	}

	buf := make([]byte, 1000)
	if err := fr.ReadUFS(ctx, addr, req("f", 77), buf); err != nil || !bytes.Equal(buf, data[77:1077]) {
		t.Fatalf("ReadUFS: %v", err)
	}
	var ue *ufs.Error
	if err := fr.ReadUFS(ctx, addr, req("gone", 0), buf); !errors.As(err, &ue) || ue.Class != ufs.ClassNotExist {
		t.Errorf("a missing file: %v", err)
	}
	// The peer reached the UFS, which did not answer: final, not a
	// worker's failure to read around.
	if err := fr.ReadUFS(ctx, addr, req("slow-ufs", 0), buf); !errors.As(err, &ue) || ue.Class != ufs.ClassRetryable || errors.Is(err, wire.ErrWorker) {
		t.Errorf("a UFS that did not answer: %v", err)
	}
	if err := fr.ReadUFS(ctx, addr, req("broken-disk", 0), buf); !errors.Is(err, wire.ErrWorker) || !wire.Answered(err) {
		t.Errorf("a failing peer: %v", err)
	}

	// A server whose handler reads no UFS for peers says so.
	plain := serveTCP(t, &memHandler{dir: t.TempDir(), files: map[string]memFile{}})
	if err := fr.ReadUFS(ctx, plain, req("f", 0), buf); !errors.Is(err, wire.ErrWorker) || !strings.Contains(err.Error(), "reads no UFS") {
		t.Errorf("a server that reads no UFS: %v", err)
	}

	// A worker that speaks HTTP only.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: http.NotFoundHandler()}
	go hs.Serve(ln)
	defer hs.Close()
	if err := fr.ReadUFS(ctx, ln.Addr().String(), req("f", 0), buf); !errors.Is(err, transport.ErrHTTPOnly) {
		t.Errorf("an HTTP-only worker: %v", err)
	}
}
