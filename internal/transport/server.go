package transport

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/granary-cache/granary/internal/wire"
)

// Server serves the framed block protocol on connections Listen hands it.
type Server struct {
	Handler Handler
	// Authorize checks a connection once, at its hello: the token it sent
	// and its TLS state (nil without TLS). Nil lets every connection in.
	Authorize func(token string, tlsState *tls.ConnectionState) error
	// Admit, when set, checks a connection before its hello (for example
	// the user at the other end of a unix socket); an error refuses it as
	// unauthorised.
	Admit func(nc net.Conn) error
	// Locate, when set, answers locate requests (wire.KindLocate): where
	// the file of a whole block is, for a client on the worker's host.
	// Without it they are refused.
	Locate func(ctx context.Context, r wire.LocateRequest) (wire.LocalBlock, error)
	// MaxInFlight bounds the reads served at once on one connection
	// (default 64); more wait in the socket.
	MaxInFlight int
	// Log gets connection errors, at debug level.
	Log *slog.Logger
	// Observe, when set, is called after each read with its kind
	// (wire.KindRead for the items of a batch too) and its outcome.
	Observe func(kind byte, r wire.ReadRequest, err error, took time.Duration)

	mu     sync.Mutex
	conns  map[*srvConn]struct{}
	closed bool
	wg     sync.WaitGroup
}

// helloTimeout bounds how long a new connection may take to say hello.
const helloTimeout = 10 * time.Second

// ServeConn serves one connection until it closes or Close is called; br
// holds what was already read from nc (the sniffed magic). It returns at
// once: the connection is served in the background.
func (s *Server) ServeConn(nc net.Conn, br *bufio.Reader) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		nc.Close()
		return
	}
	if s.conns == nil {
		s.conns = map[*srvConn]struct{}{}
	}
	ctx, cancel := context.WithCancel(context.Background())
	limit := s.MaxInFlight
	if limit <= 0 {
		limit = 64
	}
	c := &srvConn{s: s, nc: nc, br: br, out: frameOut{nc: nc}, ctx: ctx, cancel: cancel,
		reqs: map[uint64]*srvReq{}, sem: make(chan struct{}, limit)}
	c.handoff = time.AfterFunc(time.Hour, c.handOff)
	c.handoff.Stop()
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	go c.run(true)
}

// Close closes every connection and waits for their reads to end.
func (s *Server) Close() error {
	s.mu.Lock()
	s.closed = true
	for c := range s.conns {
		c.nc.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	return nil
}

// srvConn is one framed connection on the worker's side.
//
// One goroutine at a time reads its frames (the read loop). A lone read,
// with nothing more waiting in the read buffer, is served by the read loop
// itself: no goroutine to start, none to wake, and a stack already grown.
// Should it take longer than handoffAfter (a miss that waits for the UFS),
// a new goroutine takes the loop over, so that the reads and cancels behind
// it are not held up. Other reads, and every item of a batch, are served
// by goroutines of their own, at most MaxInFlight at once.
type srvConn struct {
	s      *Server
	nc     net.Conn
	br     *bufio.Reader
	ctx    context.Context
	cancel context.CancelFunc

	out frameOut

	sem     chan struct{} // a slot per read served by a goroutine of its own
	reading atomic.Int32  // loopReading, loopServing or loopHandedOff
	handoff *time.Timer   // runs handOff while the loop serves a read

	mu   sync.Mutex
	reqs map[uint64]*srvReq // in flight, by id

	// body holds request bodies as the read loop reads them. One loop
	// reads at a time and parses (copies) a request before it reads the
	// next frame, so a loop handed over leaves it to the one that took
	// over: no new buffer per hand-off, that is per cold read.
	body []byte
	wg   sync.WaitGroup // the goroutines serving reads
}

// The states of a connection's read loop.
const (
	loopReading   = iota // reading frames
	loopServing          // serving a lone read itself
	loopHandedOff        // still serving it, and another goroutine reads
)

// handoffAfter is how long the read loop serves a read itself before a
// new goroutine takes the loop over. A warm hit takes tens of microseconds.
const handoffAfter = 2 * time.Millisecond

// errHandedOff ends a read loop whose reading another goroutine took over.
var errHandedOff = errors.New("the read loop was handed over")

// srvReq is one read or batch in flight.
type srvReq struct {
	cancel context.CancelFunc
	items  atomic.Int32 // items not yet answered
}

// run runs the read loop (after the hello, on a new connection) until the
// connection fails, then closes it, unless the loop was handed over. Each
// goroutine running it holds a count of s.wg.
func (c *srvConn) run(fresh bool) {
	defer c.s.wg.Done()
	var err error
	if fresh {
		err = c.hello()
	}
	if err == nil {
		err = c.loop()
	}
	if errors.Is(err, errHandedOff) {
		return
	}
	if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) && c.s.Log != nil {
		c.s.Log.Debug("block connection ended", "remote", c.nc.RemoteAddr().String(), "err", err)
	}
	c.close()
	c.s.mu.Lock()
	delete(c.s.conns, c)
	c.s.mu.Unlock()
}

// handOff starts a new read loop while the current one serves a read
// that is taking long. The count of s.wg is taken first: the serving
// goroutine holds one until it returns, so it is not zero here.
func (c *srvConn) handOff() {
	c.s.wg.Add(1)
	if c.reading.CompareAndSwap(loopServing, loopHandedOff) {
		go c.run(false)
		return
	}
	c.s.wg.Done() // the read ended meanwhile (or a stale timer)
}

func (c *srvConn) close() {
	c.handoff.Stop()
	c.cancel()
	c.nc.Close()
	c.wg.Wait()
}

// loop reads frames and serves them until the connection fails or the
// loop is handed over (errHandedOff).
func (c *srvConn) loop() error {
	var hdr [wire.FrameHeaderLen]byte
	if c.body == nil {
		c.body = make([]byte, 0, 4096)
	}
	body := c.body
	for {
		if _, err := io.ReadFull(c.br, hdr[:]); err != nil {
			return err
		}
		h, err := wire.ParseFrameHeader(hdr[:])
		if err != nil {
			return err
		}
		if h.Len > 1<<20 {
			return fmt.Errorf("a request frame of %d bytes", h.Len)
		}
		if cap(body) < int(h.Len) {
			body = make([]byte, h.Len)
			c.body = body // before any hand-off: the next loop starts after
		}
		body = body[:h.Len] // requests are parsed (and copied) before the next frame
		if _, err := io.ReadFull(c.br, body); err != nil {
			return err
		}
		var reads []wire.ReadRequest
		var locate *wire.LocateRequest
		switch h.Kind {
		case wire.KindLocate:
			lr, err := wire.ParseLocateRequest(body)
			if err != nil {
				c.answerError(h.ID, 0, fmt.Errorf("%w: malformed locate: %v", wire.ErrWorker, err))
				continue
			}
			locate, reads = &lr, []wire.ReadRequest{lr.Read}
		case wire.KindRead, wire.KindUFSRead:
			r, err := wire.ParseReadRequest(body)
			if err != nil {
				c.answerError(h.ID, 0, fmt.Errorf("%w: malformed read: %v", wire.ErrWorker, err))
				continue
			}
			reads = []wire.ReadRequest{r}
		case wire.KindBatch:
			if reads, err = wire.ParseBatch(body); err != nil {
				c.answerError(h.ID, 0, fmt.Errorf("%w: malformed batch: %v", wire.ErrWorker, err))
				continue
			}
		case wire.KindCancel:
			c.mu.Lock()
			if r := c.reqs[h.ID]; r != nil {
				r.cancel()
			}
			c.mu.Unlock()
			continue
		default:
			return fmt.Errorf("a frame of unknown kind %#x", h.Kind)
		}
		ctx, cancel := context.WithCancel(c.ctx)
		req := &srvReq{cancel: cancel}
		req.items.Store(int32(len(reads)))
		c.mu.Lock()
		if _, dup := c.reqs[h.ID]; dup {
			c.mu.Unlock()
			cancel()
			return fmt.Errorf("request id %d is already in flight", h.ID)
		}
		c.reqs[h.ID] = req
		c.mu.Unlock()
		if h.Kind != wire.KindBatch && c.br.Buffered() == 0 {
			// A lone read (or locate): served here, unless it takes long.
			c.reading.Store(loopServing)
			c.handoff.Reset(handoffAfter)
			c.serve(ctx, h.ID, h.Kind, reads[0], locate, req)
			c.handoff.Stop()
			if !c.reading.CompareAndSwap(loopServing, loopReading) {
				return errHandedOff
			}
			continue
		}
		for i, r := range reads {
			select {
			case c.sem <- struct{}{}:
			case <-c.ctx.Done():
				return c.ctx.Err()
			}
			c.wg.Go(func() {
				defer func() { <-c.sem }()
				if h.Kind != wire.KindBatch {
					c.serve(ctx, h.ID, h.Kind, r, locate, req)
					return
				}
				c.serveItem(ctx, h.ID, wire.KindRead, uint16(i), r, req)
			})
		}
	}
}

// hello checks the client's hello and answers it.
func (c *srvConn) hello() error {
	c.nc.SetDeadline(time.Now().Add(helloTimeout))
	version, token, err := wire.ReadHello(c.br)
	if err != nil {
		return err
	}
	status, msg := wire.HelloOK, ""
	if version != wire.FrameVersion {
		status, msg = wire.HelloBadVersion, fmt.Sprintf("this worker speaks version %d", wire.FrameVersion)
	} else if err := c.admit(); err != nil {
		status, msg = wire.HelloUnauthorized, err.Error()
	} else if c.s.Authorize != nil {
		var state *tls.ConnectionState
		if tc, ok := c.nc.(*tls.Conn); ok {
			st := tc.ConnectionState()
			state = &st
		}
		if err := c.s.Authorize(token, state); err != nil {
			status, msg = wire.HelloUnauthorized, err.Error()
		}
	}
	if _, err := c.nc.Write(wire.AppendHelloAnswer(nil, status, msg)); err != nil {
		return err
	}
	if status != wire.HelloOK {
		return fmt.Errorf("hello refused: %s", msg)
	}
	return c.nc.SetDeadline(time.Time{})
}

func (c *srvConn) admit() error {
	if c.s.Admit == nil {
		return nil
	}
	return c.s.Admit(c.nc)
}

// serve serves a request of one item: a read of kind (wire.KindRead or
// wire.KindUFSRead), or the locate request lr when not nil.
func (c *srvConn) serve(ctx context.Context, id uint64, kind byte, r wire.ReadRequest, lr *wire.LocateRequest, req *srvReq) {
	if lr == nil {
		c.serveItem(ctx, id, kind, 0, r, req)
		return
	}
	defer c.itemEnded(id, req)
	if c.s.Locate == nil {
		c.answerError(id, 0, fmt.Errorf("%w: locate is served on the worker's unix socket only", wire.ErrWorker))
		return
	}
	lb, err := c.s.Locate(ctx, *lr)
	var body []byte
	if err == nil {
		body, err = wire.AppendLocalBlock(make([]byte, 0, wire.LocalBlockLen(lb)), lb)
	}
	if err != nil {
		c.answerError(id, 0, err)
		return
	}
	fw := &frameWriter{c: c, id: id}
	fw.frame(wire.KindLocated, wire.FlagLast, body, nil, 0, 0)
}

// serveItem serves one read of kind (an item of req) and answers it; the
// last item of req to end forgets req.
func (c *srvConn) serveItem(ctx context.Context, id uint64, kind byte, item uint16, r wire.ReadRequest, req *srvReq) {
	defer c.itemEnded(id, req)
	start := time.Now()
	fw := &frameWriter{c: c, id: id, item: item, left: r.Length}
	var err error
	if kind == wire.KindUFSRead {
		if ur, ok := c.s.Handler.(UFSReader); ok {
			err = ur.ServeUFSRead(ctx, r, fw)
		} else {
			err = fmt.Errorf("%w: this server reads no UFS for peers", wire.ErrWorker)
		}
	} else {
		err = c.s.Handler.ServeRead(ctx, r, fw)
	}
	if err == nil && fw.left > 0 {
		err = fmt.Errorf("%w: the block engine sent %d of %d bytes", wire.ErrWorker, r.Length-fw.left, r.Length)
	}
	if err == nil && !fw.ended {
		err = fw.frame(wire.KindData, wire.DataFlags(fw.src, true), nil, nil, 0, 0) // an empty range
	}
	if err != nil && !fw.ended {
		c.answerError(id, item, err)
	}
	if obs := c.s.Observe; obs != nil {
		obs(kind, r, err, time.Since(start))
	}
}

// itemEnded counts one item of req answered; the last one forgets req.
func (c *srvConn) itemEnded(id uint64, req *srvReq) {
	if req.items.Add(-1) == 0 {
		req.cancel()
		c.mu.Lock()
		delete(c.reqs, id)
		c.mu.Unlock()
	}
}

func (c *srvConn) answerError(id uint64, item uint16, err error) {
	fw := &frameWriter{c: c, id: id, item: item}
	fw.frame(wire.KindError, 0, wire.AppendError(nil, err), nil, 0, 0)
}

// frameWriter is the RangeWriter of one item on a connection: each call
// is one data frame.
type frameWriter struct {
	c     *srvConn
	id    uint64
	item  uint16
	left  int64 // bytes still to send
	src   wire.Source
	ended bool // the last frame went out
}

func (w *frameWriter) Write(p []byte, src wire.Source) error {
	return w.data(p, nil, 0, int64(len(p)), src)
}

func (w *frameWriter) WriteFile(f *os.File, off, n int64, src wire.Source) error {
	return w.data(nil, f, off, n, src)
}

func (w *frameWriter) data(p []byte, f *os.File, off, n int64, src wire.Source) error {
	if n > w.left {
		return fmt.Errorf("%w: %d bytes more than the range asked for", wire.ErrWorker, n-w.left)
	}
	w.src = src
	for n > 0 {
		chunk := min(n, wire.MaxFrameBody)
		last := chunk == w.left
		var err error
		if f != nil {
			err = w.frame(wire.KindData, wire.DataFlags(src, last), nil, f, off, chunk)
			off += chunk
		} else {
			err = w.frame(wire.KindData, wire.DataFlags(src, last), p[:chunk], nil, 0, 0)
			p = p[chunk:]
		}
		if err != nil {
			return err
		}
		w.left -= chunk
		n -= chunk
	}
	return nil
}

// frame writes one frame: its body from body, or n bytes of f at off.
func (w *frameWriter) frame(kind, flags byte, body []byte, f *os.File, off, n int64) error {
	if f == nil {
		n = int64(len(body))
	}
	var hdr [wire.FrameHeaderLen]byte
	wire.FrameHeader{Len: uint32(n), Kind: kind, Flags: flags, Item: w.item, ID: w.id}.Put(hdr[:])
	if kind == wire.KindError || flags&wire.FlagLast != 0 {
		w.ended = true
	}
	return w.c.out.write(hdr[:], body, f, off, n)
}
