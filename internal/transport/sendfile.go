package transport

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
)

// sendFileAt sends n bytes of f at off to conn by sendfile(2) with an
// explicit offset, leaving f's own offset alone: block files are shared by
// the requests that read them (cache.Store.OpenShared). A connection
// without a descriptor (TLS) gets a positioned copy instead.
func sendFileAt(conn net.Conn, f *os.File, off, n int64) error {
	sc, ok := conn.(syscall.Conn)
	if _, isTCP := conn.(*net.TCPConn); !ok || !isTCP {
		return copyAt(conn, f, off, n)
	}
	out, err := sc.SyscallConn()
	if err != nil {
		return copyAt(conn, f, off, n)
	}
	in, err := f.SyscallConn()
	if err != nil {
		return copyAt(conn, f, off, n)
	}
	var serr error
	ctlErr := in.Control(func(infd uintptr) {
		for n > 0 && serr == nil {
			werr := out.Write(func(outfd uintptr) bool {
				k, e := syscall.Sendfile(int(outfd), int(infd), &off, int(min(n, 1<<30)))
				for i := 0; e == syscall.EINTR && i < 8; i++ { // a signal before any byte moved
					k, e = syscall.Sendfile(int(outfd), int(infd), &off, int(min(n, 1<<30)))
				}
				switch {
				case e == syscall.EAGAIN:
					return false // wait until the socket takes more
				case e != nil:
					serr = fmt.Errorf("sendfile: %w", e)
				case k == 0:
					serr = fmt.Errorf("sendfile: %w: the block file ended %d bytes early", io.ErrUnexpectedEOF, n)
				default:
					n -= int64(k) // the kernel moved off
				}
				return true
			})
			if werr != nil && serr == nil {
				serr = werr
			}
		}
	})
	return errors.Join(ctlErr, serr)
}

// copyAt copies n bytes of f at off to w through user space.
func copyAt(w io.Writer, f *os.File, off, n int64) error {
	k, err := io.Copy(w, io.NewSectionReader(f, off, n))
	if err == nil && k < n {
		err = fmt.Errorf("read block file: %w: %d of %d bytes", io.ErrUnexpectedEOF, k, n)
	}
	return err
}
