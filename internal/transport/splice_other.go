//go:build !linux

package transport

import (
	"errors"
	"net"
	"os"
)

// framePipe is Linux's (splice_linux.go); elsewhere frames with a file
// body go by a write and sendfile.
type framePipe struct{}

func newFramePipe() (*framePipe, error) { return nil, errors.New("no splice on this system") }

func (p *framePipe) close() {}

func (p *framePipe) send(*net.TCPConn, []byte, *os.File, int64, int64) error {
	return errors.New("no splice on this system")
}
