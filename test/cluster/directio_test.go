package cluster

import (
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// TestMountColdLargeDirectIO: the first open of a large file not cached
// yet (one block, larger than a worker fetches before it answers an open,
// so read through granary while the worker fetches it whole) is answered
// with direct I/O, so that its bytes leave no copy in the page cache of
// the mount's inode; a shared mapping of such a file still reads right
// (numpy.memmap maps files so); the next open, the block cached, is
// passthrough. A mount without passthrough keeps the page cache, which
// is then the warm copy (and shows that the test sees cached pages). On a
// kernel without FUSE passthrough or without DIRECT_IO_ALLOW_MMAP (before
// Linux 6.6), every open keeps the page cache.
func TestMountColdLargeDirectIO(t *testing.T) {
	needFUSE(t)
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(7, 13))
	files := map[string][]byte{}
	// Larger than the blocks a worker fetches at an open (64 MiB).
	sizes := map[string]int{"big/read.bin": 72<<20 + 4321, "big/mapped.bin": 66 << 20, "big/small-reads.bin": 66 << 20, "big/kept.bin": 65 << 20}
	for name, size := range sizes {
		data := make([]byte, size)
		for i := range data {
			data[i] = byte(rng.Uint32())
		}
		files[name] = data
		if err := os.MkdirAll(filepath.Dir(filepath.Join(dir, name)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	c := startCluster(t, clusterOpts{workers: 1, blockSize: 128 << 20, pageSize: 1 << 20,
		tiers: func(_ int, d string) string {
			return fmt.Sprintf("    - {name: MEM, path: %s/mem, quota: 384MiB}\n", d)
		},
		datasets: fmt.Sprintf("  - {name: d, ufs: \"file://%s\", open_mode: passthrough}\n", dir)})
	m := c.mount(t)
	root := filepath.Join(m.dir, "d")
	direct := m.stats(t).Mount.DirectIOSupported

	// cached reads name through a mount and reports how many of its pages
	// the page cache of the mount's inode holds, with the file still open.
	cached := func(root, name string) int64 {
		t.Helper()
		f, err := os.Open(filepath.Join(root, name))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		got, err := io.ReadAll(struct{ io.Reader }{f}) // plain reads, 512 bytes and up
		if err != nil || !bytes.Equal(got, files[name]) {
			t.Fatalf("%s: %d bytes, %v; want its %d bytes", name, len(got), err, len(files[name]))
		}
		var cs unix.Cachestat_t
		if err := unix.Cachestat(uint(f.Fd()), &unix.CachestatRange{}, &cs, 0); err != nil {
			t.Fatalf("cachestat %s: %v", name, err)
		}
		return int64(cs.Cache)
	}
	pages := cached(root, "big/read.bin")
	after := m.stats(t).Mount
	if direct {
		if after.DirectOpens != 1 {
			t.Errorf("%d direct I/O opens for a cold large file; want 1", after.DirectOpens)
		}
		if pages != 0 {
			t.Errorf("a cold large file read by direct I/O left %d pages in the page cache; want none", pages)
		}
	} else {
		t.Log("the kernel offers no FUSE passthrough or no DIRECT_IO_ALLOW_MMAP: cold opens keep the page cache")
		if after.DirectOpens != 0 {
			t.Errorf("%d direct I/O opens on a kernel that cannot map such files", after.DirectOpens)
		}
	}

	// Without passthrough the page cache is the warm copy.
	other := c.mount(t, "--no-passthrough")
	if n := cached(filepath.Join(other.dir, "d"), "big/read.bin"); n == 0 {
		t.Error("a mount without passthrough left no page of a file read in the page cache")
	}
	if st := other.stats(t).Mount; st.DirectOpens != 0 {
		t.Errorf("a mount without passthrough made %d direct I/O opens", st.DirectOpens)
	}

	// Nor with --no-direct-io.
	kept := c.mount(t, "--no-direct-io")
	if n := cached(filepath.Join(kept.dir, "d"), "big/kept.bin"); n == 0 {
		t.Error("a mount with --no-direct-io left no page of a cold large file in the page cache")
	}
	if st := kept.stats(t).Mount; st.DirectOpens != 0 || st.DirectIOSupported {
		t.Errorf("a mount with --no-direct-io: %d direct I/O opens, supported %v", st.DirectOpens, st.DirectIOSupported)
	}

	// Small reads of a file opened with direct I/O are counted.
	if direct {
		f, err := os.Open(filepath.Join(root, "big/small-reads.bin"))
		if err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 4096)
		for off := 0; off < 1<<20; off += len(buf) {
			if _, err := io.ReadFull(f, buf); err != nil || !bytes.Equal(buf, files["big/small-reads.bin"][off:off+len(buf)]) {
				t.Fatalf("4 KiB read at %d: %v (or wrong bytes)", off, err)
			}
		}
		f.Close()
		if n := m.stats(t).Mount.SmallDirectReads; n < 256 {
			t.Errorf("%d small direct reads counted after 256 reads of 4 KiB", n)
		}
	}

	// A shared mapping of a cold large file.
	f, err := os.Open(filepath.Join(root, "big/mapped.bin"))
	if err != nil {
		t.Fatal(err)
	}
	want := files["big/mapped.bin"]
	mapped, err := syscall.Mmap(int(f.Fd()), 0, len(want), syscall.PROT_READ, syscall.MAP_SHARED)
	if err != nil {
		t.Fatalf("mmap(MAP_SHARED) of a cold large file: %v", err)
	}
	if !bytes.Equal(mapped, want) {
		t.Error("a shared mapping of a cold large file reads wrong bytes")
	}
	syscall.Munmap(mapped)
	f.Close()

	// Cached now: the next open is passthrough, and reads right.
	if direct {
		pt := m.stats(t).Mount.PassthroughOpens
		got, err := os.ReadFile(filepath.Join(root, "big/read.bin"))
		if err != nil || !bytes.Equal(got, files["big/read.bin"]) {
			t.Fatalf("big/read.bin once cached: %d bytes, %v", len(got), err)
		}
		if m.stats(t).Mount.PassthroughOpens != pt+1 {
			t.Error("the open of a large file after its cold read was not passthrough")
		}
	}
}
