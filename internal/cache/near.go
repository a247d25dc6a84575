package cache

import "github.com/granary-cache/granary/internal/block"

// A near copy is a block a worker keeps for the clients of its own machine
// although other workers own it: those clients then read it from a local
// file (short-circuit, FUSE passthrough) instead of over the network. Near
// copies only take room a tier has free (below its low watermark), never
// push an owned block out, and are the first to go when room is needed.
// They are journaled as such (recNear), so a restart keeps them near.

// CreateNear is Create for a near copy: it fails with ErrNoSpace rather
// than take room below a tier's low watermark, and it does not make the
// evictor run.
func (s *Store) CreateNear(key block.ID, length int64) (*Block, error) {
	return s.create(key, length, true)
}

// Near reports whether b is a near copy.
func (s *Store) Near(b *Block) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return b.near
}

// Own makes a near copy an owned block: this worker became one of its
// owners. Until the journal is next rewritten it still says near, so a
// restart may make it a near copy again, until an owner's read finds it.
func (s *Store) Own(b *Block) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if b.near {
		b.near = false
		b.pinned = s.pinned(b.Key.Dataset)
	}
}

// addKind is the journal record that adds b.
func (b *Block) addKind() byte {
	if b.near {
		return recNear
	}
	return recAdd
}
