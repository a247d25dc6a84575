package worker

import (
	"context"
	"errors"
	"fmt"

	"github.com/granary-cache/granary/internal/block"
	"github.com/granary-cache/granary/internal/cache"
	"github.com/granary-cache/granary/internal/placement"
	"github.com/granary-cache/granary/internal/ufs"
	"github.com/granary-cache/granary/internal/wire"
)

// Near copies (a dataset's near_cache): a client asks the worker of its own
// machine for a block that other workers own (PathLocal with near=1). The
// worker copies it from an owner — page by page, through the same
// single-flight as UFS fetches — into a near copy when a tier has room for
// one (cache.CreateNear), and hands the client its file as for a block it
// owns. From then on the machine's readers read it locally, and a passthrough
// mount hands it to the kernel. A dataset too large for the machine keeps
// being read from its owners: near copies never push out owned blocks.

// errNoRoom: no tier has free room for a near copy now.
var errNoRoom = errors.New("no free room for a near copy")

// nearOwners returns the owners to copy a block from when this worker is
// not one of them; nil when it is (it then caches the block as an owner).
func (w *Worker) nearOwners(req blockReq) []placement.Member {
	owners := w.view().Owners(nil, block.PlacementKey(req.ds.Name(), req.key.Path, req.key.Index), max(req.ds.Config.Replicas, 1))
	for _, m := range owners {
		if m.ID == w.ID() {
			return nil
		}
	}
	return owners
}

// readOwner reads a range of a file from the block's owners, for a near
// copy: the first that answers.
func (w *Worker) readOwner(ctx context.Context, req blockReq, r ufs.Range, buf []byte) error {
	off := r.Off - req.key.Index*req.key.BlockSize
	ref := block.Ref{ID: block.ID{Dataset: req.ds.Name(), Path: req.key.Path, Version: req.key.Version, BlockSize: req.key.BlockSize, Index: req.key.Index}, Size: req.size}
	var errs []error
	for _, m := range req.near {
		if w.reach.Down(m.ID) {
			continue
		}
		err := w.readBlockFrom(ctx, m, ref, off, buf)
		if err == nil {
			w.m.nearPages.Inc()
			return nil
		}
		var ue *ufs.Error
		if errors.As(err, &ue) && ue.Class != ufs.ClassRetryable && ue.Class != ufs.ClassCanceled {
			return err // an error of the UFS: another owner would say the same
		}
		if !wire.Answered(err) {
			w.reach.MarkDown(m.ID, m.Addr, err) // no answer: read around it
		}
		errs = append(errs, fmt.Errorf("worker %s: %w", m.ID, err))
	}
	return fmt.Errorf("%w: no owner answered for a near copy: %w", wire.ErrWorker, errors.Join(errs...))
}

// readBlockFrom fills buf with the bytes of a block from off on, from
// worker m.
func (w *Worker) readBlockFrom(ctx context.Context, m placement.Member, ref block.Ref, off int64, buf []byte) error {
	gctx, done := w.reach.Guard(ctx, m.ID, m.Addr)
	defer done()
	_, err := w.peerBlocks.Read(gctx, m.Addr, wire.ReadRequest{Block: ref, Offset: off, Length: int64(len(buf))}, buf)
	return err
}

// createBlock makes room for a block this request will fill: a near copy
// when it comes from other owners, else an owned block (and a near copy
// found where this worker is now an owner becomes owned).
func (w *Worker) createBlock(req blockReq) (*cache.Block, error) {
	if req.near != nil {
		b, err := w.store.CreateNear(req.key, req.blen)
		if errors.Is(err, cache.ErrNoSpace) {
			return nil, errNoRoom
		}
		return b, err
	}
	return w.store.Create(req.key, req.blen)
}
