package s3_test

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/granary-cache/granary/internal/ufs"
	"github.com/granary-cache/granary/internal/ufs/s3"
	"github.com/granary-cache/granary/internal/ufs/ufstest"
)

const (
	benchObject  = 256 << 20
	benchRange   = 4 << 20
	benchReaders = 16
)

// BenchmarkRangedRead reads one 256 MiB object as 4 MiB ranges with 16
// parallel readers, through the S3 backend and, as the baseline measured in
// the same iterations, straight from the file on local disk that backs the
// object in the server. It reports both rates and their ratio.
func BenchmarkRangedRead(b *testing.B) {
	srv := needServer(b)
	ctx := context.Background()
	if err := srv.CreateBucket(ctx, "bench"); err != nil {
		b.Fatal(err)
	}
	if err := srv.Put(ctx, "bench", "obj", ufstest.Content("obj", benchObject)); err != nil {
		b.Fatal(err)
	}
	fsys, err := s3.Open("bench", "", opts())
	if err != nil {
		b.Fatal(err)
	}
	defer fsys.Close()
	backing, err := os.Open(filepath.Join(srv.Dir, "bench", "obj"))
	if err != nil {
		b.Fatal(err)
	}
	defer backing.Close()

	viaS3 := func(off int64) error {
		rc, err := fsys.ReadRange(ctx, "obj", ufs.Range{Off: off, Len: benchRange})
		if err != nil {
			return err
		}
		defer rc.Close()
		_, err = io.CopyBuffer(io.Discard, rc, make([]byte, 256<<10))
		return err
	}
	buf := sync.Pool{New: func() any { b := make([]byte, benchRange); return &b }}
	direct := func(off int64) error {
		p := buf.Get().(*[]byte)
		defer buf.Put(p)
		_, err := backing.ReadAt(*p, off)
		if err == io.EOF {
			err = nil
		}
		return err
	}

	// Warm the page cache so both read the same cached bytes.
	if err := parallelRanges(direct); err != nil {
		b.Fatal(err)
	}
	var s3Time, directTime time.Duration
	b.SetBytes(benchObject)
	b.ResetTimer()
	for b.Loop() {
		start := time.Now()
		if err := parallelRanges(viaS3); err != nil {
			b.Fatal(err)
		}
		s3Time += time.Since(start)
		start = time.Now()
		if err := parallelRanges(direct); err != nil {
			b.Fatal(err)
		}
		directTime += time.Since(start)
	}
	n := float64(b.N) * benchObject / 1e6
	b.ReportMetric(n/s3Time.Seconds(), "s3_MB/s")
	b.ReportMetric(n/directTime.Seconds(), "local_MB/s")
	b.ReportMetric(directTime.Seconds()/s3Time.Seconds(), "s3/local")
}

// parallelRanges reads the whole bench object in ranges with benchReaders
// goroutines.
func parallelRanges(read func(off int64) error) error {
	offs := make(chan int64)
	errs := make(chan error, benchReaders)
	var wg sync.WaitGroup
	for range benchReaders {
		wg.Go(func() {
			var failed bool
			for off := range offs { // drain even after a failure, so the sender never blocks
				if failed {
					continue
				}
				if err := read(off); err != nil {
					errs <- err
					failed = true
				}
			}
		})
	}
	for off := int64(0); off < benchObject; off += benchRange {
		offs <- off
	}
	close(offs)
	wg.Wait()
	select {
	case err := <-errs:
		return err
	default:
		return nil
	}
}
