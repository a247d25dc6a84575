package cache

import (
	"container/list"
	"errors"
	"io/fs"
	"os"

	"github.com/granary-cache/granary/internal/regfile"
)

// Shared handles: a block read over the network is served from its file
// by positioned reads (pread, sendfile at an offset), which never move the
// descriptor's offset, so every reader of a block can share one open
// descriptor. Opening, checking and closing a file per request costs more
// than serving a small hit; a shared handle costs one fstat (for the
// file's stamp, see trust.go). Handles no reader holds are kept open, at
// most maxIdleHandles of them, least recently used closed first; a block
// that is dropped or moved to another tier closes its handle (at once when
// idle, else when its last reader is done).

// maxIdleHandles bounds the block files kept open for no reader.
const maxIdleHandles = 256

// handle is one open block file shared by the readers of a block.
type handle struct {
	f     *os.File
	path  string
	refs  int
	block *Block        // nil once detached: closed when refs drop to 0
	idle  *list.Element // in Store.idle while refs == 0
}

// OpenShared opens b's file, as Open does, sharing one descriptor with the
// other readers of b. The File must only be read at offsets (ReadAt, a
// sendfile with an offset): never Seek or Read it. ErrGone means b was
// evicted or moved meanwhile.
func (s *Store) OpenShared(b *Block) (*File, error) {
	for range 2 {
		s.mu.Lock()
		if b.removed {
			s.mu.Unlock()
			return nil, ErrGone
		}
		path := b.tier.blockPath(b.id)
		if h := b.handle; h != nil && h.path == path {
			h.refs++
			if h.idle != nil {
				s.idle.Remove(h.idle)
				h.idle = nil
			}
			s.mu.Unlock()
			return &File{File: h.f, Block: b, Path: path, stamp: stampOf(h.f), s: s, h: h, shared: true}, nil
		}
		s.mu.Unlock()
		f, err := regfile.Open(path)
		if errors.Is(err, fs.ErrNotExist) {
			continue // moved by a demotion: look again
		}
		if err != nil {
			return nil, err
		}
		h := &handle{f: f, path: path, refs: 1}
		s.mu.Lock()
		if !b.removed && b.handle == nil && b.tier.blockPath(b.id) == path {
			b.handle, h.block = h, b
		}
		s.mu.Unlock()
		return &File{File: f, Block: b, Path: path, stamp: stampOf(f), s: s, h: h, shared: true}, nil
	}
	return nil, ErrGone
}

// release is a shared File's Close: the last reader of a detached handle
// closes it; of an attached one parks it among the idle.
func (s *Store) release(h *handle) error {
	var closeNow []*os.File
	s.mu.Lock()
	h.refs--
	if h.refs == 0 {
		if h.block == nil {
			closeNow = append(closeNow, h.f)
		} else {
			h.idle = s.idle.PushBack(h)
			for s.idle.Len() > maxIdleHandles {
				old := s.idle.Front().Value.(*handle)
				closeNow = append(closeNow, s.detachLocked(old.block)...)
			}
		}
	}
	s.mu.Unlock()
	var err error
	for _, f := range closeNow {
		err = errors.Join(err, f.Close())
	}
	return err
}

// detachLocked unties b from its handle (b dropped, moved, or its handle
// evicted from the idle) and returns the descriptor to close now when no
// reader holds it; s.mu is held.
func (s *Store) detachLocked(b *Block) []*os.File {
	h := b.handle
	if h == nil {
		return nil
	}
	b.handle, h.block = nil, nil
	if h.idle != nil {
		s.idle.Remove(h.idle)
		h.idle = nil
	}
	if h.refs == 0 {
		return []*os.File{h.f}
	}
	return nil
}

// closeIdle closes the handles no reader holds (at Close).
func (s *Store) closeIdle() {
	var fs []*os.File
	s.mu.Lock()
	for s.idle.Len() > 0 {
		fs = append(fs, s.detachLocked(s.idle.Front().Value.(*handle).block)...)
	}
	s.mu.Unlock()
	closeFiles(fs)
}

// closeFiles closes what detachLocked returned.
func closeFiles(fs []*os.File) {
	for _, f := range fs {
		f.Close()
	}
}
