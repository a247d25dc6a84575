package meta

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"iter"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/granary-cache/granary/internal/ufs"
)

// treeSource serves a fixed tree and counts what it is asked.
type treeSource struct {
	dirs         map[string][]ufs.FileInfo
	stats, lists atomic.Int32
	gate         chan struct{} // when set, List waits on it
}

func (s *treeSource) Stat(_ context.Context, name string) (ufs.FileInfo, error) {
	s.stats.Add(1)
	if _, ok := s.dirs[name]; ok {
		return ufs.FileInfo{Name: name, Mode: fs.ModeDir | 0o755}, nil
	}
	parent, base := split(name)
	for _, fi := range s.dirs[parent] {
		if fi.Name == base {
			fi.Name = name
			return fi, nil
		}
	}
	return ufs.FileInfo{}, ufs.NewError("stat", name, ufs.ClassNotExist, fs.ErrNotExist)
}

func (s *treeSource) List(_ context.Context, dir string) iter.Seq2[[]ufs.FileInfo, error] {
	return func(yield func([]ufs.FileInfo, error) bool) {
		s.lists.Add(1)
		if s.gate != nil {
			<-s.gate
		}
		ents, ok := s.dirs[dir]
		if !ok {
			yield(nil, ufs.NewError("list", dir, ufs.ClassNotExist, fs.ErrNotExist))
			return
		}
		for i := 0; i < len(ents); i += 2 { // pages of two
			if !yield(ents[i:min(i+2, len(ents))], nil) {
				return
			}
		}
	}
}

func newTree() *treeSource {
	file := func(name string, size int64) ufs.FileInfo {
		return ufs.FileInfo{Name: name, Size: size, Mode: 0o644, Version: fmt.Sprint("v", size), ModTime: time.Unix(1700000000, 5)}
	}
	return &treeSource{dirs: map[string][]ufs.FileInfo{
		"":      {{Name: "a", Mode: fs.ModeDir | 0o755}, file("top.txt", 1)},
		"a":     {file("z.jpg", 3), file("b.jpg", 2), {Name: "sub", Mode: fs.ModeDir | 0o755}, file("c.jpg", 4), file("d.jpg", 5)},
		"a/sub": {file("x", 9)},
	}}
}

func TestListingAnswersStat(t *testing.T) {
	src := newTree()
	c := New("d", 0)
	ctx := context.Background()
	d, err := c.List(ctx, src, "a")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for fi := range d.All() {
		names = append(names, fi.Name)
	}
	if strings.Join(names, ",") != "b.jpg,c.jpg,d.jpg,sub,z.jpg" {
		t.Errorf("listing = %v; want sorted names", names)
	}
	for _, name := range []string{"a/b.jpg", "a/z.jpg", "a/sub"} {
		fi, err := c.Stat(ctx, src, name)
		if err != nil || fi.Name != name {
			t.Errorf("Stat(%s) = %+v, %v", name, fi, err)
		}
	}
	if fi, _ := c.Stat(ctx, src, "a/d.jpg"); fi.Size != 5 || fi.Version != "v5" || fi.ModTime.UnixNano() != 1700000000000000005 {
		t.Errorf("attributes not kept: %+v", fi)
	}
	if _, err := c.Stat(ctx, src, "a/missing.jpg"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Stat of a name absent from the listing = %v; want not exist", err)
	}
	if n := src.stats.Load(); n != 0 {
		t.Errorf("%d stats reached the source after a listing; want 0", n)
	}
	// A Stat without the parent's listing fetches the listing: siblings,
	// and misses, are then answered from it.
	for range 3 {
		if fi, err := c.Stat(ctx, src, "top.txt"); err != nil || fi.Size != 1 {
			t.Errorf("Stat(top.txt) = %+v, %v", fi, err)
		}
		if _, err := c.Stat(ctx, src, "nope"); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("Stat(nope) = %v", err)
		}
	}
	if _, err := c.Stat(ctx, src, "missing-dir/x"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Stat under a missing directory = %v", err)
	}
	if n := src.stats.Load(); n != 0 {
		t.Errorf("%d stats reached the source; want 0", n)
	}
	for range 3 {
		c.List(ctx, src, "a")
	}
	if n := src.lists.Load(); n != 3 { // a, the root, missing-dir
		t.Errorf("listed %d times; want 3", n)
	}
	// The root itself has no parent listing: it is stat'ed once.
	c.Stat(ctx, src, "")
	c.Stat(ctx, src, "")
	if n := src.stats.Load(); n != 1 {
		t.Errorf("the root was stat'ed %d times; want 1", n)
	}
}

func TestInvalidateAndExpiry(t *testing.T) {
	src := newTree()
	ctx := context.Background()
	c := New("d", 0)
	c.List(ctx, src, "a")
	c.List(ctx, src, "a/sub")
	c.Stat(ctx, src, "")
	c.Invalidate("a")
	if dirs, _, singles := c.Len(); dirs != 0 || singles != 1 {
		t.Errorf("after Invalidate(a): %d dirs, %d singles; want a, a/sub and the parent listing gone", dirs, singles)
	}
	c.Invalidate("")
	if dirs, _, singles := c.Len(); dirs+singles != 0 {
		t.Error("Invalidate of the root must forget everything")
	}

	short := New("d", time.Nanosecond)
	short.List(ctx, src, "a")
	time.Sleep(time.Millisecond)
	short.List(ctx, src, "a")
	if n := src.lists.Load(); n != 4 { // 2 above, 2 here
		t.Errorf("an expired listing was not fetched again (%d lists)", n)
	}
}

func TestListMerged(t *testing.T) {
	src := newTree()
	src.gate = make(chan struct{})
	c := New("d", 0)
	var merged atomic.Int32
	c.Merged = func() { merged.Add(1) }
	var wg sync.WaitGroup
	for range 32 {
		wg.Go(func() {
			if _, err := c.List(context.Background(), src, "a"); err != nil {
				t.Error(err)
			}
		})
	}
	// Let every caller join the one listing before it completes.
	for deadline := time.Now().Add(10 * time.Second); c.lists.Waiting("a") < 31 && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	close(src.gate)
	wg.Wait()
	if n := src.lists.Load(); n != 1 {
		t.Errorf("32 concurrent listings reached the source %d times; want 1", n)
	}
	if _, err := c.List(context.Background(), src, "missing"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("List(missing) = %v", err)
	}
}

// BenchmarkMemoryPerEntry reports the heap used per cached file after
// caching 1M entries in 1,000 directories (goal: at most 300 bytes).
func BenchmarkMemoryPerEntry(b *testing.B) {
	const dirs, perDir = 1000, 1000
	for b.Loop() {
		src := &treeSource{dirs: map[string][]ufs.FileInfo{}}
		c := New("d", 0)
		runtime.GC()
		var before runtime.MemStats
		runtime.ReadMemStats(&before)
		for d := range dirs {
			dir := fmt.Sprintf("train/n%08d", d)
			page := make([]ufs.FileInfo, perDir)
			for i := range page {
				page[i] = ufs.FileInfo{Name: fmt.Sprintf("n%08d_%06d.JPEG", d, i), Size: 110 << 10, Mode: 0o644,
					Version: fmt.Sprintf("%x-%x", 110<<10+i, 1700000000000000000+int64(i)), ModTime: time.Unix(1700000000, int64(i))}
			}
			src.dirs[dir] = page
			c.List(context.Background(), src, dir)
			src.dirs[dir] = nil // only the cache holds them now
		}
		runtime.GC()
		var after runtime.MemStats
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/(dirs*perDir), "bytes/entry")
		runtime.KeepAlive(c)
	}
}
