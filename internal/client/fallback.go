package client

import (
	"context"
	"fmt"
	"io"
	"iter"
	"sync/atomic"

	"golang.org/x/time/rate"

	"github.com/granary-cache/granary/internal/config"
	"github.com/granary-cache/granary/internal/dataset"
	"github.com/granary-cache/granary/internal/ufs"
)

// When no owner of a key answers, a dataset with fallback: ufs is read
// straight from its UFS — at a bounded rate per dataset
// (client.fallback_reads_per_second), so that a dead worker never turns
// every reader into a UFS client. Each such read is counted.

// fallback is one dataset's direct UFS reads.
type fallback struct {
	limit *rate.Limiter
	reads atomic.Int64
}

func newFallback(perSecond float64) *fallback {
	return &fallback{limit: rate.NewLimiter(rate.Limit(perSecond), max(1, int(perSecond)))}
}

// openUFS opens the datasets' backends on first need: a client that never
// falls back never connects to the UFS.
func (c *Client) openUFS() (*dataset.Set, error) {
	c.fallbackOnce.Do(func() { c.ufs, c.ufsErr = dataset.OpenAll(c.cfg, nil) })
	return c.ufs, c.ufsErr
}

func (c *Client) fallbackDataset(ctx context.Context, ds config.Dataset) (*dataset.Dataset, error) {
	fb := c.fallbacks[ds.Name]
	if err := fb.limit.Wait(ctx); err != nil {
		return nil, err
	}
	fb.reads.Add(1)
	set, err := c.openUFS()
	if err != nil {
		return nil, err
	}
	d, _ := set.Get(ds.Name)
	return d, nil
}

func (c *Client) fallbackStat(ctx context.Context, ds config.Dataset, name string) (ufs.FileInfo, error) {
	d, err := c.fallbackDataset(ctx, ds)
	if err != nil {
		return ufs.FileInfo{}, err
	}
	return d.FS.Stat(ctx, name)
}

func (c *Client) fallbackList(ctx context.Context, ds config.Dataset, dir string) iter.Seq2[[]ufs.FileInfo, error] {
	d, err := c.fallbackDataset(ctx, ds)
	if err != nil {
		return func(yield func([]ufs.FileInfo, error) bool) { yield(nil, err) }
	}
	return d.FS.List(ctx, dir)
}

func (c *Client) fallbackRead(ctx context.Context, ds config.Dataset, name, version string, off int64, buf []byte) error {
	d, err := c.fallbackDataset(ctx, ds)
	if err != nil {
		return err
	}
	rc, err := d.FS.ReadRange(ctx, name, ufs.Range{Off: off, Len: int64(len(buf)), IfVersion: version})
	if err != nil {
		return err
	}
	defer rc.Close()
	if _, err := io.ReadFull(rc, buf); err != nil {
		return &ufs.Error{Op: "read", Dataset: ds.Name, Path: name, Class: ufs.ClassVersionChanged, Err: fmt.Errorf("%w: %v", ufs.ErrVersionChanged, err)}
	}
	return nil
}
