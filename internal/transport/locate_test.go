package transport_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/granary-cache/granary/internal/block"
	"github.com/granary-cache/granary/internal/transport"
	"github.com/granary-cache/granary/internal/ufs"
	"github.com/granary-cache/granary/internal/wire"
)

// locateServer serves the block protocol, with locate requests answered by
// locate (none when nil), on a unix socket, and HTTP beside it; it returns
// the socket's path.
func locateServer(t *testing.T, locate func(context.Context, wire.LocateRequest) (wire.LocalBlock, error), admit func(net.Conn) error) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "worker.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &transport.Server{Handler: &memHandler{dir: t.TempDir(), files: map[string]memFile{}}, Locate: locate, Admit: admit}
	hs := &http.Server{Handler: http.NotFoundHandler()}
	go hs.Serve(transport.Listen(ln, srv))
	t.Cleanup(func() {
		hs.Close()
		srv.Close()
	})
	return sock
}

func locateOf(path string) wire.LocateRequest {
	return wire.LocateRequest{Read: wire.ReadRequest{Block: block.Ref{ID: block.ID{Dataset: "d", Path: path, Version: "v1", BlockSize: 4 << 20}, Size: 5 << 20}}, Verify: wire.VerifyNone}
}

func TestLocate(t *testing.T) {
	want := wire.LocalBlock{File: "/cache/mem/00/blk", Length: 4 << 20, PageSize: 1 << 20, CRCs: []uint32{1, 2, 3, 4}}
	started := make(chan struct{}, 1)
	ended := make(chan error, 1)
	sock := locateServer(t, func(ctx context.Context, r wire.LocateRequest) (wire.LocalBlock, error) {
		switch r.Read.Block.Path {
		case "a":
			if r.Verify != wire.VerifyAll || !r.Near || r.Read.Block.Index != 1 {
				return wire.LocalBlock{}, errors.New("the request changed on the way")
			}
			return want, nil
		case "gone":
			return wire.LocalBlock{}, &ufs.Error{Op: "read", Dataset: "d", Path: "gone", Class: ufs.ClassNotExist, Err: os.ErrNotExist}
		case "full":
			return wire.LocalBlock{}, errors.New("block cannot be cached on this worker now")
		case "slow":
			started <- struct{}{}
			<-ctx.Done()
			ended <- ctx.Err()
			return wire.LocalBlock{}, ctx.Err()
		}
		return wire.LocalBlock{}, errors.New("unexpected")
	}, nil)
	fr := transport.NewFramed(transport.Options{})
	defer fr.Close()
	ctx := context.Background()

	r := locateOf("a")
	r.Verify, r.Near, r.Read.Block.Index = wire.VerifyAll, true, 1
	got, err := fr.Locate(ctx, sock, r)
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("Locate = %+v, %v; want %+v", got, err, want)
	}

	// A UFS error keeps its class; the worker's own is the worker's.
	_, err = fr.Locate(ctx, sock, locateOf("gone"))
	var ue *ufs.Error
	if !errors.As(err, &ue) || ue.Class != ufs.ClassNotExist || ue.Path != "gone" {
		t.Errorf("a missing file: %v", err)
	}
	_, err = fr.Locate(ctx, sock, locateOf("full"))
	if !errors.Is(err, wire.ErrWorker) || !wire.Answered(err) || errors.As(err, &ue) || !strings.Contains(err.Error(), "cannot be cached") {
		t.Errorf("a refusal: %v", err)
	}

	// A caller that gives up ends the worker's work too, and the
	// connection serves the next call.
	cctx, cancel := context.WithCancel(ctx)
	go func() {
		<-started
		cancel()
	}()
	if _, err := fr.Locate(cctx, sock, locateOf("slow")); !errors.Is(err, context.Canceled) {
		t.Errorf("a call given up: %v", err)
	}
	select {
	case err := <-ended:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("the worker's context ended with %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the worker went on with a locate given up")
	}
	if _, err := fr.Locate(ctx, sock, r); err != nil {
		t.Errorf("a call after one given up: %v", err)
	}

	// Several at once on the same connections.
	errs := make(chan error, 32)
	for range cap(errs) {
		go func() {
			got, err := fr.Locate(ctx, sock, r)
			if err == nil && !reflect.DeepEqual(got, want) {
				err = errors.New("a wrong answer")
			}
			errs <- err
		}()
	}
	for range cap(errs) {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}

func TestLocateRefused(t *testing.T) {
	fr := transport.NewFramed(transport.Options{})
	defer fr.Close()
	ctx := context.Background()

	// A server that serves no locate (the data port) says so.
	sock := locateServer(t, nil, nil)
	if _, err := fr.Locate(ctx, sock, locateOf("a")); !errors.Is(err, wire.ErrWorker) || !strings.Contains(err.Error(), "unix socket only") {
		t.Errorf("locate where it is not served: %v", err)
	}

	// A peer the server does not admit is refused at the hello.
	sock = locateServer(t, func(context.Context, wire.LocateRequest) (wire.LocalBlock, error) {
		return wire.LocalBlock{}, nil
	}, func(net.Conn) error { return errors.New("only the worker's own user or root may use its socket") })
	if _, err := fr.Locate(ctx, sock, locateOf("a")); !errors.Is(err, wire.ErrWorker) || !strings.Contains(err.Error(), "own user or root") {
		t.Errorf("a peer not admitted: %v", err)
	}

	// A worker that speaks HTTP only (older than the protocol).
	dir := t.TempDir()
	sock = filepath.Join(dir, "old.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: http.NotFoundHandler()}
	go hs.Serve(ln)
	defer hs.Close()
	if _, err := fr.Locate(ctx, sock, locateOf("a")); !errors.Is(err, transport.ErrHTTPOnly) {
		t.Errorf("an HTTP-only worker: %v", err)
	}
	// Reads from its socket too: HTTP is the client's to try on the data
	// port, not on the socket's path.
	if _, err := fr.Read(ctx, sock, locateOf("a").Read, make([]byte, 10)); !errors.Is(err, transport.ErrHTTPOnly) {
		t.Errorf("a read from an HTTP-only worker's socket: %v", err)
	}

	// No socket at all: the worker is not there.
	if _, err := fr.Locate(ctx, filepath.Join(dir, "none.sock"), locateOf("a")); !errors.Is(err, wire.ErrWorker) {
		t.Errorf("no socket: %v", err)
	}
}
