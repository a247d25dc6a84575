package cluster

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/granary-cache/granary/internal/measure"
	"github.com/granary-cache/granary/internal/s3test"
)

// BenchmarkMountBigS3: the big files (GRANARY_BENCH_BIG of 1 GiB, default
// 4) from a real S3 server, read whole by as many readers through a fresh
// mount with the default blocks (a file up to 1 GiB is one block, read by
// passthrough once cached): the cold epoch against a parallel SDK download
// of the same objects (one GET per object, all at once), into nothing
// (sdk) and into files in /dev/shm (sdk_files: the local copy a user would
// make otherwise, which pays for its memory as the cache does). Then a
// first warm epoch (warm/local: it also frees what the cold epoch left in
// the mount's page cache) and five more, each in turn with a read of the
// same files from the local page cache (warm2/local: the median of the
// five ratios). It also reports the warm epochs' daemon READs and
// passthrough opens per epoch, and the CPU the worker and the mount used
// per GB of the cold epoch (together, and each): on this 2-core machine
// that epoch is bound by CPU, and the figure moves less with the
// machine's noise than a rate.
func BenchmarkMountBigS3(b *testing.B) {
	if s3srv == nil {
		b.Skip("no S3 server")
	}
	dir, _, big := benchTree(b)
	ctx := context.Background()
	bucket := fmt.Sprintf("big%d", time.Now().UnixNano())
	if err := s3srv.CreateBucket(ctx, bucket); err != nil {
		b.Fatal(err)
	}
	var size int64
	for _, name := range big {
		data, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			b.Fatal(err)
		}
		size += int64(len(data))
		if err := s3srv.Put(ctx, bucket, name, data); err != nil {
			b.Fatal(err)
		}
	}
	sdk := s3.New(s3.Options{BaseEndpoint: aws.String(s3srv.Endpoint), Region: "us-east-1", UsePathStyle: true,
		Credentials: credentials.NewStaticCredentialsProvider(s3test.AccessKey, s3test.SecretKey, "")})
	// download reads every object at once with the SDK, into files of a
	// new directory of dir (the local copy a user would otherwise make, on
	// the same kind of storage as the cache's tier), or with dir "" into
	// nothing at all.
	download := func(dir string) time.Duration {
		if dir != "" {
			var err error
			if dir, err = os.MkdirTemp(dir, "granary-sdk"); err != nil {
				b.Fatal(err)
			}
			defer os.RemoveAll(dir)
		}
		start := time.Now()
		var wg sync.WaitGroup
		for _, name := range big {
			wg.Go(func() {
				out, err := sdk.GetObject(ctx, &s3.GetObjectInput{Bucket: &bucket, Key: aws.String(name)})
				if err != nil {
					b.Error(err)
					return
				}
				defer out.Body.Close()
				var to io.Writer = io.Discard
				if dir != "" {
					f, err := os.Create(filepath.Join(dir, filepath.Base(name)))
					if err != nil {
						b.Error(err)
						return
					}
					defer f.Close()
					to = struct{ io.Writer }{f} // (no ReadFrom: the same copy as to Discard)
				}
				if _, err := io.CopyBuffer(to, out.Body, make([]byte, 1<<20)); err != nil {
					b.Error(err)
				}
			})
		}
		wg.Wait()
		return time.Since(start)
	}
	epoch(b, dir, big, len(big), 0) // the local files in the page cache
	var cold, warm, warm2, sdkTime, sdkFiles, local time.Duration
	var workerCPU, mountCPU float64      // seconds, of the cold epochs
	var warmReads, warmPassthrough int64 // of the warm epochs: READs the mount served, passthrough opens
	var warmRatios []float64             // local ÷ warm of each pair of the later warm epochs
	const warmPairs = 5
	b.SetBytes(size)
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		c := s3BenchCluster(b, bucket)
		m := c.mount(b)
		root := filepath.Join(m.dir, "s3")
		wpid, mpid := c.workers[0].cmd.Process.Pid, m.serverPid(b)
		start, w0, m0 := time.Now(), cpuSeconds(wpid), cpuSeconds(mpid)
		if got := epoch(b, root, big, len(big), uint64(i)); got != size {
			b.Fatalf("cold epoch: %d bytes of %d", got, size)
		}
		cold += time.Since(start)
		workerCPU += cpuSeconds(wpid) - w0
		mountCPU += cpuSeconds(mpid) - m0
		sdkTime += download("")
		sdkFiles += download("/dev/shm")
		before := m.stats(b).Mount
		start = time.Now()
		epoch(b, root, big, len(big), uint64(i+1))
		warm += time.Since(start)
		epoch(b, dir, big, len(big), uint64(i+1)) // back into the page cache, which the epochs above squeezed
		// Then warm epochs in turns with reads of the local files: each
		// pass takes a fraction of a second, so one pair says little.
		for k := range warmPairs {
			start = time.Now()
			epoch(b, root, big, len(big), uint64(i+2+k))
			w := time.Since(start)
			start = time.Now()
			epoch(b, dir, big, len(big), uint64(i+2+k))
			l := time.Since(start)
			warm2 += w
			local += l
			warmRatios = append(warmRatios, l.Seconds()/w.Seconds())
		}
		after := m.stats(b).Mount
		warmReads += after.DaemonReads - before.DaemonReads
		warmPassthrough += after.PassthroughOpens - before.PassthroughOpens
		m.stop()
		c.stopAll()
	}
	mb := float64(b.N) * float64(size) / 1e6
	b.ReportMetric(mb/cold.Seconds(), "cold_MB/s")
	b.ReportMetric((workerCPU+mountCPU)/(mb/1e3), "cold_cpu_s/GB")
	b.ReportMetric(workerCPU/(mb/1e3), "cold_worker_cpu_s/GB")
	b.ReportMetric(mountCPU/(mb/1e3), "cold_mount_cpu_s/GB")
	b.ReportMetric(mb/sdkTime.Seconds(), "sdk_MB/s")
	b.ReportMetric(mb/warm.Seconds(), "warm_MB/s")
	b.ReportMetric(mb*warmPairs/warm2.Seconds(), "warm2_MB/s")
	b.ReportMetric(mb*warmPairs/local.Seconds(), "local_MB/s")
	b.ReportMetric(mb/sdkFiles.Seconds(), "sdk_files_MB/s")
	b.ReportMetric(sdkTime.Seconds()/cold.Seconds(), "cold/sdk")
	b.ReportMetric(sdkFiles.Seconds()/cold.Seconds(), "cold/sdk_files")
	b.ReportMetric(local.Seconds()/warmPairs/warm.Seconds(), "warm/local")
	b.ReportMetric(measure.Median(warmRatios), "warm2/local")
	b.ReportMetric(float64(warmReads)/float64(b.N)/(1+warmPairs), "warm_daemon_reads")
	b.ReportMetric(float64(warmPassthrough)/float64(b.N)/(1+warmPairs), "warm_passthrough_opens")
}
