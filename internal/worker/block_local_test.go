package worker

import (
	"context"
	"errors"
	"hash/crc32"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/granary-cache/granary/internal/transport"
	"github.com/granary-cache/granary/internal/ufs"
	"github.com/granary-cache/granary/internal/wire"
)

// TestLocateOnUnixSocket asks the worker where a block's file is on the
// block protocol over its unix socket, and over HTTP: the same answer.
func TestLocateOnUnixSocket(t *testing.T) {
	tw := startWorker(t, testBlock, testPage, "")
	want := tw.writeFile(t, "f", 3*testPage+5)
	ref := tw.ref(t, "f")
	fr := transport.NewFramed(transport.Options{})
	defer fr.Close()
	ctx := context.Background()

	requests := tw.localRequests(t)
	lb, err := fr.Locate(ctx, tw.Socket(), wire.LocateRequest{Read: wire.ReadRequest{Block: ref}, Verify: wire.VerifyChanged})
	if err != nil {
		t.Fatal(err)
	}
	if lb.Length != int64(len(want)) || lb.PageSize != testPage || len(lb.CRCs) != 4 || !strings.HasPrefix(lb.File, tw.stateDir) {
		t.Fatalf("located %+v", lb)
	}
	if crc := crc32.Checksum(want[:testPage], crc32.MakeTable(crc32.Castagnoli)); lb.CRCs[0] != crc {
		t.Errorf("CRC of page 0: %08x; want %08x", lb.CRCs[0], crc)
	}
	if got, err := os.ReadFile(lb.File); err != nil || string(got) != string(want) {
		t.Errorf("the block file: %d bytes, %v", len(got), err)
	}
	if n := tw.localRequests(t) - requests; n != 1 {
		t.Errorf("%v local requests counted for one locate; want 1", n)
	}
	if viaHTTP := tw.local(t, ref, wire.VerifyChanged); !reflect.DeepEqual(viaHTTP, lb) {
		t.Errorf("over HTTP %+v; on the block protocol %+v", viaHTTP, lb)
	}

	// Errors of the UFS keep their class.
	gone := ref
	gone.Path = "gone"
	_, err = fr.Locate(ctx, tw.Socket(), wire.LocateRequest{Read: wire.ReadRequest{Block: gone}, Verify: wire.VerifyNone})
	var ue *ufs.Error
	if !errors.As(err, &ue) || ue.Class != ufs.ClassNotExist {
		t.Errorf("a missing file: %v", err)
	}
	other := ref
	other.Dataset = "other"
	_, err = fr.Locate(ctx, tw.Socket(), wire.LocateRequest{Read: wire.ReadRequest{Block: other}, Verify: wire.VerifyNone})
	if !errors.As(err, &ue) || ue.Class != ufs.ClassInvalid || !strings.Contains(err.Error(), "not served") {
		t.Errorf("a dataset not served: %v", err)
	}

	// The data port hands out no paths.
	_, err = fr.Locate(ctx, tw.Addr(), wire.LocateRequest{Read: wire.ReadRequest{Block: ref}, Verify: wire.VerifyNone})
	if !errors.Is(err, wire.ErrWorker) || !strings.Contains(err.Error(), "unix socket only") {
		t.Errorf("locate on the data port: %v", err)
	}
}

// TestSocketPeers: the unix socket serves the worker's own user and root,
// as the kernel names them (SO_PEERCRED), and no one else.
func TestSocketPeers(t *testing.T) {
	self := os.Getuid()
	for _, c := range []struct {
		uid         int
		known, want bool
	}{{self, true, true}, {0, true, true}, {self + 4242, true, false}, {self, false, false}} {
		if got := allowedPeer(c.uid, c.known); got != c.want {
			t.Errorf("allowedPeer(%d, %v) = %v", c.uid, c.known, got)
		}
	}
	sock := filepath.Join(t.TempDir(), "s")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		if c, err := net.Dial("unix", sock); err == nil {
			defer c.Close()
			c.Read(make([]byte, 1))
		}
	}()
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if uid, ok := peerUID(c); !ok || uid != self {
		t.Errorf("peerUID = %d, %v; want %d", uid, ok, self)
	}
	if err := admitPeer(c); err != nil {
		t.Errorf("admitPeer of this process: %v", err)
	}
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if err := admitPeer(a); !errors.Is(err, errNotPeer) {
		t.Errorf("admitPeer of a connection with no peer credentials: %v", err)
	}
}

// TestLocateWantsTheToken: with auth.token, the unix socket wants it on
// the block protocol as over HTTP, beside the peer's user.
func TestLocateWantsTheToken(t *testing.T) {
	tg := startTokenWorker(t)
	ref := tg.Put(t, "f", make([]byte, 5000))
	req := wire.LocateRequest{Read: wire.ReadRequest{Block: ref}, Verify: wire.VerifyNone}
	ctx := context.Background()
	for _, c := range []struct{ token, want string }{{"", "missing or wrong token"}, {"guess", "missing or wrong token"}, {tg.token, ""}} {
		fr := transport.NewFramed(transport.Options{Token: c.token})
		lb, err := fr.Locate(ctx, tg.w.Socket(), req)
		fr.Close()
		switch {
		case c.want == "" && (err != nil || lb.Length != 5000):
			t.Errorf("token %q: %+v, %v", c.token, lb, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("token %q: %v; want %q", c.token, err, c.want)
		}
	}
}

// localRequests is the count of the worker's local requests (op "local"),
// whatever their answer.
func (tw *testWorker) localRequests(tb testing.TB) float64 {
	tb.Helper()
	families, err := tw.Registry().Gather()
	if err != nil {
		tb.Fatal(err)
	}
	var sum float64
	for _, f := range families {
		if f.GetName() != "granary_worker_requests_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "op" && l.GetValue() == "local" {
					sum += m.GetCounter().GetValue()
				}
			}
		}
	}
	return sum
}
