package worker

import (
	"context"
	"math"
	"time"

	"github.com/granary-cache/granary/internal/cache"
)

// repair fetches again a page the store's scrub found corrupt and dropped.
// A reader through the worker would fetch it on its next read anyway, but a
// reader through FUSE passthrough reads the block file in the kernel and
// never asks: without this, it would keep reading the bad bytes until the
// mount opened the file anew.
func (w *Worker) repair(ctx context.Context, b *cache.Block, p int) {
	select {
	case <-w.storeReady:
	case <-w.bgCtx.Done():
		return
	}
	ds, ok := w.datasets.Get(b.Key.Dataset)
	if !ok {
		return
	}
	// The block's length says the file's size only for its last block;
	// for a full one, any size past it will do: the size only decides
	// whether a read of the whole file may stand for the page's range.
	size := b.Key.Index*b.Key.BlockSize + b.Length
	if b.Length == b.Key.BlockSize {
		size = math.MaxInt64
	}
	req := blockReq{ds: ds, key: b.Key, size: size, blen: b.Length, first: p, last: p}
	// The store's context ends when it closes, after the worker's
	// background work: end with the latter, which Close stops first.
	if w.bgCtx.Err() != nil {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	defer context.AfterFunc(w.bgCtx, cancel)()
	if _, err := w.fetchPage(ctx, req, b, p); err != nil {
		w.log.Info("a page dropped by the scrub could not be fetched again; the next read will", "block", b.Key.String(), "page", p, "err", err)
	}
}
