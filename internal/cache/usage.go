package cache

import "github.com/granary-cache/granary/internal/block"

// DatasetBytes returns, per dataset, the bytes of the pages stored on every
// tier, near copies apart. It walks every block: it is meant for status, not
// hot paths.
func (s *Store) DatasetBytes() map[string]int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]int64{}
	for _, b := range s.blocks {
		if b.near {
			continue
		}
		var n int64
		for p, pg := range b.pages {
			if pg.present {
				n += s.layout.PageLen(b.Length, p)
			}
		}
		out[b.Key.Dataset] += n
	}
	return out
}

// BlockInfo describes one cached block.
type BlockInfo struct {
	Key      block.ID
	Tier     string
	Near     bool
	Complete bool
	Pages    int // stored
}

// Blocks lists the cached blocks of a dataset (every dataset when ds is
// empty), for tests and tools that check where copies are.
func (s *Store) Blocks(ds string) []BlockInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []BlockInfo
	for _, b := range s.blocks {
		if ds != "" && b.Key.Dataset != ds {
			continue
		}
		bi := BlockInfo{Key: b.Key, Tier: b.tier.Name, Near: b.near, Complete: true}
		for _, pg := range b.pages {
			if pg.present {
				bi.Pages++
			} else {
				bi.Complete = false
			}
		}
		out = append(out, bi)
	}
	return out
}
