//go:build cephfs

package cephfs_test

import (
	"context"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/granary-cache/granary/internal/cephtest"
	"github.com/granary-cache/granary/internal/ufs"
	"github.com/granary-cache/granary/internal/ufs/cephfs"
)

// BenchmarkHandles weighs the one mount handle per dataset that granary
// uses (one MDS session, whatever the number of readers) against a pool of
// four: 16 readers read 256 files of 100 KiB through each, alternately, in
// the same iterations. libcephfs serialises a client on its lock, so a pool
// would only pay if that lock were the bottleneck.
func BenchmarkHandles(b *testing.B) {
	dir := cephtest.Dir(b)
	const files, size, readers = 256, 100 << 10, 16
	content := strings.Repeat("x", size)
	tr := map[string]string{}
	for i := range files {
		tr[fmt.Sprintf("d%d/f%03d", i%8, i)] = content
	}
	root := tree(b, dir, tr)
	open := func(n int) []*cephfs.FS {
		pool := make([]*cephfs.FS, n)
		for i := range pool {
			fsys, err := cephfs.Open(root, cephfs.Options{Conf: cephtest.Conf(dir), IdleUnmount: -1})
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { fsys.Close() })
			pool[i] = fsys
		}
		return pool
	}
	names := make([]string, 0, files)
	for name := range tr {
		names = append(names, name)
	}
	read := func(pool []*cephfs.FS) time.Duration {
		start := time.Now()
		work := make(chan int)
		var wg sync.WaitGroup
		for range readers {
			wg.Go(func() {
				for i := range work {
					rc, err := pool[i%len(pool)].ReadRange(context.Background(), names[i], ufs.Range{Len: -1})
					if err != nil {
						b.Error(err)
						continue
					}
					if n, err := io.Copy(io.Discard, rc); err != nil || n != size {
						b.Errorf("read %s: %d bytes, %v", names[i], n, err)
					}
					rc.Close()
				}
			})
		}
		for i := range names {
			work <- i
		}
		close(work)
		wg.Wait()
		return time.Since(start)
	}
	one, four := open(1), open(4)
	read(one) // the first pass fetches from the OSD; the others measure the clients
	read(four)
	var t1, t4 time.Duration
	for b.Loop() {
		t1 += read(one)
		t4 += read(four)
	}
	mb := float64(b.N*files*size) / 1e6
	b.ReportMetric(mb/t1.Seconds(), "MB/s_1handle")
	b.ReportMetric(mb/t4.Seconds(), "MB/s_4handles")
	b.ReportMetric(t1.Seconds()/t4.Seconds(), "4handles/1handle")
}
