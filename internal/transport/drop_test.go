package transport_test

import (
	"bytes"
	"context"
	"errors"
	"net"
	"sync"
	"testing"
	"time"

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
