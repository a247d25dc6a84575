package transport

import (
	"io"
	"net"
	"syscall"
	"unsafe"

	"github.com/granary-cache/granary/internal/wire"
)

// input is the incoming side of a framed connection on the reader's side:
// a buffer in front of the connection and, on plain TCP, the descriptor,
// so that the header of a frame and its body can arrive in one readv(2)
// (see readLone).
type input struct {
	nc   net.Conn
	raw  syscall.RawConn // nil on TLS
	buf  []byte
	r, w int // buf[r:w] is read and not yet consumed
}

func newInput(nc net.Conn) *input {
	in := &input{nc: nc, buf: make([]byte, readBuffer)}
	if tc, ok := nc.(*net.TCPConn); ok {
		if raw, err := tc.SyscallConn(); err == nil {
			in.raw = raw
		}
	}
	return in
}

func (in *input) buffered() int { return in.w - in.r }

// Read implements io.Reader: buffered bytes first; a read at least as
// large as the buffer goes straight into p.
func (in *input) Read(p []byte) (int, error) {
	if in.r < in.w {
		n := copy(p, in.buf[in.r:in.w])
		in.r += n
		return n, nil
	}
	if len(in.buf) > readBuffer {
		in.buf = make([]byte, readBuffer) // grown by a frame readLone put back
	}
	if len(p) >= len(in.buf) {
		return in.nc.Read(p)
	}
	n, err := in.nc.Read(in.buf)
	in.r, in.w = 0, n
	if n > 0 {
		k := copy(p, in.buf[:n])
		in.r = k
		return k, nil // an error comes again with the next read
	}
	return 0, err
}

// unread puts parts, in order, in front of what the buffer holds, which
// must be nothing. A part may lie in the buffer itself; only the first
// (in place already) and the last may: the parts are copied last first,
// so that none is overwritten before it has moved.
func (in *input) unread(parts ...[]byte) {
	n := 0
	for _, p := range parts {
		n += len(p)
	}
	if n > len(in.buf) {
		in.buf = make([]byte, n)
	}
	in.r, in.w = 0, n
	for i := len(parts) - 1; i >= 0; i-- {
		n -= len(parts[i])
		copy(in.buf[n:], parts[i]) // copy moves overlapping bytes right
	}
}

// readLone reads what the worker sent next with one readv(2) into: the
// input buffer for a frame header, then the buffer of the read waiting on
// the connection if it is the only one (and nothing of it arrived yet),
// then the rest of the input buffer. A data frame for that read is then
// in place without a copy and without a second system call; it reports
// whether it handled such a frame. Anything else it read is left in the
// input buffer, in order, for the read loop. The input buffer must be
// empty.
func (c *cliConn) readLone() (bool, error) {
	in := c.in
	var cl *call
	var tgt []byte
	var n int
	var rerr error
	err := in.raw.Read(func(fd uintptr) bool {
		c.mu.Lock()
		cl, tgt = c.loneLocked()
		if cl != nil {
			c.active = cl // its buffer stays the caller's until released
		}
		c.mu.Unlock()
		iov := [3]syscall.Iovec{{Base: &in.buf[0]}, {}, {Base: &in.buf[wire.FrameHeaderLen]}}
		iov[0].SetLen(wire.FrameHeaderLen)
		iov[2].SetLen(len(in.buf) - wire.FrameHeaderLen)
		parts := iov[:]
		if len(tgt) > 0 {
			iov[1].Base = &tgt[0]
			iov[1].SetLen(len(tgt))
		} else {
			iov[0].SetLen(len(in.buf)) // the whole buffer, as a plain read
			parts = iov[:1]
		}
		for {
			r, _, errno := syscall.Syscall(syscall.SYS_READV, fd, uintptr(unsafe.Pointer(&parts[0])), uintptr(len(parts)))
			if errno == syscall.EINTR {
				continue
			}
			n, rerr = int(r), nil
			if errno != 0 {
				n, rerr = 0, errno
			}
			break
		}
		if rerr == syscall.EAGAIN {
			c.leave(cl) // nothing yet: wait for the socket without holding it
			cl, tgt = nil, nil
			return false
		}
		return true
	})
	switch {
	case err == nil && rerr != nil:
		err = rerr
	case err == nil && n == 0:
		err = io.EOF
	}
	if err != nil {
		c.leave(cl)
		return false, err
	}
	if tgt == nil {
		in.r, in.w = 0, n // a plain read into the buffer
		return false, nil
	}
	hdrN := min(n, wire.FrameHeaderLen)
	k := min(n-hdrN, len(tgt))                                          // bytes in tgt
	spill := in.buf[wire.FrameHeaderLen : wire.FrameHeaderLen+n-hdrN-k] // bytes after tgt
	var h wire.FrameHeader
	ok := false
	if hdrN == wire.FrameHeaderLen {
		var perr error
		h, perr = wire.ParseFrameHeader(in.buf[:wire.FrameHeaderLen])
		ok = perr == nil && h.ID == cl.id && h.Item == 0 && h.Kind == wire.KindData && int(h.Len) <= len(tgt)
	}
	if !ok {
		// Not the frame awaited (another call's, an error, a short read):
		// the bytes go back in stream order, out of tgt before it is left.
		in.unread(in.buf[:hdrN], tgt[:k], spill)
		c.leave(cl)
		return false, nil
	}
	have := min(k, int(h.Len))
	in.unread(tgt[have:k], spill) // whatever followed the frame
	return true, c.ended(cl, h, c.fill(cl, h, have))
}

// loneLocked returns the call to read straight into, and its buffer (up
// to one frame's worth), if exactly one call is in flight and it is a
// single read of which nothing has arrived; c.mu is held.
func (c *cliConn) loneLocked() (*call, []byte) {
	if len(c.calls) != 1 {
		return nil, nil
	}
	for _, cl := range c.calls {
		if len(cl.reads) == 1 && !cl.ended[0] && cl.got[0] == 0 && len(cl.bufs[0]) > 0 {
			b := cl.bufs[0]
			return cl, b[:min(len(b), wire.MaxFrameBody)]
		}
	}
	return nil, nil
}

// leave ends the read loop's use of cl's buffer (nil: none).
func (c *cliConn) leave(cl *call) {
	if cl == nil {
		return
	}
	c.mu.Lock()
	c.active = nil
	c.cond.Broadcast()
	c.mu.Unlock()
}
