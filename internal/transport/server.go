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
	// MaxInFlight bounds the reads served at once on one connection
	// (default 64); more wait in the socket.
	MaxInFlight int
	// Log gets connection errors, at debug level.
	Log *slog.Logger
	// Observe, when set, is called after each read with its outcome.
	Observe func(r wire.ReadRequest, err error, took time.Duration)

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
	c := &srvConn{s: s, nc: nc, br: br, out: frameOut{nc: nc}, ctx: ctx, cancel: cancel,
		reqs: map[uint64]*srvReq{}}
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	go func() {
		defer s.wg.Done()
		err := c.serve()
		if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) && s.Log != nil {
			s.Log.Debug("block connection ended", "remote", nc.RemoteAddr().String(), "err", err)
		}
		c.close()
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
	}()
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
type srvConn struct {
	s      *Server
	nc     net.Conn
	br     *bufio.Reader
	ctx    context.Context
	cancel context.CancelFunc

	out frameOut

	mu   sync.Mutex
	reqs map[uint64]*srvReq // in flight, by id
	wg   sync.WaitGroup
}

// srvReq is one read or batch in flight.
type srvReq struct {
	cancel context.CancelFunc
	items  atomic.Int32 // items not yet answered
}

func (c *srvConn) close() {
	c.cancel()
	c.nc.Close()
	c.wg.Wait()
}

func (c *srvConn) serve() error {
	if err := c.hello(); err != nil {
		return err
	}
	limit := c.s.MaxInFlight
	if limit <= 0 {
		limit = 64
	}
	sem := make(chan struct{}, limit)
	var hdr [wire.FrameHeaderLen]byte
	body := make([]byte, 0, 4096)
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
		}
		body = body[:h.Len] // requests are parsed (and copied) before the next frame
		if _, err := io.ReadFull(c.br, body); err != nil {
			return err
		}
		var reads []wire.ReadRequest
		switch h.Kind {
		case wire.KindRead:
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
		for i, r := range reads {
			select {
			case sem <- struct{}{}:
			case <-c.ctx.Done():
				return c.ctx.Err()
			}
			c.wg.Go(func() {
				defer func() { <-sem }()
				c.serveItem(ctx, h.ID, uint16(i), r)
				if req.items.Add(-1) == 0 {
					cancel()
					c.mu.Lock()
					delete(c.reqs, h.ID)
					c.mu.Unlock()
				}
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

// serveItem serves one read and answers it.
func (c *srvConn) serveItem(ctx context.Context, id uint64, item uint16, r wire.ReadRequest) {
	start := time.Now()
	fw := &frameWriter{c: c, id: id, item: item, left: r.Length}
	err := c.s.Handler.ServeRead(ctx, r, fw)
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
		obs(r, err, time.Since(start))
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
