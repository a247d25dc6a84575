package transport

import (
	"fmt"
	"net"
	"os"
	"slices"
	"sync"
	"sync/atomic"
)

// frameOut is the outgoing side of a worker's connection: the frames of
// the reads it serves, from any number of goroutines, one frame at a time.
//
// Headers and small bodies gather in a buffer; the last writer waiting
// sends it, so frames written together leave in one system call. A large
// body never goes through the buffer: one from memory leaves with the
// buffered bytes in one writev(2); one from a block file goes by
// sendfile(2), right after the buffered bytes (its header among them) are
// written. Holding the header back to share segments with the file's
// pages (MSG_MORE, or TCP_CORK around the two calls) was measured: it
// halved the rate of warm 128 KiB hits over loopback and doubled their CPU
// (BenchmarkRemoteHits), so the header leaves on its own.
type frameOut struct {
	nc      net.Conn
	waiting atomic.Int32 // writers waiting for mu: the last one out sends

	mu  sync.Mutex
	buf []byte // not yet sent
	err error  // the first write error: the connection is dead
}

const (
	// smallBody is the largest body copied into the buffer.
	smallBody = 16 << 10
	// outBuffer is how much the buffer holds before it is sent anyway.
	outBuffer = 64 << 10
)

// write sends one frame: header hdr, then its body from body, or n bytes
// of f at off.
func (o *frameOut) write(hdr, body []byte, f *os.File, off, n int64) error {
	o.waiting.Add(1)
	o.mu.Lock()
	defer o.mu.Unlock()
	last := o.waiting.Add(-1) == 0
	if o.err != nil {
		return o.err
	}
	err := o.put(hdr, body, f, off, n)
	if err == nil && (last || len(o.buf) >= outBuffer) {
		err = o.send()
	}
	if err != nil {
		o.err = fmt.Errorf("write to %s: %w", o.nc.RemoteAddr(), err)
		o.nc.Close() // a frame cut short: the connection is unusable
		return o.err
	}
	return nil
}

func (o *frameOut) put(hdr, body []byte, f *os.File, off, n int64) error {
	o.buf = append(o.buf, hdr...)
	switch {
	case f == nil && len(body) <= smallBody:
		o.buf = append(o.buf, body...)
		return nil
	case f == nil:
		bufs := net.Buffers{o.buf, body}
		_, err := bufs.WriteTo(o.nc)
		o.buf = o.buf[:0]
		return err
	case n <= smallBody:
		start := len(o.buf)
		o.buf = slices.Grow(o.buf, int(n))[:start+int(n)]
		if _, err := f.ReadAt(o.buf[start:], off); err != nil {
			return fmt.Errorf("read block file: %w", err)
		}
		return nil
	}
	if _, err := o.nc.Write(o.buf); err != nil {
		return err
	}
	o.buf = o.buf[:0]
	return sendFileAt(o.nc, f, off, n)
}

// send writes the buffer out.
func (o *frameOut) send() error {
	if len(o.buf) == 0 {
		return nil
	}
	_, err := o.nc.Write(o.buf)
	if cap(o.buf) > 4*outBuffer {
		o.buf = nil // a burst grew it: let it go
	} else {
		o.buf = o.buf[:0]
	}
	return err
}
