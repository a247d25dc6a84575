package cache

import (
	"container/list"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/granary-cache/granary/internal/block"
	"github.com/granary-cache/granary/internal/regfile"
)

// TierConfig is one tier: a directory and how much of it the cache may use.
type TierConfig struct {
	Name  string // MEM, SSD or HDD
	Path  string
	Quota int64
	// High and Low are watermarks as fractions of Quota: eviction starts
	// above High and stops at Low.
	High, Low float64
}

// Config configures a Store.
type Config struct {
	Tiers  []TierConfig // fastest first
	Layout Layout
	// Pinned reports whether a dataset's blocks must never be evicted.
	Pinned func(dataset string) bool
	// Metrics, if set, receives the store's counters.
	Metrics *Metrics
	// ScrubRate bounds the background check of every stored page, in
	// bytes per second; 0 disables it. ScrubInterval is the pause between
	// two full passes (default DefaultScrubInterval).
	ScrubRate     int64
	ScrubInterval time.Duration
	// Repair, if set, is told of each page the scrub found corrupt and
	// dropped, so that it is fetched again before a reader needs it: the
	// kernel reading a block file for FUSE passthrough never asks for the
	// page again by itself. It runs on the scrub's goroutine, without the
	// store's lock; ctx ends when the store is closed.
	Repair func(ctx context.Context, b *Block, page int)
}

// Errors a caller handles by serving straight from the UFS.
var (
	// ErrNoSpace: no tier can take the block now (quota or disk full).
	ErrNoSpace = errors.New("no cache space")
	// ErrCorrupt: a stored page failed its checksum and was dropped.
	ErrCorrupt = errors.New("cached page failed its checksum")
	// ErrGone: the block was evicted or moved while in use.
	ErrGone = errors.New("block no longer cached here")
)

// page is what the store knows of one page of a block. A check holds only
// while the block file does not change (see trust.go): a disk, a memory
// tier or a stray write can change a block file at any time.
type page struct {
	crc     uint32
	present bool
	// checked: read and found right since the file was last changed
	// (Block.stamp).
	checked bool
	// gen counts the times the page was stored, so that a check that read
	// an older copy never drops a newer one.
	gen uint32
}

// Block is one cached block. Its state is guarded by the Store's lock.
type Block struct {
	Key    block.ID
	Length int64

	id      digest
	tier    *tier
	pages   []page
	pinned  bool
	busy    int  // page writes in progress: not to be moved or dropped
	moving  bool // being demoted: no new pages
	removed bool
	elem    *list.Element
	stamp   stamp // the latest file state the checked pages' checks hold in
	since   int64 // and the change time from which they hold (see trust.go)
	// writes serialises the store's page writes of the block, so that each
	// sees the file as the one before left it (see ownWriteLocked).
	writes sync.Mutex
	near   bool    // a near copy: evicted first (see near.go)
	handle *handle // its file, open for shared readers (see handle.go)
}

type tier struct {
	TierConfig
	index int
	j     *journal
	used  int64     // bytes reserved by its blocks (their full length)
	lru   list.List // of *Block, most recently used first
	live  int64     // journal records that still matter, for compaction
	// made marks the block subdirectories (by a digest's first byte) known
	// to exist, so that a new block costs no directory lookup.
	made [256]bool
}

// makeDir makes sure the subdirectory of block id exists. Called with the
// store's lock held.
func (t *tier) makeDir(id digest) error {
	if t.made[id[0]] {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(t.blockPath(id)), 0o700); err != nil {
		return err
	}
	t.made[id[0]] = true
	return nil
}

func (t *tier) blockPath(id digest) string { return filepath.Join(t.Path, id.relPath()) }

// Store is a worker's cache of blocks over its tiers. It is safe for
// concurrent use.
type Store struct {
	layout Layout
	pinned func(string) bool
	m      *Metrics

	mu     sync.Mutex
	tiers  []*tier
	blocks map[digest]*Block

	evicting  sync.Mutex // serialises eviction passes
	closeOnce sync.Once
	kick      chan struct{}
	stop      chan struct{}
	loops     sync.WaitGroup // the evictor and the scrubber
	// ctx ends at Close, for the scrubber's waits.
	ctx    context.Context
	cancel context.CancelFunc
	repair func(context.Context, *Block, int)
	// pageBufs holds page-sized buffers for checks.
	pageBufs sync.Pool
	// idle are the shared handles no reader holds, least recently used
	// first (see handle.go).
	idle list.List
}

// Open opens the tiers, replays their journals and checks the result against
// the block files: a page whose bytes are not all in its file is dropped,
// and a block file that no journal knows is deleted.
func Open(cfg Config) (*Store, error) {
	if err := cfg.Layout.Check(); err != nil {
		return nil, err
	}
	if len(cfg.Tiers) == 0 {
		return nil, errors.New("cache: no tiers")
	}
	if cfg.ScrubRate < 0 || cfg.ScrubInterval < 0 {
		return nil, fmt.Errorf("cache: scrub rate %d and interval %v must not be negative", cfg.ScrubRate, cfg.ScrubInterval)
	}
	s := &Store{
		layout: cfg.Layout, pinned: cfg.Pinned, m: cfg.Metrics, repair: cfg.Repair,
		blocks: map[digest]*Block{},
		kick:   make(chan struct{}, 1), stop: make(chan struct{}),
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.pageBufs.New = func() any { b := make([]byte, s.layout.PageSize); return &b }
	if s.pinned == nil {
		s.pinned = func(string) bool { return false }
	}
	for i, tc := range cfg.Tiers {
		t := &tier{TierConfig: tc, index: i}
		if err := s.load(t); err != nil {
			s.closeJournals()
			return nil, fmt.Errorf("cache tier %s (%s): %w", tc.Name, tc.Path, err)
		}
		s.tiers = append(s.tiers, t)
	}
	if s.m != nil {
		s.m.register(s)
	}
	s.loops.Go(s.evictLoop)
	if cfg.ScrubRate > 0 {
		interval := cfg.ScrubInterval
		if interval == 0 {
			interval = DefaultScrubInterval
		}
		s.loops.Go(func() { s.scrubLoop(cfg.ScrubRate, interval) })
	}
	s.Kick()
	return s, nil
}

// load replays one tier's journal into s and rewrites it compacted.
func (s *Store) load(t *tier) error {
	if err := os.MkdirAll(filepath.Join(t.Path, "blocks"), 0o700); err != nil {
		return err
	}
	jpath := filepath.Join(t.Path, "journal")
	found := map[digest]*Block{}
	var order []*Block
	_, err := readJournal(jpath, func(r journalRecord) {
		switch r.kind {
		case recAdd, recNear:
			if old := found[r.id]; old != nil {
				old.removed = true
			}
			b := &Block{Key: r.key, Length: r.length, id: r.id, tier: t, pages: make([]page, s.layout.Pages(r.length)), near: r.kind == recNear}
			found[r.id] = b
			order = append(order, b)
		case recPage:
			if b := found[r.id]; b != nil && r.page < len(b.pages) {
				b.pages[r.page] = page{crc: r.crc, present: true}
			}
		case recRemove:
			if b := found[r.id]; b != nil {
				b.removed = true
				delete(found, r.id)
			}
		}
	})
	if err != nil {
		return err
	}
	// Check every block against its file; oldest first, so that the LRU
	// list ends with the most recently added blocks at its front.
	for _, b := range order {
		if b.removed || found[b.id] != b {
			continue
		}
		st, err := os.Stat(t.blockPath(b.id))
		if err != nil || s.layout.Pages(b.Length) != len(b.pages) {
			delete(found, b.id)
			continue
		}
		for p := range b.pages {
			if end := int64(p)*s.layout.PageSize + s.layout.PageLen(b.Length, p); end > st.Size() {
				b.pages[p] = page{} // torn: the journal got ahead of the data
			}
		}
		b.pinned = s.pinned(b.Key.Dataset)
		if other := s.blocks[b.id]; other != nil {
			// The same block on two tiers (a crash mid-demotion): keep the
			// faster copy.
			delete(found, b.id)
			continue
		}
		s.blocks[b.id] = b
		b.elem = t.lru.PushFront(b)
		t.used += b.Length
	}
	// Block files no journal knows are leftovers of a crash: delete them.
	filepath.WalkDir(filepath.Join(t.Path, "blocks"), func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		var id digest
		raw, herr := hex.DecodeString(d.Name())
		copy(id[:], raw)
		if herr != nil || len(raw) != len(id) || found[id] == nil || s.blocks[id] != found[id] {
			os.Remove(p)
		}
		return nil
	})
	t.j, err = createJournal(jpath, func(yield func(journalRecord) bool) {
		for e := t.lru.Back(); e != nil; e = e.Prev() {
			for _, r := range e.Value.(*Block).records() {
				t.live++
				if !yield(r) {
					return
				}
			}
		}
	})
	return err
}

// records are the journal records that describe b.
func (b *Block) records() []journalRecord {
	recs := []journalRecord{{kind: b.addKind(), id: b.id, key: b.Key, length: b.Length}}
	for p, pg := range b.pages {
		if pg.present {
			recs = append(recs, journalRecord{kind: recPage, id: b.id, page: p, crc: pg.crc})
		}
	}
	return recs
}

// Close stops eviction and scrubbing and closes the journals. Blocks stay
// on disk.
func (s *Store) Close() error {
	var err error
	s.closeOnce.Do(func() {
		close(s.stop)
		s.cancel()
		s.loops.Wait()
		s.closeIdle()
		err = s.closeJournals()
	})
	return err
}

func (s *Store) closeJournals() error {
	var errs []error
	for _, t := range s.tiers {
		if t.j != nil {
			errs = append(errs, t.j.close())
		}
	}
	return errors.Join(errs...)
}

// Layout returns how the store cuts files.
func (s *Store) Layout() Layout { return s.layout }

// Lookup returns the cached block for key, or nil, and marks it used.
func (s *Store) Lookup(key block.ID) *Block {
	id := digestOf(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.blocks[id]
	if b != nil {
		b.tier.lru.MoveToFront(b.elem)
	}
	return b
}

// Create returns the block for key, reserving length bytes on the fastest
// tier that has room for it. ErrNoSpace means no tier can take it now.
func (s *Store) Create(key block.ID, length int64) (*Block, error) {
	return s.create(key, length, false)
}

func (s *Store) create(key block.ID, length int64, near bool) (*Block, error) {
	id := digestOf(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	if b := s.blocks[id]; b != nil {
		b.tier.lru.MoveToFront(b.elem)
		return b, nil
	}
	for _, t := range s.tiers {
		if t.used+length > t.Quota || near && float64(t.used+length) > t.Low*float64(t.Quota) {
			continue
		}
		if err := t.makeDir(id); err != nil {
			continue
		}
		b := &Block{Key: key, Length: length, id: id, tier: t, pages: make([]page, s.layout.Pages(length)), pinned: s.pinned(key.Dataset) && !near, near: near}
		if err := t.j.append(journalRecord{kind: b.addKind(), id: id, key: key, length: length}); err != nil {
			s.m.storeError(err)
			continue
		}
		t.live++
		t.used += length
		b.elem = t.lru.PushFront(b)
		s.blocks[id] = b
		if float64(t.used) > t.High*float64(t.Quota) {
			s.Kick()
		}
		return b, nil
	}
	if near {
		return nil, ErrNoSpace // near copies only take free room
	}
	s.Kick()
	s.m.noSpace()
	return nil, ErrNoSpace
}

// Present reports whether page p of b is stored.
func (s *Store) Present(b *Block, p int) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return !b.removed && p < len(b.pages) && b.pages[p].present
}

// Complete reports whether every page of b is stored.
func (s *Store) Complete(b *Block) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if b.removed {
		return false
	}
	for _, pg := range b.pages {
		if !pg.present {
			return false
		}
	}
	return true
}

// WritePage stores page p of b. The data must be the whole page. An error
// means the page is not stored; the caller still has the bytes to serve.
func (s *Store) WritePage(b *Block, p int, data []byte) error {
	if p < 0 || p >= len(b.pages) || int64(len(data)) != s.layout.PageLen(b.Length, p) {
		return fmt.Errorf("cache: page %d of %s: %d bytes do not fit the layout", p, b.Key, len(data))
	}
	b.writes.Lock()
	defer b.writes.Unlock()
	s.mu.Lock()
	if b.removed || b.moving {
		s.mu.Unlock()
		return ErrGone
	}
	if b.pages[p].present {
		s.mu.Unlock()
		return nil
	}
	b.busy++
	t := b.tier
	s.mu.Unlock()

	crc := crc32c(data)
	path := t.blockPath(b.id)
	before, after, err := regfile.WriteAtStat(path, data, int64(p)*s.layout.PageSize, 0o600)
	if errors.Is(err, fs.ErrNotExist) {
		// Its directory went away under the store (removed by hand):
		// make it again, once.
		s.mu.Lock()
		t.made[b.id[0]] = false
		derr := t.makeDir(b.id)
		s.mu.Unlock()
		if derr == nil {
			before, after, err = regfile.WriteAtStat(path, data, int64(p)*s.layout.PageSize, 0o600)
		}
	}
	if err == nil {
		err = t.j.append(journalRecord{kind: recPage, id: b.id, page: p, crc: crc})
	}

	s.mu.Lock()
	b.busy--
	if err != nil {
		s.mu.Unlock()
		s.m.storeError(err)
		if isNoSpace(err) {
			// The disk is fuller than the quota says: give the block up and
			// make room, rather than failing every later write too.
			s.drop(b, "no_space")
			s.Kick()
			return fmt.Errorf("%w: %v", ErrNoSpace, err)
		}
		return err
	}
	b.pages[p] = page{crc: crc, present: true, gen: b.pages[p].gen + 1}
	s.ownWriteLocked(b, p, stampOfStat(&before), stampOfStat(&after))
	t.live++
	s.mu.Unlock()
	return nil
}

func isNoSpace(err error) bool {
	return errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT)
}

// TierOf returns the name of the tier b is on.
func (s *Store) TierOf(b *Block) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return b.tier.Name
}

// TierStats describes one tier.
type TierStats struct {
	Name     string `json:"name"`
	Path     string `json:"path"`
	Capacity int64  `json:"capacity"`
	Used     int64  `json:"used"`
	Blocks   int    `json:"blocks"`
	// NearBlocks and NearBytes are the near copies among them.
	NearBlocks int   `json:"near_blocks"`
	NearBytes  int64 `json:"near_bytes"`
}

// Stats describes every tier.
func (s *Store) Stats() []TierStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]TierStats, len(s.tiers))
	for i, t := range s.tiers {
		out[i] = TierStats{Name: t.Name, Path: t.Path, Capacity: t.Quota, Used: t.used, Blocks: t.lru.Len()}
		for e := t.lru.Front(); e != nil; e = e.Next() {
			if b := e.Value.(*Block); b.near {
				out[i].NearBlocks++
				out[i].NearBytes += b.Length
			}
		}
	}
	return out
}

// drop removes b from the cache and deletes its file.
// The file goes while the lock is held: once the lock is released, the same
// block may be created again under the same name, and a late remove would
// delete the new file under a writer that thinks its pages are stored.
func (s *Store) drop(b *Block, reason string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if b.removed || (reason == "evict" && (b.busy > 0 || b.moving)) {
		return
	}
	t := b.tier
	s.forgetLocked(b)
	os.Remove(t.blockPath(b.id))
	if err := t.j.append(journalRecord{kind: recRemove, id: b.id}); err != nil {
		s.m.storeError(err)
	}
	s.m.evicted(t.Name, reason)
}

func (s *Store) forgetLocked(b *Block) {
	closeFiles(s.detachLocked(b))
	b.tier.live -= int64(len(b.records()))
	b.removed = true
	b.tier.lru.Remove(b.elem)
	b.tier.used -= b.Length
	if s.blocks[b.id] == b {
		delete(s.blocks, b.id)
	}
}

// Kick asks the evictor to check the watermarks now.
func (s *Store) Kick() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

func (s *Store) evictLoop() {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-s.kick:
		case <-tick.C:
		}
		s.evict()
	}
}
