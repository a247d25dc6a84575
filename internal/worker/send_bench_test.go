package worker

import (
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"testing"

	"github.com/granary-cache/granary/internal/wire"
)

// BenchmarkBlockRead measures what checking every page at every send costs:
// warm 128 KiB range reads of a cached 64 MiB block over HTTP, served by the
// worker (each page read into a buffer and checked against its CRC32C, then
// written) and, in the same run, by the send path it replaced (the range
// sent from the block file by sendfile, unchecked). A page is checked whole,
// so a read smaller than a page costs a page's read and CRC: the page size
// decides the price.
//
//	go test -run XXX -bench BlockRead ./internal/worker/
func BenchmarkBlockRead(b *testing.B) {
	const (
		blockSize = 64 << 20
		readSize  = 128 << 10
	)
	for _, pageSize := range []int64{4 << 20, 1 << 20} {
		tw := startWorker(b, blockSize, pageSize, "  scrub_bytes_per_second: 0\n")
		tw.writeFile(b, "f.bin", blockSize)
		ref := tw.ref(b, "f.bin")
		hc := &http.Client{}
		tw.readHTTP(b, hc, ref, 0, blockSize) // warm: every page cached
		unchecked := tw.serveUnchecked(b)
		for _, c := range []struct{ name, addr string }{{"checked", tw.Addr()}, {"sendfile-unchecked", unchecked}} {
			b.Run(fmt.Sprintf("page=%dKiB/%s", pageSize>>10, c.name), func(b *testing.B) {
				r := rand.New(rand.NewPCG(1, 2))
				u := "http://" + c.addr + wire.PathBlock + "?" + ref.Query().Encode()
				buf := make([]byte, readSize)
				b.SetBytes(readSize)
				for b.Loop() {
					off := r.Int64N(blockSize/readSize) * readSize
					req, _ := http.NewRequest(http.MethodGet, u, nil)
					req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", off, off+readSize-1))
					resp, err := hc.Do(req)
					if err != nil {
						b.Fatal(err)
					}
					if _, err := io.ReadFull(resp.Body, buf); err != nil || resp.StatusCode != http.StatusPartialContent {
						b.Fatalf("HTTP %d: %v", resp.StatusCode, err)
					}
					resp.Body.Close()
				}
			})
		}
		hc.CloseIdleConnections()
	}
}

// serveUnchecked serves block ranges the way the worker did before pages
// were checked at every send, for the benchmark to compare with: the same
// request handling and loading, then sendfile from the block file.
func (tw *testWorker) serveUnchecked(tb testing.TB) string {
	w := tw.Worker
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	srv := &http.Server{Handler: w.instrument("bench", func(rw http.ResponseWriter, r *http.Request) {
		req, ok := w.parseBlockRequest(rw, r)
		if !ok {
			return
		}
		off, n, _, err := parseRange(r.Header.Get("Range"), req.blen)
		if err != nil {
			http.Error(rw, err.Error(), http.StatusRequestedRangeNotSatisfiable)
			return
		}
		ps := w.layout.PageSize
		req.first, req.last = int(off/ps), int((off+n-1)/ps)
		ld, err := w.load(r.Context(), req)
		if err != nil {
			wire.WriteError(rw, err)
			return
		}
		defer ld.close()
		if ld.file == nil || len(ld.mem) > 0 {
			http.Error(rw, "block not cached", http.StatusInternalServerError)
			return
		}
		rw.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		rw.WriteHeader(http.StatusPartialContent)
		if _, err := ld.file.Seek(off, io.SeekStart); err != nil {
			return
		}
		io.Copy(rw, io.LimitReader(ld.file.File, n)) // sendfile
	})}
	go srv.Serve(l)
	tb.Cleanup(func() { srv.Close() })
	return l.Addr().String()
}
