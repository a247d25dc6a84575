// Package regfile opens and writes regular files with plain blocking
// system calls.
//
// os.Open and os.OpenFile offer every file they open to the runtime's
// network poller. On Linux a regular file costs four fcntl calls and an
// epoll_ctl that fails, beside the open itself: six system calls where one
// does. The cache opens a block file for every cold block it stores and
// every reader on the host opens it again, so on a cold epoch of small
// files those calls are a good part of the work per file. A regular file
// gains nothing from the poller: its reads and writes block either way.
package regfile

import (
	"io/fs"
	"os"
	"syscall"
)

// Open opens a file for reading, like os.Open.
func Open(name string) (*os.File, error) {
	fd, err := open(name, syscall.O_RDONLY, 0)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: name, Err: err}
	}
	return os.NewFile(uintptr(fd), name), nil
}

// WriteAt writes data at off into the named file, creating it with perm
// if it does not exist. The file is not truncated.
func WriteAt(name string, data []byte, off int64, perm fs.FileMode) error {
	fd, err := open(name, syscall.O_WRONLY|syscall.O_CREAT, uint32(perm.Perm()))
	if err != nil {
		return &fs.PathError{Op: "open", Path: name, Err: err}
	}
	werr := pwriteAll(fd, data, off)
	cerr := syscall.Close(fd)
	if werr != nil {
		return &fs.PathError{Op: "write", Path: name, Err: werr}
	}
	if cerr != nil {
		return &fs.PathError{Op: "close", Path: name, Err: cerr}
	}
	return nil
}

// WriteAtStat is WriteAt that also returns the file's status just before
// and just after the write (fstat on the descriptor it wrote through), so
// that a caller can tell its own change from another's.
func WriteAtStat(name string, data []byte, off int64, perm fs.FileMode) (before, after syscall.Stat_t, err error) {
	fd, err := open(name, syscall.O_WRONLY|syscall.O_CREAT, uint32(perm.Perm()))
	if err != nil {
		return before, after, &fs.PathError{Op: "open", Path: name, Err: err}
	}
	werr := syscall.Fstat(fd, &before)
	if werr == nil {
		werr = pwriteAll(fd, data, off)
	}
	if werr == nil {
		werr = syscall.Fstat(fd, &after)
	}
	cerr := syscall.Close(fd)
	if werr != nil {
		return before, after, &fs.PathError{Op: "write", Path: name, Err: werr}
	}
	if cerr != nil {
		return before, after, &fs.PathError{Op: "close", Path: name, Err: cerr}
	}
	return before, after, nil
}

func open(name string, flag int, perm uint32) (int, error) {
	for {
		fd, err := syscall.Open(name, flag|syscall.O_CLOEXEC, perm)
		if err != syscall.EINTR {
			return fd, err
		}
	}
}

// pwriteAll writes all of data at off, through short writes.
func pwriteAll(fd int, data []byte, off int64) error {
	for len(data) > 0 {
		n, err := syscall.Pwrite(fd, data, off)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if n == 0 {
			return syscall.EIO // no progress: do not spin
		}
		data, off = data[n:], off+int64(n)
	}
	return nil
}
