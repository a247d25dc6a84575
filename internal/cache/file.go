package cache

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"

	"github.com/granary-cache/granary/internal/regfile"
)

// Reading a stored block: its file opened, each page read and checked
// against its CRC32C, a page that fails dropped and counted.

// File is an open block file, for serving its pages.
type File struct {
	*os.File
	Block *Block
	Path  string
	stamp stamp // the file's state when opened

	s      *Store
	h      *handle // a shared File's (OpenShared), nil once closed
	shared bool
}

// Close closes the file, or for a shared one lets go of its handle.
func (f *File) Close() error {
	if !f.shared {
		return f.File.Close()
	}
	if f.h == nil {
		return nil // closed already
	}
	h := f.h
	f.h = nil
	return f.s.release(h)
}

// Open opens b's file for reading. ErrGone means it was evicted or moved
// meanwhile.
func (s *Store) Open(b *Block) (*File, error) {
	for range 2 { // a demotion may move the file between the lookup and the open
		s.mu.Lock()
		if b.removed {
			s.mu.Unlock()
			return nil, ErrGone
		}
		path := b.tier.blockPath(b.id)
		s.mu.Unlock()
		f, err := regfile.Open(path)
		if err == nil {
			return &File{File: f, Block: b, Path: path, stamp: stampOf(f)}, nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
	}
	return nil, ErrGone
}

// ReadPage reads page p of an open block into buf, which must hold a page,
// and checks it against its CRC32C; a page that passes is trusted until
// the file changes (Trusted). A page that fails is dropped (to be fetched
// again), counted and logged, and ErrCorrupt is returned; ErrGone means the
// page is not stored (any more).
func (s *Store) ReadPage(f *File, p int, buf []byte) ([]byte, error) {
	b := f.Block
	s.mu.Lock()
	if p < 0 || p >= len(b.pages) || !b.pages[p].present {
		s.mu.Unlock()
		return nil, ErrGone
	}
	pg := b.pages[p]
	s.mu.Unlock()
	n := s.layout.PageLen(b.Length, p)
	if int64(len(buf)) < n {
		return nil, fmt.Errorf("cache: page %d of %s: a buffer of %d bytes cannot hold its %d", p, b.Key, len(buf), n)
	}
	buf = buf[:n]
	k, err := f.ReadAt(buf, int64(p)*s.layout.PageSize)
	if err != nil && err != io.EOF {
		return nil, fmt.Errorf("read page %d of %s: %w", p, b.Key, err)
	}
	if int64(k) == n && crc32c(buf) == pg.crc {
		s.mu.Lock()
		s.trustLocked(f, p, pg.gen)
		s.mu.Unlock()
		return buf, nil
	}
	// Short (the file was cut) or changed: either way not the stored page.
	s.corrupt(b, p, pg)
	return nil, fmt.Errorf("%w: %s page %d", ErrCorrupt, b.Key, p)
}

// corrupt drops page p of b, which failed its check when it was seen, unless
// it was stored again since: then the check may have read a page being
// rewritten, and the new copy is left alone. Only the call that drops the
// page counts it, so that a page is counted once however many readers saw
// it fail.
func (s *Store) corrupt(b *Block, p int, seen page) {
	s.mu.Lock()
	cur := b.pages[p]
	dropped := cur.present && cur.gen == seen.gen
	if dropped {
		b.pages[p].present = false
		if !b.removed {
			b.tier.live-- // its record is no longer among b.records()
		}
	}
	tier := b.tier.Name
	s.mu.Unlock()
	if dropped {
		s.m.corrupt()
		slog.Warn("cached page failed its checksum; it will be fetched again", "block", b.Key.String(), "page", p, "tier", tier)
	}
}

// Verify checks pages [first, last] of an open block against their
// checksums, as ReadPage does, and returns the first failure.
func (s *Store) Verify(f *File, first, last int) error {
	bufp := s.pageBufs.Get().(*[]byte)
	defer s.pageBufs.Put(bufp)
	for p := first; p <= last; p++ {
		if _, err := s.ReadPage(f, p, *bufp); err != nil {
			return err
		}
	}
	return nil
}

// PageCRCs returns the checksum of every page of b (0 for a missing page).
func (s *Store) PageCRCs(b *Block) []uint32 {
	s.mu.Lock()
	defer s.mu.Unlock()
	crcs := make([]uint32, len(b.pages))
	for i, pg := range b.pages {
		crcs[i] = pg.crc
	}
	return crcs
}
