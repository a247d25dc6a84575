package client

import (
	"context"
	"io"
	"sync"

	"github.com/granary-cache/granary/internal/block"
	"github.com/granary-cache/granary/internal/placement"
	"github.com/granary-cache/granary/internal/wire"
)

// BatchRead is one read of a batch: Buf is filled from Off of the file at
// Path (a namespace path, "/<dataset>/<path>"); N and Err are its outcome,
// as ReadAt's (io.EOF when the file ends before Buf is full).
type BatchRead struct {
	Path string
	Off  int64
	Buf  []byte
	N    int
	Err  error
}

// ReadBatch reads many files at once, the way a data loader's batch does:
// the reads of small files (one block each) whose first owner is the same
// remote worker go to it in one request, those groups in parallel; every
// other read (a block on this host, one spanning blocks, an item a worker
// failed) takes the path of ReadAt, with its failover. Each read's outcome
// is in its N and Err.
func (c *Client) ReadBatch(ctx context.Context, reads []*BatchRead) {
	type item struct {
		r   *BatchRead
		f   *File
		idx int64
		off int64 // within the block
		n   int
	}
	groups := map[string][]item{} // by worker address
	members := map[string]placement.Member{}
	var single []item
	for _, r := range reads {
		r.N, r.Err = 0, nil
		f, err := c.Open(ctx, r.Path)
		if err != nil {
			r.Err = err
			continue
		}
		it := item{r: r, f: f}
		if r.Off < 0 || r.Off >= f.Size() || len(r.Buf) == 0 {
			single = append(single, it) // ReadAt says what is wrong, or EOF
			continue
		}
		bs := f.blockSize()
		it.n = int(min(int64(len(r.Buf)), f.Size()-r.Off))
		it.idx, it.off = r.Off/bs, r.Off%bs
		if (r.Off+int64(it.n)-1)/bs != it.idx {
			single = append(single, it)
			continue
		}
		owners := c.owners(block.PlacementKey(f.ds.Name, f.path, it.idx), f.ds.Replicas)
		if len(owners) == 0 || c.isLocal(owners[0].ID) || f.ds.NearCache {
			single = append(single, it)
			continue
		}
		m := owners[0]
		members[m.Addr] = m
		groups[m.Addr] = append(groups[m.Addr], it)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	for addr, items := range groups {
		wg.Go(func() {
			m := members[addr]
			rs := make([]wire.ReadRequest, len(items))
			bufs := make([][]byte, len(items))
			for i, it := range items {
				f := it.f
				rs[i] = wire.ReadRequest{Block: block.Ref{ID: block.ID{Dataset: f.ds.Name, Path: f.path, Version: f.info.Version, BlockSize: f.blockSize(), Index: it.idx}, Size: f.info.Size},
					Offset: it.off, Length: int64(it.n)}
				bufs[i] = it.r.Buf[:it.n]
			}
			tctx, cancel := context.WithTimeout(ctx, c.timeout)
			gctx, done := c.reach.Guard(tctx, m.ID, m.Addr)
			errs := c.blocks.ReadBatch(gctx, m.Addr, rs, bufs)
			done()
			cancel()
			var retry []item
			for i, it := range items {
				switch {
				case errs[i] == nil:
					c.remote.Add(1)
					it.r.N = it.n
					if it.n < len(it.r.Buf) {
						it.r.Err = io.EOF
					}
				case workerFault(errs[i]) && ctx.Err() == nil:
					retry = append(retry, it) // the next owner, by ReadAt's path
				default:
					it.r.Err = errs[i]
				}
			}
			mu.Lock()
			single = append(single, retry...)
			mu.Unlock()
		})
	}
	wg.Wait()
	sem := make(chan struct{}, 16)
	for _, it := range single {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			it.r.N, it.r.Err = it.f.ReadAtContext(ctx, it.r.Buf, it.r.Off)
		})
	}
	wg.Wait()
}
