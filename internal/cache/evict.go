package cache

import (
	"io"
	"os"
	"path/filepath"
)

// evict brings every tier above its high watermark down to its low one,
// near copies first, then the least recently used blocks. A block leaving a
// tier that has a slower tier below it is demoted there rather than dropped
// (a near copy is dropped: its owner has it); pinned blocks and blocks being
// written stay.
func (s *Store) evict() {
	s.evicting.Lock() // one pass at a time
	defer s.evicting.Unlock()
	for i, t := range s.tiers {
		for _, b := range s.victims(t) {
			if i+1 < len(s.tiers) && !b.near {
				switch s.demote(b, s.tiers[i+1]) {
				case demoted, skipped:
					continue
				}
			}
			s.drop(b, "evict")
		}
		s.compact(t)
	}
}

type demotion int

const (
	demoted demotion = iota
	skipped          // in use or gone meanwhile: leave it
	failed           // no room below or the copy failed: drop it
)

// victims picks the blocks to take off t, oldest first.
func (s *Store) victims(t *tier) []*Block {
	s.mu.Lock()
	defer s.mu.Unlock()
	if float64(t.used) <= t.High*float64(t.Quota) {
		return nil
	}
	target := int64(t.Low * float64(t.Quota))
	excess := t.used - target
	var out []*Block
	for _, nearPass := range []bool{true, false} {
		for e := t.lru.Back(); e != nil && excess > 0; e = e.Prev() {
			b := e.Value.(*Block)
			if b.near != nearPass || b.pinned || b.busy > 0 || b.moving {
				continue
			}
			out = append(out, b)
			excess -= b.Length
		}
	}
	return out
}

// demote copies b to the slower tier dst and switches it there.
func (s *Store) demote(b *Block, dst *tier) demotion {
	s.mu.Lock()
	if b.removed || b.busy > 0 || b.moving {
		s.mu.Unlock()
		return skipped
	}
	if dst.Quota < b.Length {
		s.mu.Unlock()
		return failed
	}
	b.moving = true
	src := b.tier
	// Reserve on dst now; its own watermarks are enforced on the next pass.
	dst.used += b.Length
	s.mu.Unlock()

	err := copyFile(src.blockPath(b.id), dst.blockPath(b.id))
	var recs []journalRecord
	if err == nil {
		s.mu.Lock()
		recs = b.records()
		s.mu.Unlock()
		err = dst.j.append(recs...)
	}
	s.mu.Lock()
	b.moving = false
	if err != nil || b.removed {
		dst.used -= b.Length
		s.mu.Unlock()
		os.Remove(dst.blockPath(b.id))
		if err != nil {
			s.m.storeError(err)
			return failed
		}
		return skipped
	}
	src.lru.Remove(b.elem)
	src.used -= b.Length
	src.live -= int64(len(recs))
	closeFiles(s.detachLocked(b)) // its handle is of the old file
	b.tier = dst
	b.elem = dst.lru.PushFront(b)
	dst.live += int64(len(recs))
	s.mu.Unlock()

	src.j.append(journalRecord{kind: recRemove, id: b.id})
	os.Remove(src.blockPath(b.id))
	s.m.evicted(src.Name, "demote")
	return demoted
}

func copyFile(from, to string) error {
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	if err := os.MkdirAll(filepath.Dir(to), 0o700); err != nil {
		return err
	}
	out, err := os.OpenFile(to, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = io.Copy(out, in) // copy_file_range or sendfile where the kernel can
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(to)
	}
	return err
}

// compact rewrites t's journal when most of it describes blocks that are
// gone, so that it stays proportional to what the tier holds.
func (s *Store) compact(t *tier) {
	const minSize = 64 << 20
	t.j.mu.Lock()
	size := t.j.size
	t.j.mu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	// A live record takes about 60 bytes; a journal four times that is mostly dead.
	if size < minSize || size < 4*60*t.live {
		return
	}
	old := t.j
	old.mu.Lock() // no appends while the new journal is written
	nj, err := createJournal(old.path, func(yield func(journalRecord) bool) {
		t.live = 0
		for e := t.lru.Back(); e != nil; e = e.Prev() {
			for _, r := range e.Value.(*Block).records() {
				t.live++
				if !yield(r) {
					return
				}
			}
		}
	})
	if err != nil {
		old.mu.Unlock()
		s.m.storeError(err)
		return
	}
	old.f.Close()
	old.f, old.size = nj.f, nj.size
	old.mu.Unlock()
}
