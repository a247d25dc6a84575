package cache

import (
	"os"
	"syscall"
)

// A stored page is checked against its CRC32C when it is read from its
// block file, and the check holds for as long as nothing but the store
// changes the file: any write to the file — a page stored by the worker, a
// stray write, a byte flipped by hand — moves its change time (ctime).
// The store tells its own page writes from the others: it writes one page
// of a block at a time, looking at the file's state just before and just
// after. When the state before is the one its checks hold in, only its own
// write came between, and they hold on in the state after — as does the
// page it wrote, whose CRC it computed from the very bytes written. Any
// other change ends them all: the next read of each page checks it again.
// Reads of an unchanged file, and of one only the store wrote to since its
// checks, can then go straight from the file to the socket or to the
// kernel (sendfile, FUSE passthrough) without a copy through user space.
// What does not move the change time — a disk that rots under an unchanged
// file — is the scrub's to find (see scrub.go), which re-reads every page
// at a bounded rate regardless.
//
// The checks of a block hold in the states of its file (one device and
// inode) whose change time lies between Block.since and Block.stamp: the
// store's own writes made every state in between.

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
	return stampOfStat(sys)
}

func stampOfStat(st *syscall.Stat_t) stamp {
	return stamp{dev: uint64(st.Dev), ino: st.Ino, ctime: st.Ctim.Nano(), size: st.Size}
}

// holdsIn reports whether the checks of b hold in file state st; s.mu is
// held.
func (b *Block) holdsIn(st stamp) bool {
	return st != (stamp{}) && st.dev == b.stamp.dev && st.ino == b.stamp.ino && st.ctime >= b.since && st.ctime <= b.stamp.ctime
}

// ownWriteLocked records that the store wrote page p of b, the file going
// from state before to state after: the checks go on holding if nothing
// else changed the file since them, and the page is checked either way.
// s.mu and b.writes are held.
func (s *Store) ownWriteLocked(b *Block, p int, before, after stamp) {
	if before == (stamp{}) || after == (stamp{}) {
		for i := range b.pages {
			b.pages[i].checked = false
		}
		b.stamp, b.since = stamp{}, 0
		return
	}
	if before != b.stamp || after.dev != before.dev || after.ino != before.ino {
		// Another change came first (or the file is new): the checks made
		// before it say nothing of the file now.
		for i := range b.pages {
			b.pages[i].checked = false
		}
		b.since = after.ctime
	}
	b.stamp = after
	b.pages[p].checked = true
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
	return !b.removed && p < len(b.pages) && b.pages[p].present && b.pages[p].checked && b.holdsIn(f.stamp)
}

// trust records that page p (at generation gen) passed its check in the
// file state f was opened at; s.mu is held.
func (s *Store) trustLocked(f *File, p int, gen uint32) {
	b := f.Block
	if f.stamp == (stamp{}) || p >= len(b.pages) || b.pages[p].gen != gen || !b.pages[p].present {
		return
	}
	if !b.holdsIn(f.stamp) {
		if f.stamp.ctime < b.stamp.ctime {
			// A handle opened before the file last changed (the scrub's,
			// say): its checks say nothing of the file as it is now.
			return
		}
		// The file changed since the last checks: none of them holds.
		for i := range b.pages {
			b.pages[i].checked = false
		}
		b.stamp, b.since = f.stamp, f.stamp.ctime
	}
	b.pages[p].checked = true
}
