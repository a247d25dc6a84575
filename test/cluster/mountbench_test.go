package cluster

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/granary-cache/granary/internal/config"
	"github.com/granary-cache/granary/internal/measure"
	"github.com/granary-cache/granary/internal/s3test"
)

// The mount benchmarks read an ImageNet-like tree — GRANARY_BENCH_FILES
// files (default 100,000) of 77–143 KiB in 1,000 directories — and
// GRANARY_BENCH_BIG files (default 4) of 1 GiB, generated once per run
// under GRANARY_BENCH_DIR (kept, for the next run), or else in the run's
// temporary directory (removed when the run ends). Each reports
// the mount's rate as a ratio to the same reads of the local directory,
// alternating the two.

var (
	benchOnce sync.Once
	benchDir  string
	benchErr  error
	smallList []string
	bigList   []string
)

func benchEnv(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// benchTree generates the tree (or reuses one a previous run left).
func benchTree(b *testing.B) (string, []string, []string) {
	benchOnce.Do(func() {
		benchDir = os.Getenv("GRANARY_BENCH_DIR")
		if benchDir == "" {
			benchDir, benchErr = os.MkdirTemp(runDir, "bench")
			if benchErr != nil {
				return
			}
		}
		files, big := benchEnv("GRANARY_BENCH_FILES", 100000), benchEnv("GRANARY_BENCH_BIG", 4)
		r := rand.New(rand.NewPCG(1, 2))
		buf := make([]byte, 143<<10)
		for i := range buf {
			buf[i] = byte(r.Uint32())
		}
		for i := range files {
			name := fmt.Sprintf("train/n%05d/img%07d.jpg", i%1000, i)
			smallList = append(smallList, name)
			p := filepath.Join(benchDir, name)
			if _, err := os.Stat(p); err == nil {
				continue
			}
			os.MkdirAll(filepath.Dir(p), 0o755)
			size := 77<<10 + r.IntN(66<<10)
			buf[0], buf[1], buf[2] = byte(i), byte(i>>8), byte(i>>16) // distinct content
			if benchErr = os.WriteFile(p, buf[:size], 0o644); benchErr != nil {
				return
			}
		}
		chunk := make([]byte, 16<<20)
		for i := range chunk {
			chunk[i] = byte(r.Uint32())
		}
		for i := range big {
			name := fmt.Sprintf("shards/shard-%d.bin", i)
			bigList = append(bigList, name)
			p := filepath.Join(benchDir, name)
			if st, err := os.Stat(p); err == nil && st.Size() == 1<<30 {
				continue
			}
			os.MkdirAll(filepath.Dir(p), 0o755)
			f, err := os.Create(p)
			if err != nil {
				benchErr = err
				return
			}
			for range (1 << 30) / len(chunk) {
				chunk[0]++
				f.Write(chunk)
			}
			f.Close()
		}
	})
	if benchErr != nil {
		b.Fatal(benchErr)
	}
	return benchDir, smallList, bigList
}

// benchMount starts workers over the tree and a mount. The dataset has
// 1 GiB blocks, so that the big files are single blocks and
// passthrough-eligible.
func benchMount(b *testing.B, dir string, args ...string) (*cluster, *mountProc) {
	c := startCluster(b, clusterOpts{workers: 1, blockSize: 64 << 20, pageSize: 4 << 20,
		datasets: fmt.Sprintf("  - {name: d, ufs: \"file://%s\", block_size: 1GiB, open_mode: passthrough}\n", dir),
		tiers: func(_ int, d string) string {
			return fmt.Sprintf("    - {name: SSD, path: %s/ssd, quota: 64GiB}\n", d)
		}})
	return c, c.mount(b, args...)
}

// epoch reads names under root with readers goroutines, whole files, in a
// shuffled order, and returns the bytes read.
func epoch(b *testing.B, root string, names []string, readers int, seed uint64) int64 {
	order := append([]string(nil), names...)
	rand.New(rand.NewPCG(seed, 3)).Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
	work := make(chan string, 1024)
	var total int64
	var mu sync.Mutex
	var wg sync.WaitGroup
	for range readers {
		wg.Go(func() {
			buf := make([]byte, 1<<20)
			var n int64
			for name := range work {
				f, err := os.Open(filepath.Join(root, name))
				if err != nil {
					b.Error(err)
					continue
				}
				for {
					k, err := f.Read(buf)
					n += int64(k)
					if err == io.EOF {
						break
					}
					if err != nil {
						b.Error(err)
						break
					}
				}
				f.Close()
			}
			mu.Lock()
			total += n
			mu.Unlock()
		})
	}
	for _, n := range order {
		work <- n
	}
	close(work)
	wg.Wait()
	return total
}

// compare runs warm epochs through the mount and directly, alternating,
// and reports both rates and their ratio.
//
// Each side is read twice before the pairs: the first read warms the page
// caches (and granary's), and the second is slower than the ones after it
// on any file system, the mount's and the local directory's alike (the
// kernel moves each page to its active list when read again: 8,000 local
// files after a drop of the caches read in 191 ms, then 178, 172, 158).
// The local tree has been read many times before, so without the second
// warm read the first pair would set a mount's second read against a
// local directory's hundredth.
func compare(b *testing.B, mnt, direct string, names []string, readers int) {
	for range 2 {
		epoch(b, direct, names, readers, 0)
		epoch(b, mnt, names, readers, 0)
	}
	var tm, td time.Duration
	var bytes int64
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		start := time.Now()
		bytes = epoch(b, mnt, names, readers, uint64(i+1))
		tm += time.Since(start)
		start = time.Now()
		epoch(b, direct, names, readers, uint64(i+1))
		td += time.Since(start)
	}
	n := float64(b.N)
	b.ReportMetric(n*float64(bytes)/1e6/tm.Seconds(), "mount_MB/s")
	b.ReportMetric(n*float64(bytes)/1e6/td.Seconds(), "direct_MB/s")
	b.ReportMetric(n*float64(len(names))/tm.Seconds(), "mount_files/s")
	b.ReportMetric(td.Seconds()/tm.Seconds(), "mount/direct")
}

// openModes runs a benchmark under each way of opening files: passthrough
// (the dataset's open_mode) and zero-message opens.
func openModes(b *testing.B, run func(b *testing.B, m *mountProc, passthrough bool)) {
	dir, _, _ := benchTree(b)
	for _, mode := range []string{"passthrough", "zero-message-opens"} {
		b.Run(mode, func(b *testing.B) {
			var args []string
			if mode != "passthrough" {
				args = append(args, "--"+mode)
			}
			_, m := benchMount(b, dir, args...)
			run(b, m, mode == "passthrough")
		})
	}
}

// BenchmarkMountSmallWarm: a warm epoch of the small files, 16 readers:
// first on a dataset of them alone with every setting left at its default
// (the block size, the tiers `granary up` gives, open_mode auto), then
// under each open mode.
func BenchmarkMountSmallWarm(b *testing.B) {
	b.Run("defaults", func(b *testing.B) {
		dir, small, _ := benchTree(b)
		root := filepath.Join(dir, "train")
		c := startCluster(b, clusterOpts{workers: 1, blockSize: 64 << 20, pageSize: 4 << 20,
			datasets: fmt.Sprintf("  - {name: s, ufs: \"file://%s\"}\n", root),
			tiers:    func(_ int, d string) string { return benchTiers(b, d) }})
		m := c.mount(b)
		names := make([]string, len(small))
		for i, name := range small {
			names[i] = strings.TrimPrefix(name, "train/")
		}
		compare(b, filepath.Join(m.dir, "s"), root, names, 16)
	})
	openModes(b, func(b *testing.B, m *mountProc, _ bool) {
		dir, small, _ := benchTree(b)
		compare(b, filepath.Join(m.dir, "d"), dir, small, 16)
	})
}

// BenchmarkMountSmallWarmPython: a warm epoch of the small files read by
// Python threads (testdata/read_epoch.py) through a mount with the
// defaults, against the same files read locally, in turns: with open()'s
// default buffering, which before Python 3.14 costs every open an ioctl
// that FUSE sends to the mount's server (isatty), and unbuffered, which
// does not. It reports each ratio (the median of three pairs) and the
// ioctls the mount was asked per file read.
func BenchmarkMountSmallWarmPython(b *testing.B) {
	python := "/usr/bin/python3" // Debian's (test/run.sh installs it)
	dir, small, _ := benchTree(b)
	root := filepath.Join(dir, "train")
	list := filepath.Join(b.TempDir(), "names")
	names := make([]string, len(small))
	for i, name := range small {
		names[i] = strings.TrimPrefix(name, "train/")
	}
	if err := os.WriteFile(list, []byte(strings.Join(names, "\n")), 0o644); err != nil {
		b.Fatal(err)
	}
	c := startCluster(b, clusterOpts{workers: 1, blockSize: 64 << 20, pageSize: 4 << 20,
		datasets: fmt.Sprintf("  - {name: s, ufs: \"file://%s\"}\n", root),
		tiers:    func(_ int, d string) string { return benchTiers(b, d) }})
	m := c.mount(b)
	mnt := filepath.Join(m.dir, "s")
	rate := func(root, buffering string) float64 {
		out, err := exec.Command(python, "testdata/read_epoch.py", root, list, "--buffering", buffering).CombinedOutput()
		if err != nil {
			b.Fatalf("read_epoch.py %s: %v\n%s", root, err, out)
		}
		var r float64
		if _, err := fmt.Sscanf(string(out), "%f files/s", &r); err != nil {
			b.Fatalf("read_epoch.py said %q", out)
		}
		return r
	}
	rate(root, "0") // warm both page caches (and the cache)
	rate(mnt, "0")
	b.ResetTimer()
	for b.Loop() {
		for _, buffering := range []string{"-1", "0"} {
			var ratios []float64
			ioctls := m.stats(b).Mount.Ioctls
			for range 3 {
				l := rate(root, buffering)
				ratios = append(ratios, rate(mnt, buffering)/l)
			}
			what := map[string]string{"-1": "buffered", "0": "unbuffered"}[buffering]
			b.ReportMetric(measure.Median(ratios), what+"_mount/local")
			b.ReportMetric(float64(m.stats(b).Mount.Ioctls-ioctls)/float64(3*3*len(names)), what+"_ioctls/file")
		}
	}
}

// BenchmarkMountBigWarm: warm sequential reads of the 1 GiB files, one
// reader per file (with zero-message opens, from the mount's page cache).
func BenchmarkMountBigWarm(b *testing.B) {
	openModes(b, func(b *testing.B, m *mountProc, passthrough bool) {
		dir, _, big := benchTree(b)
		compare(b, filepath.Join(m.dir, "d"), dir, big, len(big))
		if st := m.stats(b); passthrough && st.Mount.PassthroughOpens == 0 {
			b.Errorf("no passthrough opens for the big files")
		}
	})
}

// BenchmarkMountLsLR: `ls -lR` of the tree, warm, through the mount and on
// the local directory.
func BenchmarkMountLsLR(b *testing.B) {
	dir, _, _ := benchTree(b)
	_, m := benchMount(b, dir)
	ls := func(root string) time.Duration {
		start := time.Now()
		cmd := exec.Command("ls", "-lR", root)
		cmd.Stdout = io.Discard
		if err := cmd.Run(); err != nil {
			b.Fatal(err)
		}
		return time.Since(start)
	}
	ls(dir)
	ls(filepath.Join(m.dir, "d"))
	var tm, td time.Duration
	b.ResetTimer()
	for b.Loop() {
		tm += ls(filepath.Join(m.dir, "d"))
		td += ls(dir)
	}
	b.ReportMetric(td.Seconds()/tm.Seconds(), "mount/direct")
}

// BenchmarkMountColdS3: a cold epoch of the small files from a real S3
// server through the mount, without and with --prefetch, against a
// parallel SDK download of the same objects (what `aws s3 cp --recursive`
// does), each on a fresh cluster. Two servers: the S3 server itself on
// loopback, where the epoch is bound by this machine's CPU, and the same
// server behind a proxy that holds each request for GRANARY_BENCH_S3_LATENCY
// (default 20ms) first, as an object store across a network does, where
// the epoch is bound by requests in flight.
func BenchmarkMountColdS3(b *testing.B) {
	if s3srv == nil {
		b.Skip("no S3 server")
	}
	dir, small, _ := benchTree(b)
	n := min(len(small), benchEnv("GRANARY_BENCH_S3_FILES", 20000))
	small = small[:n]
	ctx := context.Background()
	bucket := fmt.Sprintf("bench%d", time.Now().UnixNano())
	if err := s3srv.CreateBucket(ctx, bucket); err != nil {
		b.Fatal(err)
	}
	var wg sync.WaitGroup
	work := make(chan string)
	for range 16 {
		wg.Go(func() {
			for name := range work {
				data, _ := os.ReadFile(filepath.Join(dir, name))
				if err := s3srv.Put(ctx, bucket, name, data); err != nil {
					b.Error(err)
				}
			}
		})
	}
	for _, name := range small {
		work <- name
	}
	close(work)
	wg.Wait()
	latency := 20 * time.Millisecond
	if v := os.Getenv("GRANARY_BENCH_S3_LATENCY"); v != "" {
		var err error
		if latency, err = time.ParseDuration(v); err != nil {
			b.Fatalf("GRANARY_BENCH_S3_LATENCY: %v", err)
		}
	}
	b.Run("loopback", func(b *testing.B) { coldS3(b, s3srv.Endpoint, bucket, small) })
	b.Run("latency="+latency.String(), func(b *testing.B) { coldS3(b, latencyProxy(b, s3srv.Endpoint, latency), bucket, small) })
}

func coldS3(b *testing.B, endpoint, bucket string, small []string) {
	ctx := context.Background()
	sdk := s3.New(s3.Options{BaseEndpoint: aws.String(endpoint), Region: "us-east-1", UsePathStyle: true,
		Credentials: credentials.NewStaticCredentialsProvider(s3test.AccessKey, s3test.SecretKey, "")})
	download := func() time.Duration {
		start := time.Now()
		var wg sync.WaitGroup
		work := make(chan string)
		for range 16 {
			wg.Go(func() {
				for name := range work {
					out, err := sdk.GetObject(ctx, &s3.GetObjectInput{Bucket: &bucket, Key: aws.String(name)})
					if err != nil {
						b.Error(err)
						continue
					}
					io.Copy(io.Discard, out.Body)
					out.Body.Close()
				}
			})
		}
		for _, name := range small {
			work <- name
		}
		close(work)
		wg.Wait()
		return time.Since(start)
	}
	// A cold epoch through a fresh one-worker cluster and mount.
	cold := func(args ...string) time.Duration {
		c := s3BenchClusterAt(b, endpoint, bucket)
		m := c.mount(b, args...)
		start := time.Now()
		epoch(b, filepath.Join(m.dir, "s3"), small, 16, 1)
		took := time.Since(start)
		m.stop()
		c.stopAll()
		return took
	}
	var tm, tp, ts time.Duration
	b.ResetTimer()
	for b.Loop() {
		tm += cold()
		tp += cold("--prefetch")
		ts += download()
	}
	b.ReportMetric(ts.Seconds()/tm.Seconds(), "mount/sdk")
	b.ReportMetric(ts.Seconds()/tp.Seconds(), "prefetch/sdk")
	b.ReportMetric(tm.Seconds()/tp.Seconds(), "prefetch/mount")
	b.ReportMetric(float64(b.N*len(small))/tm.Seconds(), "mount_files/s")
	b.ReportMetric(float64(b.N*len(small))/tp.Seconds(), "prefetch_files/s")
	b.ReportMetric(float64(b.N*len(small))/ts.Seconds(), "sdk_files/s")
}

// latencyProxy serves target's requests through a loopback proxy that
// holds each one for delay before passing it on (the Host header kept, so
// that signatures still match); it stops with the benchmark.
func latencyProxy(b *testing.B, target string, delay time.Duration) string {
	u, err := url.Parse(target)
	if err != nil {
		b.Fatal(err)
	}
	rp := &httputil.ReverseProxy{Rewrite: func(r *httputil.ProxyRequest) {
		r.SetURL(u)
		r.Out.Host = r.In.Host
	}, Transport: &http.Transport{MaxIdleConnsPerHost: 256}}
	addr := freeAddr(b)
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(delay)
		rp.ServeHTTP(w, r)
	})}
	go srv.Serve(ln)
	b.Cleanup(func() { srv.Close() })
	return "http://" + addr
}

// s3BenchCluster starts a fresh one-worker cluster over a bucket of the
// test's S3 server (dataset "s3", the default block size), with a MEM tier
// (tmpfs) as `granary up` gives: creating a block file there is far cheaper
// than on ext4.
func s3BenchCluster(b *testing.B, bucket string) *cluster {
	return s3BenchClusterAt(b, s3srv.Endpoint, bucket)
}

// s3BenchClusterAt is s3BenchCluster with the S3 server at endpoint.
func s3BenchClusterAt(b *testing.B, endpoint, bucket string) *cluster {
	// The defaults: the harness writes block_size, which would otherwise
	// turn whole-file blocks off.
	return startCluster(b, clusterOpts{workers: 1, blockSize: config.DefaultBlockSize, pageSize: 4 << 20,
		datasets: fmt.Sprintf("  - name: s3\n    ufs: s3://%s\n    whole_file: %d\n    options: {endpoint: %q, path_style: true, access_key: %q, secret_key: %q}\n",
			bucket, config.DefaultWholeFile, endpoint, s3test.AccessKey, s3test.SecretKey),
		tiers: func(_ int, d string) string { return benchTiers(b, d) }})
}

// benchTiers are the tiers of a benchmark's worker: MEM in a directory of
// /dev/shm (on which the worker mounts a tmpfs of huge pages), SSD in d.
func benchTiers(b *testing.B, d string) string {
	mem, err := os.MkdirTemp("/dev/shm", "granary-bench")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { unmountLeft(mem); os.RemoveAll(mem) })
	return fmt.Sprintf("    - {name: MEM, path: %s, quota: 8GiB}\n    - {name: SSD, path: %s/ssd, quota: 64GiB}\n", mem, d)
}
