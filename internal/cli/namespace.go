package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"iter"

	"github.com/granary-cache/granary/internal/client"
	"github.com/granary-cache/granary/internal/dataset"
	"github.com/granary-cache/granary/internal/ufs"
)

// namespace is what the file commands read: through the cache (the
// default) or, with --direct, straight from the UFS.
type namespace interface {
	Stat(ctx context.Context, p string) (ufs.FileInfo, error)
	List(ctx context.Context, p string) iter.Seq2[[]ufs.FileInfo, error]
	Copy(ctx context.Context, w io.Writer, p string, off, n int64) error
	Close() error
}

// openNamespace opens the namespace the flags ask for.
func (g *globals) openNamespace() (namespace, error) {
	if !g.direct {
		if err := g.discoverConfig(); err != nil {
			return nil, err
		}
	}
	cfg, err := g.loadConfig()
	if err != nil {
		return nil, err
	}
	if len(cfg.Datasets) == 0 {
		return nil, errors.New("no datasets: give --config FILE or --dataset NAME=URI")
	}
	if g.direct {
		set, err := dataset.OpenAll(cfg, nil)
		if err != nil {
			return nil, err
		}
		return directNamespace{set}, nil
	}
	c, err := client.New(cfg)
	if err != nil {
		return nil, err
	}
	return cachedNamespace{c}, nil
}

// cachedNamespace reads through the workers.
type cachedNamespace struct{ c *client.Client }

func (n cachedNamespace) Stat(ctx context.Context, p string) (ufs.FileInfo, error) {
	return n.c.Stat(ctx, p)
}

func (n cachedNamespace) List(ctx context.Context, p string) iter.Seq2[[]ufs.FileInfo, error] {
	return func(yield func([]ufs.FileInfo, error) bool) {
		entries, err := n.c.List(ctx, p)
		yield(entries, err)
	}
}

func (n cachedNamespace) Copy(ctx context.Context, w io.Writer, p string, off, length int64) error {
	f, err := n.c.Open(ctx, p)
	if err != nil {
		return err
	}
	end := f.Size()
	if length >= 0 {
		end = min(end, off+length)
	}
	// Several blocks per read: ReadAt fetches them in parallel.
	buf := make([]byte, min(max(end-off, 0), 4*n.c.Layout().BlockSize, 256<<20))
	for off < end {
		chunk := buf[:min(int64(len(buf)), end-off)]
		k, err := f.ReadAtContext(ctx, chunk, off)
		if k > 0 {
			if _, werr := w.Write(chunk[:k]); werr != nil {
				return werr
			}
		}
		off += int64(k)
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func (n cachedNamespace) Close() error { return n.c.Close() }

// directNamespace reads the UFS without the cache.
type directNamespace struct{ set *dataset.Set }

func (n directNamespace) Stat(ctx context.Context, p string) (ufs.FileInfo, error) {
	d, rel, err := n.set.Resolve(p)
	if err != nil {
		return ufs.FileInfo{}, err
	}
	if d == nil {
		return ufs.FileInfo{Mode: fs.ModeDir | 0o555}, nil
	}
	return d.FS.Stat(ctx, rel)
}

func (n directNamespace) List(ctx context.Context, p string) iter.Seq2[[]ufs.FileInfo, error] {
	d, rel, err := n.set.Resolve(p)
	if err != nil {
		return func(yield func([]ufs.FileInfo, error) bool) { yield(nil, err) }
	}
	if d == nil {
		return func(yield func([]ufs.FileInfo, error) bool) {
			var out []ufs.FileInfo
			for _, name := range n.set.Names() {
				out = append(out, ufs.FileInfo{Name: name, Mode: fs.ModeDir | 0o555})
			}
			yield(out, nil)
		}
	}
	return d.FS.List(ctx, rel)
}

func (n directNamespace) Copy(ctx context.Context, w io.Writer, p string, off, length int64) error {
	d, rel, err := n.set.Resolve(p)
	if err != nil {
		return err
	}
	if d == nil {
		return fmt.Errorf("cat %s: is a directory", p)
	}
	rc, err := d.FS.ReadRange(ctx, rel, ufs.Range{Off: off, Len: length})
	if err != nil {
		return err
	}
	defer rc.Close()
	_, err = io.Copy(w, rc)
	return err
}

func (n directNamespace) Close() error { return n.set.Close() }
