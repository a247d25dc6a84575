package worker

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/granary-cache/granary/internal/block"
	"github.com/granary-cache/granary/internal/wire"
)

// BenchmarkLocateAfterLoad: the open of a file that a load (or the mount's
// prefetch, or a fill) cached, as FUSE passthrough makes it — a locate that
// has the worker check every page whose check does not hold — against the
// open of another file cached the same way, by a locate that checks
// nothing (the short-circuit client's, which checks the pages itself).
// The store trusts the pages it wrote itself, so the two should cost about
// the same: locate_checked/unchecked near 1, where checking every page
// again costs a read of the block and its CRCs.
func BenchmarkLocateAfterLoad(b *testing.B) {
	const page, pages = 1 << 20, 16
	tw := startWorker(b, pages*page, page, "", func(w *Worker) { w.locateFetchMax = pages * page })
	ctx := context.Background()
	ds, _ := tw.datasets.Get("d")
	// load caches a new file as a load does.
	load := func(name string) block.Ref {
		tw.writeFile(b, name, pages*page)
		// From the UFS: the worker's listing of the dataset, cached, does
		// not know the new file.
		fi, err := ds.FS.Stat(ctx, name)
		if err != nil {
			b.Fatal(err)
		}
		ref := block.Ref{ID: block.ID{Dataset: "d", Path: name, Version: fi.Version, BlockSize: pages * page}, Size: fi.Size}
		req, err := tw.blockRequest(ref)
		if err != nil {
			b.Fatal(err)
		}
		req.first, req.last, req.background, req.wantsFile = 0, pages-1, true, true
		l, err := tw.load(ctx, req)
		if err != nil {
			b.Fatal(err)
		}
		l.close()
		os.Remove(filepath.Join(tw.ufsDir, name)) // (the cache evicts its blocks as it fills)
		return ref
	}
	var checked, unchecked time.Duration
	for i := 0; b.Loop(); i++ {
		b.StopTimer()
		refs := []block.Ref{load(fmt.Sprintf("a%d", i)), load(fmt.Sprintf("b%d", i))}
		b.StartTimer()
		kinds := []struct {
			verify string
			took   *time.Duration
		}{{wire.VerifyNone, &unchecked}, {wire.VerifyChanged, &checked}}
		if i%2 == 1 { // each kind goes first every other time
			kinds[0], kinds[1] = kinds[1], kinds[0]
		}
		for j, c := range kinds {
			ref := refs[j]
			start := time.Now()
			if _, err := tw.locate(ctx, ref, c.verify, false); err != nil {
				b.Fatal(err)
			}
			*c.took += time.Since(start)
		}
	}
	b.ReportMetric(float64(checked)/float64(unchecked), "locate_checked/unchecked")
	b.ReportMetric(float64(checked.Microseconds())/float64(b.N), "checked_µs/op")
}
