package transport

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/granary-cache/granary/internal/ufs"
	"github.com/granary-cache/granary/internal/wire"
)

// Framed reads over the framed block protocol, falling back to HTTP for a
// worker that answers the hello in HTTP.
type Framed struct {
	opts     Options
	fallback *HTTP

	mu      sync.Mutex
	peers   map[string]*peer
	closed  bool
	reaping bool          // reap runs
	stop    chan struct{} // closed by Close: reap returns
}

// NewFramed returns a Reader on the framed protocol.
func NewFramed(opts Options) *Framed {
	if opts.Conns <= 0 {
		opts.Conns = 32
	}
	return &Framed{opts: opts, fallback: NewHTTP(opts), peers: map[string]*peer{}, stop: make(chan struct{})}
}

// readBuffer is the size of a connection's read buffer.
const readBuffer = 16 << 10

var errNotFramed = errors.New("the worker does not speak the block protocol")

// dial opens a connection and says hello.
func (t *Framed) dial(ctx context.Context, addr string) (*cliConn, error) {
	timeout := t.opts.connectTimeout()
	dctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	d := net.Dialer{KeepAlive: 30 * time.Second}
	network := "tcp"
	if strings.HasPrefix(addr, "/") {
		network = "unix" // a worker's socket on this host
	}
	nc, err := d.DialContext(dctx, network, addr)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", wire.ErrWorker, err)
	}
	if t.opts.TLS != nil {
		cfg := t.opts.TLS
		if cfg.ServerName == "" {
			cfg = cfg.Clone()
			cfg.ServerName, _, _ = net.SplitHostPort(addr)
		}
		tc := tls.Client(nc, cfg)
		if err := tc.HandshakeContext(dctx); err != nil {
			nc.Close()
			return nil, fmt.Errorf("%w: TLS with %s: %v", wire.ErrWorker, addr, err)
		}
		nc = tc
	}
	hello, err := wire.AppendHello(nil, t.opts.Token)
	if err != nil {
		nc.Close()
		return nil, err
	}
	// The hello is bounded by the timeout and ends when the call's ctx does
	// (a worker cut off answers nothing).
	nc.SetDeadline(time.Now().Add(timeout))
	unwatch := context.AfterFunc(dctx, func() { nc.SetDeadline(time.Unix(1, 0)) })
	// The hello's own buffer; the frames after it are read through an
	// input (framed_input.go).
	br := bufio.NewReaderSize(nc, 512)
	if _, err := nc.Write(hello); err != nil {
		nc.Close()
		return nil, fmt.Errorf("%w: hello to %s: %v", wire.ErrWorker, addr, err)
	}
	if magic, err := br.Peek(len(wire.FrameMagic)); err == nil && string(magic) != wire.FrameMagic {
		nc.Close()
		return nil, errNotFramed
	}
	if err := wire.ReadHelloAnswer(br); err != nil {
		nc.Close()
		if errors.Is(err, wire.ErrRefused) {
			return nil, wire.MarkAnswered(fmt.Errorf("%w: %s: %v", wire.ErrWorker, addr, err))
		}
		return nil, fmt.Errorf("%w: hello from %s: %v", wire.ErrWorker, addr, err)
	}
	if !unwatch() { // ctx ended just as the hello came
		nc.Close()
		return nil, fmt.Errorf("%w: hello from %s: %v", wire.ErrWorker, addr, context.Cause(dctx))
	}
	nc.SetDeadline(time.Time{})
	in := newInput(nc)
	if n := br.Buffered(); n > 0 { // sent after the hello: not expected, kept
		b, _ := br.Peek(n)
		in.unread(b)
	}
	c := &cliConn{addr: addr, nc: nc, in: in, bw: bufio.NewWriterSize(nc, 16<<10), calls: map[uint64]*call{}}
	c.cond = sync.NewCond(&c.mu)
	go c.readLoop()
	return c, nil
}

// Read implements Reader. addr may be the path of a worker's unix socket
// (on this host): one that speaks HTTP only is then ErrHTTPOnly, for the
// caller to read from its data port instead.
func (t *Framed) Read(ctx context.Context, addr string, r wire.ReadRequest, buf []byte) (wire.Source, error) {
	r.Length = int64(len(buf))
	cl := &call{}
	cl.one.read[0], cl.one.buf[0] = r, buf
	cl.reads, cl.bufs = cl.one.read[:], cl.one.buf[:]
	if err := t.do(ctx, addr, cl, wire.KindRead); err != nil {
		return wire.SourceUnknown, err
	}
	if fb := cl.fellBack; fb {
		if strings.HasPrefix(addr, "/") {
			return wire.SourceUnknown, ErrHTTPOnly
		}
		return t.fallback.Read(ctx, addr, r, buf)
	}
	return cl.srcs[0], cl.errs[0]
}

// ReadUFS fills buf with the range of a UFS file that r names (see
// wire.KindUFSRead), read by the worker at addr for this one, uncached.
// ErrHTTPOnly says the worker speaks HTTP only. A UFS error keeps its
// class, a retryable one too: the worker reached the UFS, which did not
// answer, and reading it from here would wait as long again.
func (t *Framed) ReadUFS(ctx context.Context, addr string, r wire.ReadRequest, buf []byte) error {
	r.Length = int64(len(buf))
	cl := &call{}
	cl.one.read[0], cl.one.buf[0] = r, buf
	cl.reads, cl.bufs = cl.one.read[:], cl.one.buf[:]
	if err := t.do(ctx, addr, cl, wire.KindUFSRead); err != nil {
		return err
	}
	if cl.fellBack {
		return ErrHTTPOnly
	}
	return cl.errs[0]
}

// ErrHTTPOnly is Locate's error for a worker that does not speak the block
// protocol (one older than it): ask it over HTTP instead.
var ErrHTTPOnly = errors.New("the worker speaks HTTP only")

// Locate asks the worker at addr, on this host (addr is then the path of
// its unix socket), to make a whole block cached and say where its file is.
// Errors keep their class as Read's do.
func (t *Framed) Locate(ctx context.Context, addr string, lr wire.LocateRequest) (wire.LocalBlock, error) {
	cl := &call{locate: &lr}
	cl.one.read[0] = lr.Read
	cl.reads, cl.bufs = cl.one.read[:], cl.one.buf[:]
	if err := t.do(ctx, addr, cl, wire.KindLocate); err != nil {
		return wire.LocalBlock{}, err
	}
	if cl.fellBack {
		return wire.LocalBlock{}, ErrHTTPOnly
	}
	return cl.located, cl.errs[0]
}

// ReadBatch implements Reader.
func (t *Framed) ReadBatch(ctx context.Context, addr string, reads []wire.ReadRequest, bufs [][]byte) []error {
	rs := make([]wire.ReadRequest, len(reads))
	for i, r := range reads {
		r.Length = int64(len(bufs[i]))
		rs[i] = r
	}
	errs := make([]error, len(reads))
	for start := 0; start < len(rs); start += wire.MaxBatch {
		end := min(start+wire.MaxBatch, len(rs))
		cl := &call{reads: rs[start:end], bufs: bufs[start:end]}
		if err := t.do(ctx, addr, cl, wire.KindBatch); err != nil {
			for i := start; i < end; i++ {
				errs[i] = err
			}
			continue
		}
		if cl.fellBack {
			copy(errs[start:end], t.fallback.ReadBatch(ctx, addr, rs[start:end], bufs[start:end]))
			continue
		}
		copy(errs[start:end], cl.errs)
	}
	return errs
}

// do sends cl and waits for its answers. An error is one of the whole
// call (no connection, the connection lost); the items' own are in cl.errs.
func (t *Framed) do(ctx context.Context, addr string, cl *call, kind byte) error {
	var c *cliConn
	for attempt := 0; ; attempt++ {
		p, err := t.peer(addr)
		if err != nil {
			return err
		}
		c, err = t.conn(ctx, p)
		if errors.Is(err, errPeerGone) && attempt < 3 {
			continue // forgotten as idle meanwhile: a fresh entry
		}
		if err != nil {
			return err
		}
		break
	}
	if c == nil {
		cl.fellBack = true
		return nil
	}
	defer func() {
		c.lastUsed.Store(time.Now().UnixNano()) // before the call leaves it
		c.inflight.Add(-1)
	}()
	return c.roundTrip(ctx, cl, kind)
}

// Drop implements Reader.
func (t *Framed) Drop(addr string) {
	t.mu.Lock()
	p := t.peers[addr]
	t.mu.Unlock()
	if p != nil {
		p.mu.Lock()
		conns := p.conns
		p.conns = nil
		p.drop()
		p.dropped, p.drop = context.WithCancel(context.Background())
		p.mu.Unlock()
		for _, c := range conns {
			c.fail(errDropped)
		}
	}
	t.fallback.Drop(addr)
}

var errDropped = fmt.Errorf("%w: its connections were dropped (marked down)", wire.ErrWorker)

// Close implements Reader.
func (t *Framed) Close() error {
	t.mu.Lock()
	if !t.closed {
		close(t.stop)
	}
	t.closed = true
	peers := t.peers
	t.peers = map[string]*peer{}
	t.mu.Unlock()
	for _, p := range peers {
		p.mu.Lock()
		for _, c := range p.conns {
			if c != nil {
				c.fail(net.ErrClosed)
			}
		}
		p.mu.Unlock()
	}
	return t.fallback.Close()
}

// call is one request (a read or a batch) in flight.
type call struct {
	reads    []wire.ReadRequest
	bufs     [][]byte
	got      []int // bytes received per item
	ended    []bool
	srcs     []wire.Source
	errs     []error
	left     int // items not yet answered
	done     chan struct{}
	fellBack bool   // the worker speaks HTTP only
	id       uint64 // its frames' id
	kind     byte   // of its request frame

	locate  *wire.LocateRequest // a locate call (reads holds its block)
	located wire.LocalBlock     // its answer

	one struct { // a lone read: its request, its state and its frame
		read  [1]wire.ReadRequest
		buf   [1][]byte
		got   [1]int
		ended [1]bool
		src   [1]wire.Source
		err   [1]error
		frame [256]byte
	}
}

// cliConn is one framed connection on the reader's side. Its read loop
// puts the bytes of each data frame straight into the buffer of the call
// it answers.
type cliConn struct {
	addr string
	nc   net.Conn
	in   *input

	wmu      sync.Mutex
	bw       *bufio.Writer
	writers  atomic.Int32
	inflight atomic.Int32 // calls using the connection
	lastUsed atomic.Int64 // when a call last took it, in Unix ns

	mu     sync.Mutex
	cond   *sync.Cond // signalled when the read loop leaves a call's buffer
	calls  map[uint64]*call
	active *call // the call whose buffer the read loop is filling
	nextID uint64
	err    error // set when the connection failed
}

// use counts one more call on the connection (under its peer's mu).
func (c *cliConn) use() {
	c.inflight.Add(1)
	c.lastUsed.Store(time.Now().UnixNano())
}

func (c *cliConn) broken() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err != nil
}

// roundTrip sends cl and waits for every item's answer, or for ctx.
func (c *cliConn) roundTrip(ctx context.Context, cl *call, kind byte) error {
	n := len(cl.reads)
	if n == 1 { // a lone read: no allocation for its state
		cl.got, cl.ended, cl.srcs, cl.errs = cl.one.got[:], cl.one.ended[:], cl.one.src[:], cl.one.err[:]
	} else {
		cl.got, cl.ended, cl.srcs, cl.errs = make([]int, n), make([]bool, n), make([]wire.Source, n), make([]error, n)
	}
	cl.left, cl.done = n, make(chan struct{})
	var body []byte
	var err error
	switch kind {
	case wire.KindBatch:
		body, err = wire.AppendBatch(make([]byte, wire.FrameHeaderLen, 256), cl.reads)
	case wire.KindLocate:
		body, err = cl.locate.Append(append(cl.one.frame[:0], make([]byte, wire.FrameHeaderLen)...))
	default:
		body, err = cl.reads[0].Append(append(cl.one.frame[:0], make([]byte, wire.FrameHeaderLen)...))
	}
	if err != nil {
		return err
	}
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return c.err
	}
	c.nextID++
	id := c.nextID
	cl.id, cl.kind = id, kind
	c.calls[id] = cl
	c.mu.Unlock()
	wire.FrameHeader{Len: uint32(len(body) - wire.FrameHeaderLen), Kind: kind, ID: id}.Put(body)
	if err := c.send(body); err != nil {
		c.fail(err)
		<-cl.done
		return c.failure()
	}
	select {
	case <-cl.done:
		return c.outcome(cl)
	case <-ctx.Done():
	}
	// Given up: forget the call, and make sure the read loop is not
	// writing into its buffers when this returns.
	c.mu.Lock()
	if _, ok := c.calls[id]; !ok {
		c.mu.Unlock()
		<-cl.done // answered (or failed) meanwhile
		return c.outcome(cl)
	}
	delete(c.calls, id)
	if c.active == cl {
		// In the middle of a frame for it: the connection cannot skip the
		// rest without reading it, and ctx may have ended because the
		// worker stalled. Close it.
		c.mu.Unlock()
		c.fail(fmt.Errorf("%w: a read was given up mid-frame", wire.ErrWorker))
		c.mu.Lock()
		for c.active == cl {
			c.cond.Wait()
		}
	}
	c.mu.Unlock()
	var cancel [wire.FrameHeaderLen]byte
	wire.FrameHeader{Kind: wire.KindCancel, ID: id}.Put(cancel[:])
	c.send(cancel[:])
	return ctx.Err()
}

// send writes one frame; the last writer waiting flushes.
func (c *cliConn) send(frame []byte) error {
	c.writers.Add(1)
	c.wmu.Lock()
	defer c.wmu.Unlock()
	last := c.writers.Add(-1) == 0
	if _, err := c.bw.Write(frame); err != nil {
		return err
	}
	if last {
		return c.bw.Flush()
	}
	return nil
}

// failure is why the connection failed.
func (c *cliConn) failure() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// outcome is the error of a call whose done is closed: nil when every item
// was answered, else the connection's failure.
func (c *cliConn) outcome(cl *call) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if cl.left > 0 {
		return c.err
	}
	return nil
}

// fail closes the connection and ends every call in flight with err (the
// first failure wins): none was answered.
func (c *cliConn) fail(err error) {
	c.mu.Lock()
	if c.err == nil {
		if !errors.Is(err, wire.ErrWorker) {
			err = fmt.Errorf("%w: connection to %s: %v", wire.ErrWorker, c.addr, err)
		}
		c.err = err
	}
	c.mu.Unlock()
	c.nc.Close() // the read loop, if mid-frame, stops at once
	c.mu.Lock()
	for c.active != nil {
		c.cond.Wait()
	}
	calls := c.calls
	c.calls = map[uint64]*call{}
	c.mu.Unlock()
	for _, cl := range calls {
		close(cl.done)
	}
}

// readLoop reads the worker's frames until the connection fails.
func (c *cliConn) readLoop() {
	var hdr [wire.FrameHeaderLen]byte
	for {
		if c.in.raw != nil && c.in.buffered() == 0 {
			done, err := c.readLone()
			if err != nil {
				c.fail(err)
				return
			}
			if done {
				continue
			}
		}
		if _, err := io.ReadFull(c.in, hdr[:]); err != nil {
			c.fail(err)
			return
		}
		h, err := wire.ParseFrameHeader(hdr[:])
		if err == nil {
			err = c.frame(h)
		}
		if err != nil {
			c.fail(err)
			return
		}
	}
}

// frame handles one frame whose header was read.
func (c *cliConn) frame(h wire.FrameHeader) error {
	c.mu.Lock()
	cl := c.calls[h.ID]
	if cl == nil || int(h.Item) >= len(cl.reads) || cl.ended[h.Item] {
		c.mu.Unlock()
		// A call given up (or an item already failed): skip its bytes.
		_, err := io.CopyN(io.Discard, c.in, int64(h.Len))
		return err
	}
	c.active = cl
	c.mu.Unlock()
	return c.ended(cl, h, c.fill(cl, h, 0))
}

// ended leaves cl's buffer after the frame h (err: how reading its body
// went) and, on the item's last frame, counts the item answered.
func (c *cliConn) ended(cl *call, h wire.FrameHeader, err error) error {
	c.mu.Lock()
	c.active = nil
	c.cond.Broadcast()
	if err == nil && (h.Kind == wire.KindError || h.Flags&wire.FlagLast != 0) {
		cl.ended[h.Item] = true
		cl.left--
		if cl.left == 0 && c.calls[h.ID] == cl {
			delete(c.calls, h.ID)
			close(cl.done)
		}
	}
	c.mu.Unlock()
	return err
}

// fill reads a frame's body into its call; the first have bytes of a data
// frame are in place already.
func (c *cliConn) fill(cl *call, h wire.FrameHeader, have int) error {
	i := h.Item
	r := cl.reads[i]
	switch h.Kind {
	case wire.KindData:
		buf := cl.bufs[i]
		got := cl.got[i]
		if got+int(h.Len) > len(buf) {
			return fmt.Errorf("%w: %s sent %d bytes for a read of %d", wire.ErrWorker, c.addr, got+int(h.Len), len(buf))
		}
		if _, err := io.ReadFull(c.in, buf[got+have:got+int(h.Len)]); err != nil {
			return err
		}
		cl.got[i] += int(h.Len)
		cl.srcs[i] = h.Source()
		if h.Flags&wire.FlagLast != 0 && cl.got[i] != len(buf) {
			cl.errs[i] = wire.MarkAnswered(fmt.Errorf("%w: block %d of /%s/%s: %d of %d bytes", wire.ErrWorker, r.Block.Index, r.Block.Dataset, r.Block.Path, cl.got[i], len(buf)))
		}
	case wire.KindLocated:
		if cl.locate == nil {
			return fmt.Errorf("%w: %s answered a read with a block's location", wire.ErrWorker, c.addr)
		}
		body := make([]byte, h.Len)
		if _, err := io.ReadFull(c.in, body); err != nil {
			return err
		}
		lb, err := wire.ParseLocalBlock(body)
		if err != nil {
			err = wire.MarkAnswered(fmt.Errorf("%w: locate block %d of /%s/%s: %v", wire.ErrWorker, r.Block.Index, r.Block.Dataset, r.Block.Path, err))
		}
		cl.located, cl.errs[i] = lb, err
	case wire.KindError:
		if h.Len > 64<<10 {
			return fmt.Errorf("%w: %s sent an error frame of %d bytes", wire.ErrWorker, c.addr, h.Len)
		}
		body := make([]byte, h.Len)
		if _, err := io.ReadFull(c.in, body); err != nil {
			return err
		}
		cl.errs[i] = wire.ParseError("read", r.Block.Dataset, r.Block.Path, body)
		if cl.kind == wire.KindUFSRead && len(body) > 0 && body[0] == wire.ErrClassRetryable {
			cl.errs[i] = &ufs.Error{Op: "read", Dataset: r.Block.Dataset, Path: r.Block.Path, Class: ufs.ClassRetryable,
				Err: wire.MarkAnswered(fmt.Errorf("through the worker at %s: %s", c.addr, body[1:]))}
		}
	default:
		return fmt.Errorf("%w: %s sent a frame of kind %#x", wire.ErrWorker, c.addr, h.Kind)
	}
	return nil
}
