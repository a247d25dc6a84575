//go:build unix

package worker

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/granary-cache/granary/internal/block"
	"github.com/granary-cache/granary/internal/measure"
	"github.com/granary-cache/granary/internal/transport"
	"github.com/granary-cache/granary/internal/wire"
)

// Shape of BenchmarkRemoteHits.
const (
	hitFiles    = 256       // files of the working set, a block each
	hitSize     = 128 << 10 // bytes of each file, read whole
	hitReaders  = 16        // concurrent readers
	hitRequests = 20000     // requests per phase
	hitRounds   = 3         // rounds of the three phases
)

// BenchmarkRemoteHits reads warm 128 KiB blocks (256 files of 128 KiB, each
// its own block, in a memory tier) from a real worker over loopback with 16
// concurrent readers, over the framed protocol and over HTTP, against a raw
// loopback TCP request/response loop (an 8-byte request, a 128 KiB answer
// from memory) as the baseline. The raw loop runs twice: answering from 256
// buffers of 128 KiB in turn, the same working set as the worker's blocks
// ("raw", the like-for-like baseline), and from one buffer always
// ("raw_hot", whose bytes stay in the CPU's caches).
//
// Each phase makes a fixed number of requests, whatever b.N: run it with
// -benchtime 1x. The three phases run in rounds, in a rotated order, and
// the median of the rounds is reported. The worker runs in this process,
// so the CPU figures (getrusage of the process, user+sys) count the
// client's CPU as well as the worker's: hence "proc" in their names.
// GRANARY_BENCH_HITS_ONLY=framed (or http, raw) runs one phase alone five
// times, for a profiler.
func BenchmarkRemoteHits(b *testing.B) {
	tg := startTokenWorker(b)
	addr := tg.Addr()
	refs := make([]block.Ref, hitFiles)
	datas := make([][]byte, hitFiles)
	for i := range refs {
		d := make([]byte, hitSize)
		for j := range d {
			d[j] = byte(i*31 + j*7)
		}
		datas[i] = d
		refs[i] = tg.Put(b, fmt.Sprintf("hit-%03d.bin", i), d)
	}
	framed := transport.NewFramed(transport.Options{Token: tg.token})
	b.Cleanup(func() { framed.Close() })
	httpRd := transport.NewHTTP(transport.Options{Token: tg.token})
	b.Cleanup(func() { httpRd.Close() })
	raw := startRawServer(b, hitSize, hitFiles)

	// Warm: a first read of each file caches it; then both protocols must
	// see it as a memory hit, with the right bytes.
	ctx := context.Background()
	buf := make([]byte, hitSize)
	read := func(rd transport.Reader, i int) wire.Source {
		clear(buf)
		src, err := rd.Read(ctx, addr, wire.ReadRequest{Block: refs[i], Length: hitSize}, buf)
		if err != nil {
			b.Fatalf("read %d: %v", i, err)
		}
		if !bytes.Equal(buf, datas[i]) {
			b.Fatalf("read %d: wrong bytes", i)
		}
		return src
	}
	for i := range refs {
		read(framed, i)
	}
	for i := range refs {
		for _, rd := range []transport.Reader{framed, httpRd} {
			if src := read(rd, i); src != wire.SourceMem {
				b.Fatalf("read %d of a warm block: source %v, want mem", i, src)
			}
		}
	}

	hits := func(rd transport.Reader) func() error {
		return func() error {
			return concurrently(hitReaders, hitRequests, func() func(int) error {
				buf := make([]byte, hitSize)
				return func(n int) error {
					i := n % hitFiles
					_, err := rd.Read(ctx, addr, wire.ReadRequest{Block: refs[i], Length: hitSize}, buf)
					if err == nil && buf[hitSize-1] != datas[i][hitSize-1] {
						err = fmt.Errorf("read %d: wrong bytes", i)
					}
					return err
				}
			})
		}
	}
	phases := []struct {
		name string
		run  func() error
	}{
		{"framed", hits(framed)},
		{"http", hits(httpRd)},
		{"raw", func() error { return raw.fetch(hitReaders, hitRequests, hitFiles) }},
		{"raw_hot", func() error { return raw.fetch(hitReaders, hitRequests, 1) }},
	}
	if only := os.Getenv("GRANARY_BENCH_HITS_ONLY"); only != "" {
		// One phase alone, again and again, for a profiler to watch.
		for _, ph := range phases {
			if ph.name != only {
				continue
			}
			b.ResetTimer()
			t0 := time.Now()
			for range 5 {
				if err := ph.run(); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(5*hitRequests/time.Since(t0).Seconds(), only+"_req/s")
			return
		}
		b.Fatalf("GRANARY_BENCH_HITS_ONLY=%s: no such phase", only)
	}
	rates := make([][]float64, len(phases)) // req/s of each round
	cpus := make([][]float64, len(phases))  // process CPU s per GB of each round
	gb := float64(hitRequests) * hitSize / 1e9
	b.ResetTimer()
	for round := range hitRounds {
		for k := range phases {
			p := (round + k) % len(phases)
			runtime.GC() // the garbage of a phase is not the next one's to collect
			cpu0, t0 := measure.ProcessCPU(), time.Now()
			if err := phases[p].run(); err != nil {
				b.Fatalf("%s, round %d: %v", phases[p].name, round, err)
			}
			d, cpu := time.Since(t0), measure.ProcessCPU()-cpu0
			rates[p] = append(rates[p], hitRequests/d.Seconds())
			cpus[p] = append(cpus[p], cpu.Seconds()/gb)
		}
	}
	b.StopTimer()
	const fr, ht, rw, hot = 0, 1, 2, 3
	ratio := func(x, y int) float64 {
		r := make([]float64, hitRounds)
		for i := range r {
			r[i] = rates[x][i] / rates[y][i]
		}
		return measure.Median(r)
	}
	for p, ph := range phases {
		b.ReportMetric(measure.Median(rates[p]), ph.name+"_req/s")
		b.ReportMetric(measure.Median(cpus[p]), "proc_cpu_s_per_GB_"+ph.name)
	}
	b.ReportMetric(ratio(fr, rw), "framed/raw")
	b.ReportMetric(ratio(fr, hot), "framed/raw_hot")
	b.ReportMetric(ratio(ht, rw), "http/raw")
	b.ReportMetric(ratio(fr, ht), "framed/http")
}

// concurrently makes count calls spread over workers goroutines, each call
// given its number; newWorker builds each goroutine's function (and its
// buffer). It returns the first error, after every goroutine ended.
func concurrently(workers, count int, newWorker func() func(int) error) error {
	var next atomic.Int64
	var first error
	var once sync.Once
	var wg sync.WaitGroup
	for range workers {
		fn := newWorker()
		wg.Go(func() {
			for {
				n := int(next.Add(1) - 1)
				if n >= count {
					return
				}
				if err := fn(n); err != nil {
					once.Do(func() { first = err })
					next.Store(int64(count)) // the others stop too
					return
				}
			}
		})
	}
	wg.Wait()
	return first
}

// rawServer is the baseline: a loopback TCP server that answers each 8-byte
// request (the number of a buffer and a length, each 4 bytes big endian)
// with that many bytes of that buffer.
type rawServer struct {
	l    net.Listener
	size int
	bufs [][]byte

	mu    sync.Mutex
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

// startRawServer starts a raw server of count buffers of size bytes; it
// stops, its connections closed, at the end of the test.
func startRawServer(tb testing.TB, size, count int) *rawServer {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	s := &rawServer{l: l, size: size, conns: map[net.Conn]struct{}{}}
	for i := range count {
		s.bufs = append(s.bufs, bytes.Repeat([]byte{byte(i)}, size))
	}
	s.wg.Go(s.accept)
	tb.Cleanup(func() {
		l.Close()
		s.mu.Lock()
		for c := range s.conns {
			c.Close()
		}
		s.conns = nil
		s.mu.Unlock()
		s.wg.Wait()
	})
	return s
}

func (s *rawServer) accept() {
	for {
		c, err := s.l.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		if s.conns == nil { // stopping
			s.mu.Unlock()
			c.Close()
			return
		}
		s.conns[c] = struct{}{}
		s.mu.Unlock()
		s.wg.Go(func() {
			defer func() {
				s.mu.Lock()
				delete(s.conns, c)
				s.mu.Unlock()
				c.Close()
			}()
			var hdr [8]byte
			for {
				if _, err := io.ReadFull(c, hdr[:]); err != nil {
					return
				}
				i, n := binary.BigEndian.Uint32(hdr[:4]), binary.BigEndian.Uint32(hdr[4:])
				if int(i) >= len(s.bufs) || int(n) > s.size {
					return
				}
				if _, err := c.Write(s.bufs[i][:n]); err != nil {
					return
				}
			}
		})
	}
}

// fetch makes count requests of the server's size over conns connections,
// one goroutine each; request n reads buffer n%set.
func (s *rawServer) fetch(conns, count, set int) error {
	cs := make([]net.Conn, 0, conns)
	defer func() {
		for _, c := range cs {
			c.Close()
		}
	}()
	for range conns {
		c, err := net.Dial("tcp", s.l.Addr().String())
		if err != nil {
			return err
		}
		cs = append(cs, c)
	}
	var k atomic.Int32
	return concurrently(conns, count, func() func(int) error {
		c := cs[k.Add(1)-1]
		buf := make([]byte, s.size)
		var hdr [8]byte
		binary.BigEndian.PutUint32(hdr[4:], uint32(s.size))
		return func(n int) error {
			binary.BigEndian.PutUint32(hdr[:4], uint32(n%set))
			if _, err := c.Write(hdr[:]); err != nil {
				return err
			}
			_, err := io.ReadFull(c, buf)
			return err
		}
	})
}
