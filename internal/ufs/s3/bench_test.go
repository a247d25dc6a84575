package s3_test

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/granary-cache/granary/internal/measure"
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
	var offs []int64
	for off := int64(0); off < benchObject; off += benchRange {
		offs = append(offs, off)
	}
	return inParallel(offs, read)
}

// inParallel calls fn on every item with benchReaders goroutines and
// returns the first error (every item is still handed out).
func inParallel[T any](items []T, fn func(T) error) error {
	work := make(chan T)
	errs := make(chan error, 1)
	var wg sync.WaitGroup
	for range benchReaders {
		wg.Go(func() {
			for it := range work {
				if err := fn(it); err != nil {
					select {
					case errs <- err:
					default:
					}
				}
			}
		})
	}
	for _, it := range items {
		work <- it
	}
	close(work)
	wg.Wait()
	select {
	case err := <-errs:
		return err
	default:
		return nil
	}
}

// Shape of BenchmarkSmallObjects.
const (
	smallObjects = 2000
	smallSize    = 100 << 10
	smallRounds  = 3
)

// BenchmarkSmallObjects reads 2,000 objects of 100 KiB whole with 16
// readers — the cold path of a small-file dataset — through the SDK alone
// and through the lean path, in alternating rounds (the median of 3 is
// reported). Besides the rates it reports the CPU this process spent per
// GB on each (getrusage; the server is another process).
func BenchmarkSmallObjects(b *testing.B) {
	srv := needServer(b)
	ctx := context.Background()
	if err := srv.CreateBucket(ctx, "small"); err != nil {
		b.Fatal(err)
	}
	names := make([]string, smallObjects)
	for i := range names {
		names[i] = fmt.Sprintf("train/class%02d/img%05d.jpg", i%50, i)
		if err := srv.Put(ctx, "small", names[i], ufstest.Content(names[i], smallSize)); err != nil {
			b.Fatal(err)
		}
	}
	fsys, err := s3.Open("small", "", opts())
	if err != nil {
		b.Fatal(err)
	}
	defer fsys.Close()
	pool := sync.Pool{New: func() any { b := make([]byte, smallSize); return &b }}
	readAll := func() error {
		return inParallel(names, func(name string) error {
			p := pool.Get().(*[]byte)
			defer pool.Put(p)
			rc, err := fsys.ReadRange(ctx, name, ufs.Range{Off: 0, Len: smallSize})
			if err != nil {
				return err
			}
			defer rc.Close()
			_, err = io.ReadFull(rc, *p)
			return err
		})
	}
	if err := readAll(); err != nil { // connections open, server caches warm
		b.Fatal(err)
	}
	gb := float64(smallObjects) * smallSize / 1e9
	var rates, cpus [2][]float64 // [sdk, lean]
	b.ResetTimer()
	for round := range smallRounds {
		for k := range 2 {
			lean := (round+k)%2 == 1
			s3.SetLean(fsys, lean)
			cpu0, t0 := measure.ProcessCPU(), time.Now()
			if err := readAll(); err != nil {
				b.Fatal(err)
			}
			i := 0
			if lean {
				i = 1
			}
			rates[i] = append(rates[i], smallObjects/time.Since(t0).Seconds())
			cpus[i] = append(cpus[i], (measure.ProcessCPU()-cpu0).Seconds()/gb)
		}
	}
	b.StopTimer()
	if s3.LeanOff(fsys) {
		b.Fatal("the lean path turned itself off")
	}
	sdk, lean := measure.Median(rates[0]), measure.Median(rates[1])
	b.ReportMetric(sdk, "sdk_req/s")
	b.ReportMetric(lean, "lean_req/s")
	b.ReportMetric(lean/sdk, "lean/sdk")
	b.ReportMetric(measure.Median(cpus[0]), "sdk_proc_CPU-s/GB")
	b.ReportMetric(measure.Median(cpus[1]), "lean_proc_CPU-s/GB")
}
