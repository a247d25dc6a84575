// Package meta caches the metadata of one dataset — attributes and directory
// listings — for workers and clients alike, under the dataset's
// metadata_sync rule: kept until an explicit refresh ("never"), or trusted
// for an interval.
//
// Entries are grouped by directory: a listing, fetched once, answers Stat for
// every child (including "no such file"), so walking a tree costs the UFS one
// request per directory page, never one per file. Entries are stored compactly
// (a training set has millions of files) and listings are immutable once
// cached, so readers share them without copying.
package meta

import (
	"context"
	"io/fs"
	"iter"
	"path"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/granary-cache/granary/internal/flight"
	"github.com/granary-cache/granary/internal/ufs"
)

// Source is where metadata comes from on a miss: the UFS (in a worker) or the
// owning worker (in a client).
type Source interface {
	Stat(ctx context.Context, name string) (ufs.FileInfo, error)
	List(ctx context.Context, dir string) iter.Seq2[[]ufs.FileInfo, error]
}

// entry is a FileInfo in about half the memory: times as Unix nanoseconds,
// mode as 32 bits, and no copy of the directory's path.
type entry struct {
	name    string
	version string
	size    int64
	mtime   int64
	mode    uint32
}

func pack(fi ufs.FileInfo) entry {
	e := entry{name: fi.Name, version: fi.Version, size: fi.Size, mode: uint32(fi.Mode)}
	if !fi.ModTime.IsZero() {
		e.mtime = fi.ModTime.UnixNano()
	}
	return e
}

func (e *entry) info(name string) ufs.FileInfo {
	fi := ufs.FileInfo{Name: name, Size: e.size, Mode: fs.FileMode(e.mode), Version: e.version}
	if e.mtime != 0 {
		fi.ModTime = time.Unix(0, e.mtime)
	}
	return fi
}

// Dir is a cached directory listing, sorted by name. It never changes; a
// refresh replaces it.
type Dir struct {
	entries []entry
	at      time.Time
}

// Len is the number of entries.
func (d *Dir) Len() int { return len(d.entries) }

// At returns entry i, named by its base name.
func (d *Dir) At(i int) ufs.FileInfo { return d.entries[i].info(d.entries[i].name) }

// All yields every entry in name order.
func (d *Dir) All() iter.Seq[ufs.FileInfo] {
	return func(yield func(ufs.FileInfo) bool) {
		for i := range d.entries {
			if !yield(d.At(i)) {
				return
			}
		}
	}
}

func (d *Dir) find(name string) (*entry, bool) {
	i, ok := slices.BinarySearchFunc(d.entries, name, func(e entry, n string) int { return strings.Compare(e.name, n) })
	if !ok {
		return nil, false
	}
	return &d.entries[i], true
}

// single is the result of a Stat made without the parent's listing, a
// missing path included.
type single struct {
	e       entry
	missing bool
	at      time.Time
}

// Cache is the metadata cache of one dataset. It is safe for concurrent use.
type Cache struct {
	dataset string        // for error messages
	ttl     time.Duration // 0: never expires

	mu      sync.RWMutex
	dirs    map[string]*Dir
	singles map[string]*single

	lists flight.Group[string, *Dir]
	stats flight.Group[string, ufs.FileInfo]

	// Merged counts requests that joined one already in flight.
	Merged func()
}

// New returns the cache of a dataset whose entries expire after ttl (0: never).
func New(dataset string, ttl time.Duration) *Cache {
	return &Cache{dataset: dataset, ttl: ttl, dirs: map[string]*Dir{}, singles: map[string]*single{}}
}

func (c *Cache) fresh(at time.Time) bool { return c.ttl == 0 || time.Since(at) < c.ttl }

func (c *Cache) merged(shared bool) {
	if shared && c.Merged != nil {
		c.Merged()
	}
}

// Stat returns the attributes of name from the parent's listing, fetching
// the listing on a miss: a training job reads every file of a directory, so
// one listing (a request per thousand entries) is far cheaper than a stat
// per file — on CephFS, far fewer MDS requests. Only when the parent cannot
// be listed is name stat'ed by itself.
func (c *Cache) Stat(ctx context.Context, src Source, name string) (ufs.FileInfo, error) {
	if fi, err, ok := c.Cached(name); ok {
		return fi, err
	}
	if name != "" {
		_, err := c.List(ctx, src, Parent(name))
		if err == nil {
			if fi, err, ok := c.Cached(name); ok {
				return fi, err
			}
		}
		switch ufs.ClassOf(err) {
		case ufs.ClassNotExist, ufs.ClassInvalid: // no such parent, or a file
			return ufs.FileInfo{}, c.notExist(name)
		case ufs.ClassCanceled:
			return ufs.FileInfo{}, err
		}
	}
	fi, shared, err := c.stats.Do(ctx, name, func(ctx context.Context) (ufs.FileInfo, error) {
		fi, err := src.Stat(ctx, name)
		if err == nil || ufs.ClassOf(err) == ufs.ClassNotExist {
			s := &single{e: pack(fi), missing: err != nil, at: time.Now()}
			c.mu.Lock()
			c.singles[name] = s
			c.mu.Unlock()
		}
		if err == nil {
			fi.Name = name
		}
		return fi, err
	})
	c.merged(shared)
	return fi, err
}

// Cached answers Stat from the cache alone; ok is false on a miss.
func (c *Cache) Cached(name string) (fi ufs.FileInfo, err error, ok bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if name != "" {
		parent, base := split(name)
		if d := c.dirs[parent]; d != nil && c.fresh(d.at) {
			if e, found := d.find(base); found {
				return e.info(name), nil, true
			}
			return ufs.FileInfo{}, c.notExist(name), true
		}
	}
	if s := c.singles[name]; s != nil && c.fresh(s.at) {
		if s.missing {
			return ufs.FileInfo{}, c.notExist(name), true
		}
		return s.e.info(name), nil, true
	}
	return ufs.FileInfo{}, nil, false
}

func (c *Cache) notExist(name string) error {
	return &ufs.Error{Op: "stat", Dataset: c.dataset, Path: name, Class: ufs.ClassNotExist, Err: syscall.ENOENT}
}

// List returns the listing of dir, fetching the whole of it from src on a miss.
func (c *Cache) List(ctx context.Context, src Source, dir string) (*Dir, error) {
	c.mu.RLock()
	d := c.dirs[dir]
	c.mu.RUnlock()
	if d != nil && c.fresh(d.at) {
		return d, nil
	}
	d, shared, err := c.lists.Do(ctx, dir, func(ctx context.Context) (*Dir, error) {
		var entries []entry
		for page, err := range src.List(ctx, dir) {
			if err != nil {
				return nil, err
			}
			for _, fi := range page {
				entries = append(entries, pack(fi))
			}
		}
		return c.putDir(dir, entries), nil
	})
	c.merged(shared)
	return d, err
}

// putDir caches a listing and returns it.
func (c *Cache) putDir(dir string, entries []entry) *Dir {
	slices.SortFunc(entries, func(a, b entry) int { return strings.Compare(a.name, b.name) })
	entries = slices.CompactFunc(entries, func(a, b entry) bool { return a.name == b.name })
	d := &Dir{entries: slices.Clip(entries), at: time.Now()}
	c.mu.Lock()
	c.dirs[dir] = d
	// Singles of its children are now redundant.
	for _, e := range entries {
		delete(c.singles, path.Join(dir, e.name))
	}
	c.mu.Unlock()
	return d
}

// Invalidate forgets what is cached about name and everything below it, and
// the listing of its parent (which holds name's attributes). "" forgets all.
func (c *Cache) Invalidate(name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if name == "" {
		c.dirs = map[string]*Dir{}
		c.singles = map[string]*single{}
		return
	}
	parent, _ := split(name)
	delete(c.dirs, parent)
	prefix := name + "/"
	for k := range c.dirs {
		if k == name || strings.HasPrefix(k, prefix) {
			delete(c.dirs, k)
		}
	}
	for k := range c.singles {
		if k == name || strings.HasPrefix(k, prefix) {
			delete(c.singles, k)
		}
	}
}

// Len returns the number of cached listings and single entries.
func (c *Cache) Len() (dirs, entries, singles int) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	for _, d := range c.dirs {
		entries += len(d.entries)
	}
	return len(c.dirs), entries, len(c.singles)
}

// split returns the parent directory and base name of a cleaned path.
func split(name string) (string, string) {
	i := strings.LastIndexByte(name, '/')
	if i < 0 {
		return "", name
	}
	return name[:i], name[i+1:]
}

// Parent returns the directory that holds name ("" for a top-level name).
func Parent(name string) string {
	p, _ := split(name)
	return p
}
