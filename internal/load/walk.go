// Package load warms a dataset across the cluster: `granary load` lists the
// tree through the workers (so that the listing is cached too), hands each
// owner worker its own share of the blocks, and reports progress while the
// workers fetch them from the UFS in parallel. The bytes never pass through
// the loading process. See wire/load.go for the protocol.
package load

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"slices"
	"strings"
	"sync"

	"github.com/granary-cache/granary/internal/client"
	"github.com/granary-cache/granary/internal/ufs"
)

// file is one file to load.
type file struct {
	path string // inside the dataset
	info ufs.FileInfo
}

// hasMeta reports whether a path segment is a glob pattern.
func hasMeta(s string) bool { return strings.ContainsAny(s, "*?[\\") }

// splitTarget splits "/<dataset>/<path-or-glob>" into the dataset and the
// pattern's segments. Patterns follow path.Match within a segment, and a
// segment "**" matches any number of directories.
func splitTarget(target string) (ds string, segs []string, err error) {
	t := strings.Trim(target, "/")
	if t == "" {
		return "", nil, fmt.Errorf("%q names no dataset: give /<dataset>/<path-or-glob>", target)
	}
	parts := strings.Split(t, "/")
	ds = parts[0]
	if hasMeta(ds) {
		return "", nil, fmt.Errorf("%q: the dataset name cannot be a pattern", target)
	}
	for _, p := range parts[1:] {
		switch {
		case p == "" || p == ".":
			continue
		case p == "..":
			return "", nil, fmt.Errorf("%q: .. is not allowed", target)
		case p != "**" && hasMeta(p):
			if _, err := path.Match(p, ""); err != nil {
				return "", nil, fmt.Errorf("%q: bad pattern %q: %w", target, p, err)
			}
		}
		segs = append(segs, p)
	}
	return ds, segs, nil
}

// walker lists directories through the client, several at a time.
type walker struct {
	c    *client.Client
	ds   string
	sem  chan struct{}
	skip map[string]bool // directories not walked (Options.Skip)

	mu    sync.Mutex
	files map[string]file // by path: a file matched twice is loaded once
	added int             // files matched, twice if twice
	dirs  int
	errs  []error
}

func newWalker(c *client.Client, ds string, parallel int, skip []string) *walker {
	w := &walker{c: c, ds: ds, sem: make(chan struct{}, max(parallel, 1)), files: map[string]file{}, skip: map[string]bool{}}
	for _, d := range skip {
		if d = strings.Trim(path.Clean("/"+d), "/"); d != "" {
			w.skip[d] = true
		}
	}
	return w
}

func (w *walker) fail(err error) {
	w.mu.Lock()
	w.errs = append(w.errs, err)
	w.mu.Unlock()
}

func (w *walker) add(p string, fi ufs.FileInfo) {
	w.mu.Lock()
	w.files[p] = file{path: p, info: fi}
	w.added++
	w.mu.Unlock()
}

func (w *walker) list(ctx context.Context, dir string) ([]ufs.FileInfo, error) {
	select {
	case w.sem <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	defer func() { <-w.sem }()
	entries, err := w.c.List(ctx, "/"+w.ds+"/"+dir)
	w.mu.Lock()
	w.dirs++
	w.mu.Unlock()
	return entries, err
}

// match finds what segs match under dir (a directory of the dataset, ""
// for its root), in parallel. Listings go through the client's metadata
// cache, so a directory that two branches of a pattern visit is listed once.
// literal says that no pattern came before: a plain name that is not there
// is then an error; after a pattern (/ds/*/labels.json), it only does not
// match in that directory.
func (w *walker) match(ctx context.Context, dir string, segs []string, literal bool, wg *sync.WaitGroup) {
	if w.skip[dir] {
		return
	}
	if len(segs) == 0 {
		w.tree(ctx, dir, wg)
		return
	}
	seg := segs[0]
	switch {
	case seg == "**" && len(segs) == 1:
		w.tree(ctx, dir, wg)
	case seg == "**":
		// Zero directories, or one more and "**" again.
		wg.Go(func() { w.match(ctx, dir, segs[1:], false, wg) })
		entries, err := w.list(ctx, dir)
		if err != nil {
			w.fail(err)
			return
		}
		for _, e := range entries {
			if e.IsDir() {
				p := join(dir, e.Name)
				wg.Go(func() { w.match(ctx, p, segs, false, wg) })
			}
		}
	case !hasMeta(seg):
		// A plain name: no need to list dir to find it.
		p := join(dir, seg)
		fi, err := w.c.Stat(ctx, "/"+w.ds+"/"+p)
		switch {
		case errors.Is(err, fs.ErrNotExist) && !literal:
			return
		case errors.Is(err, fs.ErrNotExist):
			w.fail(fmt.Errorf("/%s/%s: no such file or directory", w.ds, p))
			return
		case err != nil:
			w.fail(err)
			return
		}
		w.matched(ctx, p, fi, segs[1:], literal, wg)
	default:
		entries, err := w.list(ctx, dir)
		if err != nil {
			w.fail(err)
			return
		}
		for _, e := range entries {
			if ok, _ := path.Match(seg, e.Name); ok {
				w.matched(ctx, join(dir, e.Name), e, segs[1:], false, wg)
			}
		}
	}
}

// matched handles an entry p that matched its segment; rest is what must
// still match below it.
func (w *walker) matched(ctx context.Context, p string, fi ufs.FileInfo, rest []string, literal bool, wg *sync.WaitGroup) {
	switch {
	case !fi.IsDir() && len(rest) == 0:
		w.add(p, fi)
	case fi.IsDir():
		wg.Go(func() { w.match(ctx, p, rest, literal, wg) })
	}
}

// tree adds every file under dir.
func (w *walker) tree(ctx context.Context, dir string, wg *sync.WaitGroup) {
	if w.skip[dir] {
		return
	}
	entries, err := w.list(ctx, dir)
	if err != nil {
		w.fail(err)
		return
	}
	for _, e := range entries {
		p := join(dir, e.Name)
		if e.IsDir() {
			wg.Go(func() { w.tree(ctx, p, wg) })
		} else {
			w.add(p, e)
		}
	}
}

func join(dir, name string) string {
	if dir == "" {
		return name
	}
	return dir + "/" + name
}

// expand lists what the targets name in dataset ds, one target after the
// other (each in parallel), except the directories of skip. A target with a pattern that matches no file is
// an error that names it.
func expand(ctx context.Context, c *client.Client, ds string, patterns [][]string, parallel int, skip []string) ([]file, int, error) {
	w := newWalker(c, ds, parallel, skip)
	// The root's own attributes are in no listing: a mount asks for them
	// first, so they are warmed too (an error here shows again, with more
	// context, when the root is listed).
	c.Stat(ctx, "/"+ds+"/")
	for _, segs := range patterns {
		before := w.added
		var wg sync.WaitGroup
		wg.Go(func() { w.match(ctx, "", segs, true, &wg) })
		wg.Wait()
		if glob := slices.ContainsFunc(segs, func(s string) bool { return s == "**" || hasMeta(s) }); glob && w.added == before && len(w.errs) == 0 {
			w.fail(fmt.Errorf("/%s/%s matches no file", ds, strings.Join(segs, "/")))
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, w.dirs, err
	}
	if len(w.errs) > 0 {
		return nil, w.dirs, errors.Join(w.errs...)
	}
	out := make([]file, 0, len(w.files))
	for _, f := range w.files {
		out = append(out, f)
	}
	return out, w.dirs, nil
}
