package cluster

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/granary-cache/granary/internal/client"
)

// Each benchmark measures granary and a baseline in the same iterations,
// alternating, and reports both rates and their ratio; absolute figures on a
// shared 2-core machine mean little.

const (
	benchBlock = 64 << 20
	benchPage  = 4 << 20
)

// benchCluster starts one worker with the default 64 MiB / 4 MiB layout over
// a directory holding files.
func benchCluster(b *testing.B, files map[string][]byte) *cluster {
	dir := b.TempDir()
	(&tree{files: files}).writeDir(b, dir)
	return startCluster(b, clusterOpts{workers: 1, blockSize: benchBlock, pageSize: benchPage,
		datasets: fmt.Sprintf("  - {name: d, ufs: \"file://%s\"}\n", dir),
		tiers: func(_ int, d string) string {
			return fmt.Sprintf("    - {name: MEM, path: %s/mem, quota: 2GiB}\n", d)
		}})
}

// rawServer is the baseline: a loopback TCP server that answers each 8-byte
// request (a length) with that many bytes from memory.
func rawServer(b *testing.B) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	data := make([]byte, benchPage)
	b.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				var hdr [8]byte
				for {
					if _, err := io.ReadFull(c, hdr[:]); err != nil {
						return
					}
					n := int(binary.LittleEndian.Uint64(hdr[:]))
					for n > 0 {
						k, err := c.Write(data[:min(n, len(data))])
						if err != nil {
							return
						}
						n -= k
					}
				}
			}()
		}
	}()
	return l.Addr().String()
}

// rawFetch makes count requests of size bytes over conns connections.
func rawFetch(b *testing.B, addr string, conns, count, size int) {
	var wg sync.WaitGroup
	work := make(chan struct{}, count)
	for range count {
		work <- struct{}{}
	}
	close(work)
	for range conns {
		wg.Go(func() {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				b.Error(err)
				return
			}
			defer c.Close()
			buf := make([]byte, size)
			var hdr [8]byte
			binary.LittleEndian.PutUint64(hdr[:], uint64(size))
			for range work {
				if _, err := c.Write(hdr[:]); err != nil {
					b.Error(err)
					return
				}
				if _, err := io.ReadFull(c, buf); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
}

// cpuSeconds is the user+system CPU time of a process so far.
func cpuSeconds(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	utime, _ := strconv.ParseFloat(f[11], 64)
	stime, _ := strconv.ParseFloat(f[12], 64)
	return (utime + stime) / 100 // USER_HZ
}

// BenchmarkWarmHit4MiB reads a warm 256 MiB file as 4 MiB ranges with 4
// readers from a worker over loopback, against a raw loopback TCP copy of
// the same bytes; it also reports the worker's CPU per GB served.
func BenchmarkWarmHit4MiB(b *testing.B) {
	const size, readers = 256 << 20, 4
	files := map[string][]byte{"big.bin": make([]byte, size)}
	for i := range files["big.bin"] {
		files["big.bin"][i] = byte(i * 7)
	}
	c := benchCluster(b, files)
	cl := c.client(false)
	raw := rawServer(b)
	f, err := cl.Open(context.Background(), "/d/big.bin")
	if err != nil {
		b.Fatal(err)
	}
	readFile := func() {
		var wg sync.WaitGroup
		offs := make(chan int64, size/benchPage)
		for off := int64(0); off < size; off += benchPage {
			offs <- off
		}
		close(offs)
		for range readers {
			wg.Go(func() {
				buf := make([]byte, benchPage)
				for off := range offs {
					if _, err := f.ReadAt(buf, off); err != nil && err != io.EOF {
						b.Error(err)
					}
				}
			})
		}
		wg.Wait()
	}
	readFile() // warm the cache
	pid := c.workers[0].cmd.Process.Pid
	var tGranary, tRaw time.Duration
	var cpu float64
	b.SetBytes(size)
	b.ResetTimer()
	for b.Loop() {
		start, cpu0 := time.Now(), cpuSeconds(pid)
		readFile()
		tGranary += time.Since(start)
		cpu += cpuSeconds(pid) - cpu0
		start = time.Now()
		rawFetch(b, raw, readers, size/benchPage, benchPage)
		tRaw += time.Since(start)
	}
	gb := float64(b.N) * size / 1e9
	b.ReportMetric(gb*1e3/tGranary.Seconds(), "granary_MB/s")
	b.ReportMetric(gb*1e3/tRaw.Seconds(), "raw_tcp_MB/s")
	b.ReportMetric(tRaw.Seconds()/tGranary.Seconds(), "granary/raw")
	b.ReportMetric(cpu/gb, "worker_cpu_s/GB")
}

// BenchmarkWarmSmallFiles reads 512 warm files of 128 KiB with 16 readers
// (open + whole read each), against a raw loopback request/response loop of
// 128 KiB answers.
func BenchmarkWarmSmallFiles(b *testing.B) {
	const n, size, readers = 512, 128 << 10, 16
	files := map[string][]byte{}
	for i := range n {
		d := make([]byte, size)
		d[0] = byte(i)
		files[fmt.Sprintf("small/%03d/f%04d.jpg", i%32, i)] = d
	}
	c := benchCluster(b, files)
	cl := c.client(false)
	raw := rawServer(b)
	names := make([]string, 0, n)
	for name := range files {
		names = append(names, "/d/"+name)
	}
	readAllFiles := func(cl *client.Client) {
		work := make(chan string, n)
		for _, p := range names {
			work <- p
		}
		close(work)
		var wg sync.WaitGroup
		for range readers {
			wg.Go(func() {
				buf := make([]byte, size)
				for p := range work {
					f, err := cl.Open(context.Background(), p)
					if err == nil {
						_, err = f.ReadAt(buf, 0)
					}
					if err != nil && err != io.EOF {
						b.Error(err)
					}
				}
			})
		}
		wg.Wait()
	}
	readAllFiles(cl) // warm the worker and the client's metadata
	var tGranary, tRaw time.Duration
	b.ResetTimer()
	for b.Loop() {
		start := time.Now()
		readAllFiles(cl)
		tGranary += time.Since(start)
		start = time.Now()
		rawFetch(b, raw, readers, n, size)
		tRaw += time.Since(start)
	}
	b.ReportMetric(float64(b.N*n)/tGranary.Seconds(), "granary_files/s")
	b.ReportMetric(float64(b.N*n)/tRaw.Seconds(), "raw_req/s")
	b.ReportMetric(tRaw.Seconds()/tGranary.Seconds(), "granary/raw")
}

// BenchmarkShortCircuit reads a warm 4-block file through the client's
// short-circuit path, a block per read, against os.ReadFile of the same
// block files.
func BenchmarkShortCircuit(b *testing.B) {
	const size = 4 * benchBlock
	files := map[string][]byte{"big.bin": make([]byte, size)}
	for i := range files["big.bin"] {
		files["big.bin"][i] = byte(i * 13)
	}
	c := benchCluster(b, files)
	cl := c.client(true)
	f, err := cl.Open(context.Background(), "/d/big.bin")
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, benchBlock)
	readBlocks := func() {
		for off := int64(0); off < size; off += benchBlock {
			if _, err := f.ReadAt(buf, off); err != nil && err != io.EOF {
				b.Fatal(err)
			}
		}
	}
	readBlocks() // cache, open and verify the block files
	blocks, _ := filepath.Glob(filepath.Join(c.workers[0].dir, "mem", "blocks", "*", "*"))
	if len(blocks) != 4 || cl.Stats().ShortCircuitReads == 0 {
		b.Fatalf("%d block files, stats %+v", len(blocks), cl.Stats())
	}
	var tShort, tFile time.Duration
	b.SetBytes(size)
	b.ResetTimer()
	for b.Loop() {
		start := time.Now()
		readBlocks()
		tShort += time.Since(start)
		start = time.Now()
		for _, p := range blocks {
			if _, err := os.ReadFile(p); err != nil {
				b.Fatal(err)
			}
		}
		tFile += time.Since(start)
	}
	b.ReportMetric(tFile.Seconds()/tShort.Seconds(), "short_circuit/readfile")
}
