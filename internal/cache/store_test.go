package cache

import (
	"bytes"
	"errors"
	"fmt"
	"github.com/granary-cache/granary/internal/block"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	dto "github.com/prometheus/client_model/go"
)

const (
	testPage  = 4 << 10
	testBlock = 4 * testPage
)

var testLayout = Layout{BlockSize: testBlock, PageSize: testPage}

func tierCfg(name, dir string, quota int64) TierConfig {
	return TierConfig{Name: name, Path: dir, Quota: quota, High: 0.95, Low: 0.70}
}

func openStore(t *testing.T, tiers ...TierConfig) *Store {
	t.Helper()
	s, err := Open(Config{Tiers: tiers, Layout: testLayout, Pinned: func(ds string) bool { return ds == "pinned" }})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func key(ds string, i int) block.ID {
	return block.ID{Dataset: ds, Path: fmt.Sprintf("dir/file-%d", i), Version: "v1", BlockSize: testBlock, Index: 0}
}

func pageData(k block.ID, p int, n int64) []byte {
	b := bytes.Repeat([]byte(fmt.Sprintf("%s/%d|", k, p)), int(n)/8+1)
	return b[:n]
}

// fill stores every page of a new block.
func fill(t *testing.T, s *Store, k block.ID, length int64) *Block {
	t.Helper()
	b, err := s.Create(k, length)
	if err != nil {
		t.Fatalf("Create(%s): %v", k, err)
	}
	for p := range s.layout.Pages(length) {
		if err := s.WritePage(b, p, pageData(k, p, s.layout.PageLen(length, p))); err != nil {
			t.Fatalf("WritePage(%s, %d): %v", k, p, err)
		}
	}
	return b
}

func readBlock(t *testing.T, s *Store, b *Block) []byte {
	t.Helper()
	f, err := s.Open(b)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := s.Verify(f, 0, len(b.pages)-1); err != nil {
		t.Fatal(err)
	}
	data, err := io.ReadAll(f)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func wantBlock(k block.ID, length int64) []byte {
	var out []byte
	for p := range testLayout.Pages(length) {
		out = append(out, pageData(k, p, testLayout.PageLen(length, p))...)
	}
	return out
}

func TestLayout(t *testing.T) {
	l := Layout{BlockSize: 64 << 20, PageSize: 4 << 20}
	for _, c := range []struct {
		size, blocks, lastLen int64
		lastPages             int
	}{
		{0, 0, 0, 0}, {1, 1, 1, 1}, {4 << 20, 1, 4 << 20, 1}, {4<<20 + 1, 1, 4<<20 + 1, 2},
		{64 << 20, 1, 64 << 20, 16}, {130 << 20, 3, 2 << 20, 1},
	} {
		if got := l.Blocks(c.size); got != c.blocks {
			t.Errorf("Blocks(%d) = %d; want %d", c.size, got, c.blocks)
		}
		if c.blocks > 0 {
			last := l.BlockLen(c.size, c.blocks-1)
			if last != c.lastLen || l.Pages(last) != c.lastPages {
				t.Errorf("size %d: last block %d bytes, %d pages; want %d, %d", c.size, last, l.Pages(last), c.lastLen, c.lastPages)
			}
		}
	}
	if (Layout{BlockSize: 10, PageSize: 4}).Check() == nil {
		t.Error("a block size that is not a multiple of the page size was accepted")
	}
	// A changed version or index is another block, in another file.
	k := key("ds", 1)
	k2, k3, k4 := k, k, k
	k2.Version, k3.Index, k4.BlockSize = "v2", 1, 2*testBlock
	if digestOf(k) == digestOf(k2) || digestOf(k) == digestOf(k3) || digestOf(k) == digestOf(k4) || digestOf(k) != digestOf(key("ds", 1)) {
		t.Error("block ids do not follow the key")
	}
}

func TestStoreRoundTripAndRestart(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, tierCfg("MEM", dir, 1<<20))
	full := fill(t, s, key("ds", 1), testBlock)
	short := fill(t, s, key("ds", 2), testPage+10) // a short last page
	partial, _ := s.Create(key("ds", 3), testBlock)
	s.WritePage(partial, 2, pageData(key("ds", 3), 2, testPage))

	if got := readBlock(t, s, full); !bytes.Equal(got, wantBlock(key("ds", 1), testBlock)) {
		t.Fatal("full block reads back wrong")
	}
	if !s.Complete(full) || !s.Complete(short) || s.Complete(partial) || !s.Present(partial, 2) || s.Present(partial, 1) {
		t.Fatal("page presence is wrong")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = openStore(t, tierCfg("MEM", dir, 1<<20))
	defer s.Close()
	for _, c := range []struct {
		k      block.ID
		length int64
	}{{key("ds", 1), testBlock}, {key("ds", 2), testPage + 10}} {
		b := s.Lookup(c.k)
		if b == nil || !s.Complete(b) {
			t.Fatalf("%s not reloaded complete", c.k)
		}
		if got := readBlock(t, s, b); !bytes.Equal(got, wantBlock(c.k, c.length)) {
			t.Fatalf("%s reads back wrong after restart", c.k)
		}
	}
	p := s.Lookup(key("ds", 3))
	if p == nil || !s.Present(p, 2) || s.Present(p, 0) {
		t.Fatal("partial block not reloaded as it was")
	}
	if st := s.Stats()[0]; st.Blocks != 3 || st.Used != 2*testBlock+testPage+10 {
		t.Errorf("stats after restart: %+v", st)
	}
}

// TestBlockDirectoryRemoved: the store remembers which block directories
// it made; one removed under it (by hand) is made again at the next write,
// which then succeeds.
func TestBlockDirectoryRemoved(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, tierCfg("MEM", dir, 1<<20))
	defer s.Close()
	fill(t, s, key("ds", 1), testBlock)
	k := key("ds", 2)
	b, err := s.Create(k, testBlock) // its directory made now
	if err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(filepath.Join(dir, "blocks")); err != nil {
		t.Fatal(err)
	}
	for p := range s.layout.Pages(testBlock) {
		if err := s.WritePage(b, p, pageData(k, p, testPage)); err != nil {
			t.Fatalf("WritePage %d after the directory was removed: %v", p, err)
		}
	}
	if got := readBlock(t, s, b); !bytes.Equal(got, wantBlock(k, testBlock)) {
		t.Fatal("a block written after its directory was removed reads back wrong")
	}
}

// TestCorruptPageDetected: a byte flipped on disk is caught by the CRC on the
// first read after a restart, and the page is dropped to be fetched again.
func TestCorruptPageDetected(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, tierCfg("SSD", dir, 1<<20))
	k := key("ds", 1)
	b := fill(t, s, k, testBlock)
	path := s.tiers[0].blockPath(b.id)
	s.Close()

	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	one := make([]byte, 1)
	f.ReadAt(one, testPage+100)
	f.WriteAt([]byte{one[0] ^ 0x40}, testPage+100)
	f.Close()

	m := NewMetrics(nil)
	s, err = Open(Config{Tiers: []TierConfig{tierCfg("SSD", dir, 1<<20)}, Layout: testLayout, Metrics: m})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	b = s.Lookup(k)
	bf, err := s.Open(b)
	if err != nil {
		t.Fatal(err)
	}
	defer bf.Close()
	if err := s.Verify(bf, 0, 0); err != nil {
		t.Errorf("intact page 0: %v", err)
	}
	if err := s.Verify(bf, 1, 1); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Verify of the flipped page = %v; want ErrCorrupt", err)
	}
	if s.Present(b, 1) || !s.Present(b, 0) {
		t.Error("the corrupt page must be dropped and only it")
	}
	if got := counterValue(m.corrupted); got != 1 {
		t.Errorf("corrupt counter = %v", got)
	}
	// Refetched, it is served again.
	if err := s.WritePage(b, 1, pageData(k, 1, testPage)); err != nil {
		t.Fatal(err)
	}
	if got := readBlock(t, s, b); !bytes.Equal(got, wantBlock(k, testBlock)) {
		t.Error("block wrong after the page was stored again")
	}
}

// TestTornState: a journal that got ahead of its data (a page recorded but
// its bytes not in the file), a torn journal tail and stray block files are
// all cleaned at start.
func TestTornState(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, tierCfg("SSD", dir, 1<<20))
	b := fill(t, s, key("ds", 1), testBlock)
	fill(t, s, key("ds", 2), testPage)
	path := s.tiers[0].blockPath(b.id)
	s.Close()

	if err := os.Truncate(path, testPage*2+5); err != nil { // pages 2 and 3 torn
		t.Fatal(err)
	}
	j, _ := os.OpenFile(filepath.Join(dir, "journal"), os.O_WRONLY|os.O_APPEND, 0)
	j.Write([]byte{200, 0, 0, 0, 1, 2, 3}) // half a record
	j.Close()
	stray := filepath.Join(dir, "blocks", "ab", "abababababababababababababababab")
	os.MkdirAll(filepath.Dir(stray), 0o700)
	os.WriteFile(stray, []byte("leftover"), 0o600)

	s = openStore(t, tierCfg("SSD", dir, 1<<20))
	defer s.Close()
	b = s.Lookup(key("ds", 1))
	if b == nil || !s.Present(b, 0) || !s.Present(b, 1) || s.Present(b, 2) || s.Present(b, 3) {
		t.Fatal("torn pages must be dropped and intact ones kept")
	}
	if s.Lookup(key("ds", 2)) == nil {
		t.Error("a block recorded before the torn tail was lost")
	}
	if _, err := os.Stat(stray); !os.IsNotExist(err) {
		t.Error("a stray block file was not deleted")
	}
	// The journal was rewritten: appending works and the next start agrees.
	fill(t, s, key("ds", 9), testPage)
}

func TestEvictionLRU(t *testing.T) {
	s := openStore(t, tierCfg("SSD", t.TempDir(), 10*testBlock))
	defer s.Close()
	for i := range 9 { // up to 90%: below the high watermark
		fill(t, s, key("ds", i), testBlock)
	}
	s.Lookup(key("ds", 0)) // recently used: must survive
	fill(t, s, key("ds", 9), testBlock)
	s.evict() // waits for a pass the last Create may have started
	st := s.Stats()[0]
	if st.Used > 7*testBlock {
		t.Errorf("used %d after eviction; want at most the low watermark %d", st.Used, 7*testBlock)
	}
	if s.Lookup(key("ds", 0)) == nil {
		t.Error("the most recently used block was evicted")
	}
	if s.Lookup(key("ds", 1)) != nil {
		t.Error("the least recently used block was kept")
	}
	if s.Lookup(key("ds", 9)) == nil {
		t.Error("the newest block was evicted")
	}
}

func TestDemotionAndPinning(t *testing.T) {
	mem, ssd := t.TempDir(), t.TempDir()
	s := openStore(t, tierCfg("MEM", mem, 4*testBlock), tierCfg("SSD", ssd, 100*testBlock))
	defer s.Close()
	fill(t, s, key("pinned", 0), testBlock)
	for i := 1; i < 4; i++ {
		fill(t, s, key("ds", i), testBlock)
	}
	s.evict()
	if got := s.TierOf(s.Lookup(key("pinned", 0))); got != "MEM" {
		t.Errorf("a pinned block moved to %s", got)
	}
	demoted := 0
	for i := 1; i < 4; i++ {
		b := s.Lookup(key("ds", i))
		if b == nil {
			t.Fatalf("block %d dropped: MEM must demote before dropping", i)
		}
		if s.TierOf(b) == "SSD" {
			demoted++
			if got := readBlock(t, s, b); !bytes.Equal(got, wantBlock(key("ds", i), testBlock)) {
				t.Errorf("demoted block %d reads back wrong", i)
			}
		}
	}
	if demoted == 0 {
		t.Fatal("nothing was demoted")
	}
	if entries, _ := filepath.Glob(filepath.Join(mem, "blocks", "*", "*")); len(entries) != 4-demoted {
		t.Errorf("%d files left on MEM; want %d", len(entries), 4-demoted)
	}
	// Pinned blocks are never chosen, even when nothing else is left.
	s2 := openStore(t, tierCfg("SSD", t.TempDir(), 2*testBlock))
	defer s2.Close()
	fill(t, s2, key("pinned", 1), testBlock)
	fill(t, s2, key("pinned", 2), testBlock)
	s2.evict()
	if s2.Lookup(key("pinned", 1)) == nil || s2.Lookup(key("pinned", 2)) == nil {
		t.Error("a pinned block was evicted")
	}
	// Demotion survives a restart: the block is found on SSD.
	s.Close()
	s = openStore(t, tierCfg("MEM", mem, 4*testBlock), tierCfg("SSD", ssd, 100*testBlock))
	defer s.Close()
	for i := 1; i < 4; i++ {
		if b := s.Lookup(key("ds", i)); b == nil || !s.Complete(b) {
			t.Errorf("block %d lost across a restart after demotion", i)
		}
	}
}

func TestNoSpace(t *testing.T) {
	s := openStore(t, tierCfg("MEM", t.TempDir(), testBlock/2))
	defer s.Close()
	if _, err := s.Create(key("ds", 1), testBlock); !errors.Is(err, ErrNoSpace) {
		t.Errorf("Create of a block larger than the quota = %v; want ErrNoSpace", err)
	}
}

// TestDiskFull mounts a tmpfs far smaller than the tier's quota: writes fail
// with ENOSPC, which the store reports as ErrNoSpace and survives.
func TestDiskFull(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting a tmpfs needs root")
	}
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=64k"); err != nil {
		t.Skipf("cannot mount a tmpfs: %v", err)
	}
	t.Cleanup(func() { syscall.Unmount(dir, syscall.MNT_DETACH) })
	m := NewMetrics(nil)
	s, err := Open(Config{Tiers: []TierConfig{tierCfg("MEM", dir, 100*testBlock)}, Layout: testLayout, Metrics: m})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var sawNoSpace bool
	for i := 0; i < 10 && !sawNoSpace; i++ {
		k := key("ds", i)
		b, err := s.Create(k, testBlock)
		if err != nil {
			sawNoSpace = errors.Is(err, ErrNoSpace)
			break
		}
		for p := range 4 {
			if err := s.WritePage(b, p, pageData(k, p, testPage)); err != nil {
				if !errors.Is(err, ErrNoSpace) {
					t.Fatalf("WritePage on a full disk = %v; want ErrNoSpace", err)
				}
				sawNoSpace = true
				break
			}
		}
	}
	if !sawNoSpace {
		t.Fatal("a 64 KiB tmpfs never filled")
	}
	if counterValue(m.errs.WithLabelValues("no_space")) == 0 {
		t.Error("no_space not counted")
	}
}

func counterValue(c interface{ Write(*dto.Metric) error }) float64 {
	var m dto.Metric
	c.Write(&m)
	return m.GetCounter().GetValue()
}
