// Package bench is `granary bench`: it generates synthetic training-shaped
// datasets (gen.go), reads them the way training jobs do against a target
// and baselines in the same run (run.go), and reports throughput, latency,
// the load on the storage behind and CPU, as a table, JSON and a chart
// (report.go).
package bench

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"
)

// Profiles are the dataset shapes gen writes and run reads.
var Profiles = []string{"imagenet", "shards", "records", "meta"}

// GenOptions say what to generate. Zero fields take the profile's default.
type GenOptions struct {
	Profile string
	// Scale is the total size in bytes (for meta: the number of files).
	Scale int64
	Seed  uint64
	// FileSize is the mean file size of imagenet (default 110 KiB); sizes
	// follow a log-normal distribution of spread SizeSpread (default 0.5).
	FileSize   int64
	SizeSpread float64
	// FilesPerDir is the number of files per directory of imagenet (default
	// 500) and meta (default 100).
	FilesPerDir int
	// ShardMin and ShardMax bound the size of a shard (default 256 MiB to
	// 1 GiB, never more than Scale).
	ShardMin, ShardMax int64
	// Records is the number of files of the records profile (default 4).
	Records int
}

// File is one file of a generated dataset.
type File struct {
	Name string
	Size int64 // for shards, the payload; the tar adds headers
	seed uint64
}

func (o *GenOptions) defaults() error {
	if !slices.Contains(Profiles, o.Profile) {
		return fmt.Errorf("unknown profile %q (profiles: %s)", o.Profile, strings.Join(Profiles, ", "))
	}
	if o.Scale <= 0 {
		o.Scale = map[string]int64{"imagenet": 1 << 30, "shards": 4 << 30, "records": 2 << 30, "meta": 100_000}[o.Profile]
	}
	if o.FileSize <= 0 {
		o.FileSize = 110 << 10
	}
	if o.SizeSpread <= 0 {
		o.SizeSpread = 0.5
	}
	if o.FilesPerDir <= 0 {
		o.FilesPerDir = map[string]int{"imagenet": 500, "meta": 100}[o.Profile]
	}
	if o.ShardMin <= 0 {
		o.ShardMin = 256 << 20
	}
	if o.ShardMax <= 0 {
		o.ShardMax = 1 << 30
	}
	if o.ShardMax < o.ShardMin {
		return fmt.Errorf("shard size: maximum %d is below minimum %d", o.ShardMax, o.ShardMin)
	}
	if o.Records <= 0 {
		o.Records = 4
	}
	return nil
}

// Manifest lists the files of a dataset; the same options give the same
// list and, with Content, the same bytes.
func Manifest(o GenOptions) ([]File, error) {
	if err := o.defaults(); err != nil {
		return nil, err
	}
	r := rand.New(rand.NewPCG(o.Seed, 0x6772616e))
	var files []File
	add := func(name string, size int64) {
		files = append(files, File{Name: name, Size: size, seed: r.Uint64()})
	}
	switch o.Profile {
	case "imagenet":
		// Log-normal sizes with the requested mean: mu = ln(mean) - s²/2.
		mu := math.Log(float64(o.FileSize)) - o.SizeSpread*o.SizeSpread/2
		var total int64
		for i := 0; total < o.Scale; i++ {
			size := int64(math.Exp(mu + o.SizeSpread*r.NormFloat64()))
			size = min(max(size, 1<<10), 16*o.FileSize, o.Scale-total)
			add(fmt.Sprintf("train/n%05d/img%08d.JPEG", i/o.FilesPerDir, i), size)
			total += size
		}
	case "shards":
		var total int64
		for i := 0; total < o.Scale; i++ {
			size := min(o.ShardMin+r.Int64N(o.ShardMax-o.ShardMin+1), o.Scale-total)
			add(fmt.Sprintf("shards/shard-%06d.tar", i), size)
			total += size
		}
	case "records":
		per := o.Scale / int64(o.Records)
		for i := range o.Records {
			size := per
			if i == o.Records-1 {
				size = o.Scale - per*int64(o.Records-1)
			}
			add(fmt.Sprintf("records/part-%03d.h5", i), size)
		}
	case "meta":
		// Three levels of directories, 10 wide below the first, with
		// FilesPerDir files in each leaf; the first level grows with the
		// number of files.
		for i := range o.Scale {
			leaf := i / int64(o.FilesPerDir)
			add(fmt.Sprintf("meta/a%d/b%d/c%d/f%08d", leaf/100, leaf/10%10, leaf%10, i), 0)
		}
	}
	return files, nil
}

// Content returns a file's bytes: incompressible and deterministic. A
// shard is a tar of samples (a ~110 KiB .jpg and a .cls each), the
// WebDataset layout, whose payload is about f.Size.
func Content(profile string, f File) []byte {
	r := rand.New(rand.NewPCG(f.seed, 1))
	if profile != "shards" {
		return randomBytes(r, int(f.Size))
	}
	var buf bytes.Buffer
	buf.Grow(int(f.Size) + int(f.Size)/64)
	tw := tar.NewWriter(&buf)
	mtime := time.Unix(1700000000, 0)
	for i, left := 0, f.Size; left > 0; i++ {
		jpg := min(int64(90<<10+r.IntN(40<<10)), left)
		cls := fmt.Appendf(nil, "%d\n", r.IntN(1000))
		for _, e := range []struct {
			ext  string
			data []byte
		}{{"jpg", randomBytes(r, int(jpg))}, {"cls", cls}} {
			tw.WriteHeader(&tar.Header{Name: fmt.Sprintf("sample%08d.%s", i, e.ext), Mode: 0o644, Size: int64(len(e.data)), ModTime: mtime, Typeflag: tar.TypeReg})
			tw.Write(e.data)
		}
		left -= jpg + int64(len(cls))
	}
	tw.Close()
	return buf.Bytes()
}

func randomBytes(r *rand.Rand, n int) []byte {
	b := make([]byte, n)
	i := 0
	for ; i+8 <= n; i += 8 {
		v := r.Uint64()
		b[i], b[i+1], b[i+2], b[i+3], b[i+4], b[i+5], b[i+6], b[i+7] =
			byte(v), byte(v>>8), byte(v>>16), byte(v>>24), byte(v>>32), byte(v>>40), byte(v>>48), byte(v>>56)
	}
	for v := r.Uint64(); i < n; i, v = i+1, v>>8 {
		b[i] = byte(v)
	}
	return b
}

// Sink is where gen writes: a directory or a bucket.
type Sink interface {
	Put(ctx context.Context, name string, data []byte) error
}

// Generate writes the dataset o describes to sink with the given number
// of writers, calling progress (if not nil) with the bytes of each file
// written. It returns the files and the bytes written.
func Generate(ctx context.Context, o GenOptions, sink Sink, writers int, progress func(int64)) ([]File, int64, error) {
	files, err := Manifest(o)
	if err != nil {
		return nil, 0, err
	}
	if writers <= 0 {
		writers = 4
	}
	// A file is made in memory before it is written: bound what the
	// writers hold together to about 2 GiB (large shards go one or two at a
	// time).
	var largest int64
	for _, f := range files {
		largest = max(largest, f.Size)
	}
	writers = max(1, min(writers, int((2<<30)/max(largest, 1))))
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	work := make(chan File)
	var mu sync.Mutex
	var written int64
	var errs []error
	var wg sync.WaitGroup
	for range writers {
		wg.Go(func() {
			for f := range work {
				data := Content(o.Profile, f)
				if err := sink.Put(ctx, f.Name, data); err != nil {
					mu.Lock()
					errs = append(errs, fmt.Errorf("write %s: %w", f.Name, err))
					mu.Unlock()
					cancel()
					continue
				}
				mu.Lock()
				written += int64(len(data))
				mu.Unlock()
				if progress != nil {
					progress(int64(len(data)))
				}
			}
		})
	}
feed:
	for _, f := range files {
		select {
		case work <- f:
		case <-ctx.Done():
			break feed
		}
	}
	close(work)
	wg.Wait()
	if len(errs) > 0 {
		return files, written, errs[0]
	}
	return files, written, ctx.Err()
}
