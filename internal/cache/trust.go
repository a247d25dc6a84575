package cache

import (
	"os"
	"syscall"
)

// A stored page is checked against its CRC32C when it is read from its
// block file, and the check holds for as long as the file does not change:
// any write to the file — a page stored by the worker, a stray write, a
// byte flipped by hand — moves its change time (ctime), and the next read
// checks the page again. Reads of an unchanged file can then go straight
// from the file to the socket or to the kernel (sendfile, FUSE passthrough)
// without a copy through user space. What does not move the change time —
// a disk that rots under an unchanged file — is the scrub's to find (see
// scrub.go), which re-reads every page at a bounded rate regardless.

// stamp identifies one state of a block file: the file (device, inode) and
// its last change (ctime, size). Linux gives a change that follows an fstat
// a finer timestamp than the one fstat saw, so two states do not share one.
type stamp struct {
	dev, ino uint64
	ctime    int64
	size     int64
}

// stampOf reads f's stamp; the zero stamp (never trusted) when it cannot.
func stampOf(f *os.File) stamp {
	st, err := f.Stat()
	if err != nil {
		return stamp{}
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return stamp{}
	}
	return stamp{dev: uint64(sys.Dev), ino: sys.Ino, ctime: sys.Ctim.Nano(), size: st.Size()}
}

// Trusted reports whether page p of an open block was checked since its
// file last changed, so that it may be served without reading it first.
func (s *Store) Trusted(f *File, p int) bool {
	if f == nil || f.stamp == (stamp{}) {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	b := f.Block
	return !b.removed && p < len(b.pages) && b.pages[p].present && b.pages[p].checked && b.stamp == f.stamp
}

// trust records that page p (at generation gen) passed its check in the
// file state f was opened at; s.mu is held.
func (s *Store) trustLocked(f *File, p int, gen uint32) {
	b := f.Block
	if f.stamp == (stamp{}) || p >= len(b.pages) || b.pages[p].gen != gen || !b.pages[p].present {
		return
	}
	if b.stamp != f.stamp {
		if f.stamp.ctime < b.stamp.ctime {
			// A handle opened before the file last changed (the scrub's,
			// say): its checks say nothing of the file as it is now.
			return
		}
		// The file changed since the last checks: none of them holds.
		for i := range b.pages {
			b.pages[i].checked = false
		}
		b.stamp = f.stamp
	}
	b.pages[p].checked = true
}
