package transport_test

import (
	"bytes"
	"context"
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/granary-cache/granary/internal/block"
	"github.com/granary-cache/granary/internal/transport"
	"github.com/granary-cache/granary/internal/wire"
)

// partition is a TCP relay to a server that can be cut (bytes held, no
// connection closed: what a host whose link went down looks like) and
// healed.
type partition struct {
	ln      net.Listener
	backend string
	mu      sync.Mutex
	open    chan struct{} // closed while bytes flow
	stop    chan struct{}
	wg      sync.WaitGroup
}

func newPartition(t *testing.T, backend string) *partition {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &partition{ln: ln, backend: backend, open: make(chan struct{}), stop: make(chan struct{})}
	close(p.open)
	p.wg.Go(p.accept)
	t.Cleanup(func() {
		close(p.stop)
		ln.Close()
		p.wg.Wait()
	})
	return p
}

func (p *partition) addr() string { return p.ln.Addr().String() }

func (p *partition) cut() {
	p.mu.Lock()
	p.open = make(chan struct{})
	p.mu.Unlock()
}

func (p *partition) heal() {
	p.mu.Lock()
	close(p.open)
	p.mu.Unlock()
}

func (p *partition) gate() chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.open
}

func (p *partition) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		b, err := net.Dial("tcp", p.backend)
		if err != nil {
			c.Close()
			continue
		}
		p.wg.Go(func() { p.relay(c, b) })
		p.wg.Go(func() { p.relay(b, c) })
	}
}

// relay copies src to dst, holding each chunk while the link is cut.
func (p *partition) relay(src, dst net.Conn) {
	defer src.Close()
	defer dst.Close()
	go func() { // a relay held at the gate still ends with the test
		<-p.stop
		src.Close()
	}()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			select {
			case <-p.gate():
			case <-p.stop:
				return
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// TestDropEndsHungReads: reads to a worker cut off hang (its link is
// down: nothing fails); Drop ends them at once as unanswered, and once the
// link is back the reader opens a new connection instead of queueing on
// the old ones.
func TestDropEndsHungReads(t *testing.T) {
	tg := startMem(t, nil)
	data := bytes.Repeat([]byte("partition"), 20000)
	ref := tg.Put(t, "f", data)
	link := newPartition(t, tg.addr)
	rd := transport.NewFramed(transport.Options{Token: testToken})
	defer rd.Close()
	read := func(ctx context.Context) error {
		buf := make([]byte, len(data))
		_, err := rd.Read(ctx, link.addr(), wire.ReadRequest{Block: ref, Length: int64(len(data))}, buf)
		if err == nil && !bytes.Equal(buf, data) {
			return errors.New("wrong bytes")
		}
		return err
	}
	if err := read(context.Background()); err != nil {
		t.Fatalf("before the cut: %v", err)
	}
	link.cut()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	errc := make(chan error, 4)
	for range cap(errc) {
		go func() { errc <- read(ctx) }()
	}
	select {
	case err := <-errc:
		t.Fatalf("a read through a cut link returned: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	rd.Drop(link.addr())
	for range cap(errc) {
		select {
		case err := <-errc:
			if !errors.Is(err, wire.ErrWorker) || wire.Answered(err) {
				t.Errorf("a read ended by Drop: %v; want an unanswered worker error", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("a read still hung 10 s after Drop")
		}
	}
	link.heal()
	rctx, rcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer rcancel()
	if err := read(rctx); err != nil {
		t.Fatalf("after the link came back: %v", err)
	}
}

// gatedHandler holds the reads of one file until its gate opens or the
// read is cancelled.
type gatedHandler struct {
	*memHandler
	path      string
	mu        sync.Mutex
	gate      chan struct{} // replaced between rounds: under mu
	cancelled chan struct{}
}

func (h *gatedHandler) currentGate() chan struct{} {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.gate
}

func (h *gatedHandler) ServeRead(ctx context.Context, r wire.ReadRequest, w transport.RangeWriter) error {
	if r.Block.Path == h.path {
		select {
		case <-h.currentGate():
		case <-ctx.Done():
			close(h.cancelled)
			return ctx.Err()
		}
	}
	return h.memHandler.ServeRead(ctx, r, w)
}

// TestSlowReadDoesNotHoldConnection: a read the worker serves slowly (a
// miss waiting on the UFS) does not hold up the reads behind it on the same
// connection, and its cancel still reaches the worker.
func TestSlowReadDoesNotHoldConnection(t *testing.T) {
	mh := &memHandler{dir: t.TempDir(), files: map[string]memFile{}}
	h := &gatedHandler{memHandler: mh, path: "slow", gate: make(chan struct{}), cancelled: make(chan struct{})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &transport.Server{Handler: h}
	split := transport.Listen(ln, srv)
	defer func() {
		split.Close()
		srv.Close()
	}()
	slow := mh.put(t, "slow", bytes.Repeat([]byte("s"), 5000))
	fast := mh.put(t, "fast", bytes.Repeat([]byte("f"), 5000))
	rd := transport.NewFramed(transport.Options{Conns: 1}) // one connection: both reads share it
	defer rd.Close()
	addr := ln.Addr().String()
	read := func(ctx context.Context, ref block.Ref) error {
		_, err := rd.Read(ctx, addr, wire.ReadRequest{Block: ref, Length: 5000}, make([]byte, 5000))
		return err
	}
	if err := read(context.Background(), fast); err != nil {
		t.Fatal(err)
	}
	// Twice: once answered when the gate opens, once cancelled.
	for _, cancelIt := range []bool{false, true} {
		ctx, cancel := context.WithCancel(context.Background())
		slowDone := make(chan error, 1)
		go func() { slowDone <- read(ctx, slow) }()
		for i := range 5 {
			fctx, fcancel := context.WithTimeout(context.Background(), 10*time.Second)
			err := read(fctx, fast)
			fcancel()
			if err != nil {
				t.Fatalf("read %d behind a slow one: %v", i, err)
			}
		}
		select {
		case err := <-slowDone:
			t.Fatalf("the slow read returned before its gate opened: %v", err)
		default:
		}
		if cancelIt {
			cancel()
			select {
			case <-h.cancelled:
			case <-time.After(10 * time.Second):
				t.Fatal("the worker did not see the slow read cancelled")
			}
		} else {
			close(h.currentGate())
		}
		select {
		case err := <-slowDone:
			if cancelIt != (err != nil) {
				t.Errorf("slow read (cancelled %v): %v", cancelIt, err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("the slow read did not end")
		}
		cancel()
		h.mu.Lock()
		h.gate = make(chan struct{})
		h.mu.Unlock()
	}
}
