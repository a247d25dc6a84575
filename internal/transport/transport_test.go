package transport_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/granary-cache/granary/internal/block"
	"github.com/granary-cache/granary/internal/tlstest"
	"github.com/granary-cache/granary/internal/transport"
	"github.com/granary-cache/granary/internal/transport/transporttest"
	"github.com/granary-cache/granary/internal/ufs"
	"github.com/granary-cache/granary/internal/wire"
)

const testBlockSize = 4 << 20

// memHandler serves files held in memory, half of each range from a file
// on disk (WriteFile, sendfile) and half from memory (Write), as the block
// engine mixes trusted and checked pages.
type memHandler struct {
	dir   string
	mu    sync.Mutex
	files map[string]memFile
	gen   int
}

type memFile struct {
	data    []byte
	version string
	disk    *os.File
}

func (h *memHandler) put(t testing.TB, name string, data []byte) block.Ref {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.gen++
	f, err := os.Create(filepath.Join(h.dir, fmt.Sprintf("%d", h.gen)))
	if err != nil {
		t.Fatal(err)
	}
	f.Write(data)
	t.Cleanup(func() { f.Close() })
	mf := memFile{data: data, version: fmt.Sprintf("v%d", h.gen), disk: f}
	h.files[name] = mf
	return block.Ref{ID: block.ID{Dataset: "d", Path: name, Version: mf.version, BlockSize: testBlockSize}, Size: int64(len(data))}
}

func (h *memHandler) ServeRead(ctx context.Context, r wire.ReadRequest, w transport.RangeWriter) error {
	ref := r.Block
	if ref.Dataset != "d" {
		return ufs.NewError("read", ref.Path, ufs.ClassInvalid, fmt.Errorf("dataset %q is not served", ref.Dataset))
	}
	if clean, err := ufs.CleanPath(ref.Path); err != nil || clean != ref.Path {
		return &ufs.Error{Op: "read", Dataset: "d", Path: ref.Path, Class: ufs.ClassInvalid, Err: ufs.ErrInvalidPath}
	}
	h.mu.Lock()
	f, ok := h.files[ref.Path]
	h.mu.Unlock()
	switch {
	case !ok:
		return &ufs.Error{Op: "read", Dataset: "d", Path: ref.Path, Class: ufs.ClassNotExist, Err: os.ErrNotExist}
	case f.version != ref.Version:
		return &ufs.Error{Op: "read", Dataset: "d", Path: ref.Path, Class: ufs.ClassVersionChanged, Err: ufs.ErrVersionChanged}
	case r.Offset+r.Length > ref.Len():
		return &ufs.Error{Op: "read", Dataset: "d", Path: ref.Path, Class: ufs.ClassInvalid, Err: errors.New("past the block's end")}
	}
	base := ref.Index * ref.BlockSize
	half := r.Length / 2
	if err := w.WriteFile(f.disk, base+r.Offset, half, wire.SourceSSD); err != nil {
		return err
	}
	for off := r.Offset + half; off < r.Offset+r.Length; {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		n := min(r.Offset+r.Length-off, 256<<10)
		if err := w.Write(f.data[base+off:base+off+n], wire.SourceMem); err != nil {
			return err
		}
		off += n
	}
	return nil
}

// memTarget serves a memHandler on both protocols, behind a token.
type memTarget struct {
	h    *memHandler
	addr string
	stop func()
}

const testToken = "the-token"

func startMem(t *testing.T, tlsCfg *tls.Config) *memTarget {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return startMemOn(t, ln, tlsCfg)
}

// startMemOn is startMem on a listener of the test's.
func startMemOn(t *testing.T, ln net.Listener, tlsCfg *tls.Config) *memTarget {
	h := &memHandler{dir: t.TempDir(), files: map[string]memFile{}}
	if tlsCfg != nil {
		ln = tls.NewListener(ln, tlsCfg)
	}
	srv := &transport.Server{Handler: h, Authorize: func(token string, _ *tls.ConnectionState) error {
		if token != testToken {
			return errors.New("wrong token")
		}
		return nil
	}}
	mux := http.NewServeMux()
	blocks := transport.HTTPHandler(h)
	mux.HandleFunc("GET "+wire.PathBlock, func(rw http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer "+testToken {
			http.Error(rw, "wrong token", http.StatusUnauthorized)
			return
		}
		blocks.ServeHTTP(rw, r)
	})
	hs := &http.Server{Handler: mux}
	split := transport.Listen(ln, srv)
	go hs.Serve(split)
	var once sync.Once
	stop := func() {
		once.Do(func() {
			hs.Close()
			srv.Close()
		})
	}
	t.Cleanup(stop)
	return &memTarget{h: h, addr: ln.Addr().String(), stop: stop}
}

func (m *memTarget) Addr() string    { return m.addr }
func (m *memTarget) Dataset() string { return "d" }
func (m *memTarget) Stop(testing.TB) { m.stop() }
func (m *memTarget) Put(t testing.TB, name string, data []byte) block.Ref {
	return m.h.put(t, name, data)
}
func (m *memTarget) Remove(_ testing.TB, name string) {
	m.h.mu.Lock()
	delete(m.h.files, name)
	m.h.mu.Unlock()
}

// TestConformance runs the suite in process, on both protocols.
func TestConformance(t *testing.T) {
	for _, proto := range transporttest.Protocols {
		t.Run(proto.Name, func(t *testing.T) {
			tg := startMem(t, nil)
			transporttest.Run(t, tg, transporttest.Readers{
				Good: func() transport.Reader { return proto.New(transport.Options{Token: testToken}) },
				Bad:  func() transport.Reader { return proto.New(transport.Options{Token: "nope"}) },
			})
		})
	}
}

// TestConformanceTLS runs the suite on both protocols inside TLS, with
// client certificates of the CA (the token still checked).
func TestConformanceTLS(t *testing.T) {
	ca := tlstest.NewCA(t)
	dir := t.TempDir()
	certFile, keyFile := ca.Loopback(t, dir, "worker")
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	server := &tls.Config{Certificates: []tls.Certificate{cert}, ClientCAs: ca.Pool(), ClientAuth: tls.RequireAndVerifyClientCert}
	client := &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: ca.Pool()}
	for _, proto := range transporttest.Protocols {
		t.Run(proto.Name, func(t *testing.T) {
			tg := startMem(t, server)
			transporttest.Run(t, tg, transporttest.Readers{
				Good: func() transport.Reader { return proto.New(transport.Options{Token: testToken, TLS: client}) },
				Bad:  func() transport.Reader { return proto.New(transport.Options{Token: "nope", TLS: client}) },
			})
		})
	}
}

// TestFallbackToHTTP: a worker that speaks only HTTP (older than the
// block protocol) is read over HTTP by the framed reader.
func TestFallbackToHTTP(t *testing.T) {
	h := &memHandler{dir: t.TempDir(), files: map[string]memFile{}}
	ref := h.put(t, "f", bytes.Repeat([]byte("x"), 5000))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: transport.HTTPHandler(h)} // no Listen: HTTP only
	go hs.Serve(ln)
	defer hs.Close()
	rd := transport.NewFramed(transport.Options{})
	defer rd.Close()
	buf := make([]byte, 5000)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := rd.Read(ctx, ln.Addr().String(), wire.ReadRequest{Block: ref, Length: 5000}, buf); err != nil || !bytes.Equal(buf, bytes.Repeat([]byte("x"), 5000)) {
		t.Fatalf("a read from an HTTP-only worker: %v", err)
	}
}

// TestMalformedFrames: a client that breaks the protocol loses its
// connection, and the server goes on serving others.
func TestMalformedFrames(t *testing.T) {
	tg := startMem(t, nil)
	ref := tg.Put(t, "f", bytes.Repeat([]byte("y"), 1000))
	for name, frames := range map[string][]byte{
		"unknown kind": append(helloBytes(t), wire16(0, 0x7f, 1)...),
		"huge frame":   append(helloBytes(t), wire16(64<<20, wire.KindRead, 1)...),
		"bad version":  []byte("GRNB\x00\x09\x00\x00\x00\x09the-token\r\n"),
		"no CR LF":     []byte("GRNB\x00\x01\x00\x00\x00\x09the-tokenXX"),
	} {
		t.Run(name, func(t *testing.T) {
			c, err := net.Dial("tcp", tg.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.Write(frames)
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			var buf [4096]byte
			for {
				if _, err := c.Read(buf[:]); err != nil {
					if ne, ok := err.(net.Error); ok && ne.Timeout() {
						t.Fatal("the server kept a connection that broke the protocol")
					}
					break
				}
			}
		})
	}
	rd := transport.NewFramed(transport.Options{Token: testToken})
	defer rd.Close()
	buf := make([]byte, 1000)
	if _, err := rd.Read(context.Background(), tg.addr, wire.ReadRequest{Block: ref, Length: 1000}, buf); err != nil {
		t.Fatalf("a good client after the bad ones: %v", err)
	}
}

func helloBytes(t *testing.T) []byte {
	b, err := wire.AppendHello(nil, testToken)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func wire16(n uint32, kind byte, id uint64) []byte {
	var b [wire.FrameHeaderLen]byte
	wire.FrameHeader{Len: n, Kind: kind, ID: id}.Put(b[:])
	return b[:]
}

// countingListener counts the connections it accepted that are still open.
type countingListener struct {
	net.Listener
	open atomic.Int32
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.open.Add(1)
	return &countedConn{Conn: c, l: l}, nil
}

type countedConn struct {
	net.Conn
	l    *countingListener
	once sync.Once
}

func (c *countedConn) Close() error {
	c.once.Do(func() { c.l.open.Add(-1) })
	return c.Conn.Close()
}

// TestIdleConnectionsClosed: the framed reader closes connections that
// carried no read for IdleTimeout, and opens new ones when reads come back.
func TestIdleConnectionsClosed(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := &countingListener{Listener: inner}
	tg := startMemOn(t, ln, nil)
	data := bytes.Repeat([]byte("idle"), 10000)
	ref := tg.Put(t, "f", data)
	rd := transport.NewFramed(transport.Options{Token: testToken, IdleTimeout: 200 * time.Millisecond})
	defer rd.Close()
	readAll := func() {
		var wg sync.WaitGroup
		for range 6 {
			wg.Go(func() {
				buf := make([]byte, len(data))
				if _, err := rd.Read(context.Background(), tg.addr, wire.ReadRequest{Block: ref, Length: int64(len(data))}, buf); err != nil || !bytes.Equal(buf, data) {
					t.Errorf("read: %v", err)
				}
			})
		}
		wg.Wait()
	}
	readAll()
	if ln.open.Load() == 0 {
		t.Fatal("no connection open after reads")
	}
	for i := 0; ln.open.Load() > 0; i++ {
		if i == 100 {
			t.Fatalf("%d connections still open 10 s after the last read (idle timeout 200 ms)", ln.open.Load())
		}
		time.Sleep(100 * time.Millisecond)
	}
	readAll() // new connections
}
