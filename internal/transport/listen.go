package transport

import (
	"bufio"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/granary-cache/granary/internal/wire"
)

// Listen splits the connections of ln by their first bytes: those of the
// block protocol (wire.FrameMagic) go to srv, the others come out of the
// listener it returns, for an http.Server. On a TLS listener the split is
// made inside TLS, after the handshake. Closing the returned listener
// closes ln.
func Listen(ln net.Listener, srv *Server) net.Listener {
	l := &splitListener{ln: ln, srv: srv, conns: make(chan net.Conn), done: make(chan struct{})}
	l.wg.Go(l.acceptLoop)
	return l
}

type splitListener struct {
	ln    net.Listener
	srv   *Server
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
	err   error // why the listener stopped, set once before done closes
	wg    sync.WaitGroup
}

// sniffTimeout bounds how long a new connection may take to send its first
// bytes (a TLS handshake included).
const sniffTimeout = 10 * time.Second

func (l *splitListener) acceptLoop() {
	var delay time.Duration
	for {
		c, err := l.ln.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				// Out of file descriptors and the like: wait and go on,
				// as http.Server does.
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				select {
				case <-time.After(delay):
					continue
				case <-l.done:
				}
			}
			l.closeWith(err)
			return
		}
		delay = 0
		go l.sniff(c)
	}
}

func (l *splitListener) sniff(c net.Conn) {
	c.SetDeadline(time.Now().Add(sniffTimeout))
	if tc, ok := c.(*tls.Conn); ok {
		if err := tc.Handshake(); err != nil {
			refusePlainHTTP(err)
			c.Close()
			return
		}
	}
	br := bufio.NewReaderSize(c, 4096)
	magic, err := br.Peek(len(wire.FrameMagic))
	if err != nil {
		c.Close()
		return
	}
	c.SetDeadline(time.Time{})
	if string(magic) == wire.FrameMagic {
		l.srv.ServeConn(c, br)
		return
	}
	select {
	case l.conns <- &sniffedConn{Conn: c, r: br}:
	case <-l.done:
		c.Close()
	}
}

func (l *splitListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		if l.err != nil && !errors.Is(l.err, net.ErrClosed) {
			return nil, l.err
		}
		return nil, net.ErrClosed
	}
}

func (l *splitListener) Close() error { return l.closeWith(net.ErrClosed) }

// closeWith stops the listener; why is what Accept returns from then on.
func (l *splitListener) closeWith(why error) error {
	var err error
	l.once.Do(func() {
		l.err = why // before done is closed: Accept reads it after
		close(l.done)
		err = l.ln.Close()
	})
	return err
}

func (l *splitListener) Addr() net.Addr { return l.ln.Addr() }

// refusePlainHTTP answers a client that spoke plain HTTP to the TLS port
// with a 400 that says so, rather than a connection closed without a word.
func refusePlainHTTP(err error) {
	var re tls.RecordHeaderError
	if !errors.As(err, &re) || re.Conn == nil {
		return
	}
	switch string(re.RecordHeader[:4]) {
	case "GET ", "HEAD", "POST", "PUT ", "DELE", "OPTI", "PATC", "GRNB":
		msg := "this granary worker speaks TLS only (auth.tls): the client must use TLS too, with a certificate of the cluster's CA\n"
		re.Conn.SetWriteDeadline(time.Now().Add(time.Second))
		io.WriteString(re.Conn, "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\nContent-Length: "+strconv.Itoa(len(msg))+"\r\n\r\n"+msg)
	}
	re.Conn.Close()
}

// sniffedConn is a connection whose first bytes were read to sniff it.
type sniffedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *sniffedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// ReadFrom keeps sendfile: net/http sends a file through the connection's
// ReadFrom when it has one.
func (c *sniffedConn) ReadFrom(r io.Reader) (int64, error) {
	if rf, ok := c.Conn.(io.ReaderFrom); ok {
		return rf.ReadFrom(r)
	}
	return io.Copy(struct{ io.Writer }{c.Conn}, r)
}

// Underlying is the connection under one Listen returned (c itself for
// any other), for what needs its type: the peer's credentials of a unix
// socket, a TLS state.
func Underlying(c net.Conn) net.Conn {
	if sc, ok := c.(*sniffedConn); ok {
		return sc.Conn
	}
	return c
}

// TLSState is the TLS state of a connection Listen returned (for an
// http.Server's ConnContext: the server sets Request.TLS only for a
// *tls.Conn); nil without TLS.
func TLSState(c net.Conn) *tls.ConnectionState {
	if tc, ok := Underlying(c).(*tls.Conn); ok {
		st := tc.ConnectionState()
		return &st
	}
	return nil
}
