package cache

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
