package transport

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
)

// framePipe sends frames whose body comes from a block file through a
// pipe of the connection's own: the bytes gathered so far (the frame's
// header among them) are written into the pipe, the file's pages spliced
// in after them without a copy, and the whole spliced to the socket at
// once. Header and data then leave together, in one push to the socket,
// as one write from memory would — where a header written before a
// sendfile goes alone, waking the reader for 16 bytes, and one held back
// with MSG_MORE or TCP_CORK was measured at half the rate.
type framePipe struct {
	r, w int // non-blocking, close-on-exec
	size int // capacity
}

// pipeSize is the capacity asked for a connection's pipe: the default
// pipe-max-size, enough for a 128 KiB hit and its header in one pass.
const pipeSize = 1 << 20

func newFramePipe() (*framePipe, error) {
	var fds [2]int
	if err := syscall.Pipe2(fds[:], syscall.O_CLOEXEC|syscall.O_NONBLOCK); err != nil {
		return nil, fmt.Errorf("pipe: %w", err)
	}
	p := &framePipe{r: fds[0], w: fds[1], size: 64 << 10}
	if n, _, e := syscall.Syscall(syscall.SYS_FCNTL, uintptr(p.w), syscall.F_SETPIPE_SZ, pipeSize); e == 0 {
		p.size = int(n)
	}
	return p, nil
}

func (p *framePipe) close() {
	syscall.Close(p.r)
	syscall.Close(p.w)
}

// send writes head, then n bytes of f at off, to conn (a *net.TCPConn).
// On error the connection is unusable, and so is the pipe, which may hold
// bytes still: the caller closes both.
func (p *framePipe) send(conn *net.TCPConn, head []byte, f *os.File, off, n int64) error {
	sc, err := conn.SyscallConn()
	if err != nil {
		return err
	}
	fc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	cerr := fc.Control(func(infd uintptr) {
		for serr == nil && (len(head) > 0 || n > 0) {
			// Fill the pipe: what is in hand first, then the file's pages.
			queued := 0
			for len(head) > 0 && queued < p.size {
				k, err := syscall.Write(p.w, head)
				if err != nil {
					serr = fmt.Errorf("write to pipe: %w", err)
					return
				}
				head, queued = head[k:], queued+k
			}
			for len(head) == 0 && n > 0 && queued < p.size {
				k, err := syscall.Splice(int(infd), &off, p.w, nil, int(min(n, int64(p.size-queued))), spliceMove)
				if errors.Is(err, syscall.EAGAIN) {
					break // the pipe is full: drain it
				}
				if err != nil {
					serr = fmt.Errorf("splice from block file: %w", err)
					return
				}
				if k == 0 {
					serr = fmt.Errorf("splice from block file: %w: it ended %d bytes early", io.ErrUnexpectedEOF, n)
					return
				}
				n, queued = n-k, queued+int(k)
			}
			// Drain it into the socket, waiting for room as the poller says.
			werr := sc.Write(func(outfd uintptr) bool {
				for queued > 0 {
					k, err := syscall.Splice(p.r, nil, int(outfd), nil, queued, spliceMove)
					switch {
					case errors.Is(err, syscall.EAGAIN):
						return false
					case errors.Is(err, syscall.EINTR):
						continue
					case err != nil:
						serr = fmt.Errorf("splice to socket: %w", err)
						return true
					}
					queued -= int(k)
				}
				return true
			})
			if werr != nil && serr == nil {
				serr = werr
			}
		}
	})
	return errors.Join(cerr, serr)
}

// spliceMove is SPLICE_F_MOVE: a hint to move pages rather than copy them.
const spliceMove = 1
