// Package ufstest is the conformance suite every UFS backend must pass: one
// table of cases run against a real instance of the storage (a directory, a
// real S3 server, a real Ceph cluster). A backend's test provides a Fixture
// that writes the test tree through the storage's own API, and the FS to test.
package ufstest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"testing"

	"github.com/granary-cache/granary/internal/ufs"
)

// Fixture writes the test tree into the storage under test, bypassing granary.
type Fixture interface {
	// WriteFile creates a file (object) at name, relative to the dataset root,
	// creating parent directories as the storage needs.
	WriteFile(ctx context.Context, name string, data []byte) error
	// Mkdir creates an empty directory (for S3: an empty "name/" marker object).
	Mkdir(ctx context.Context, name string) error
}

const (
	mib = 1 << 20
	// WideDirEntries is the size of the directory that forces listing
	// pagination past 1,000 entries.
	WideDirEntries = 5000
)

// Sizes are the file sizes of the tree: the edges of a 4 MiB page and a file
// of 130 MiB that spans several 64 MiB blocks.
var Sizes = map[string]int64{
	"sizes/zero":        0,
	"sizes/one":         1,
	"sizes/page-minus1": 4*mib - 1,
	"sizes/page":        4 * mib,
	"sizes/page-plus1":  4*mib + 1,
	"sizes/big":         130 * mib,
}

// Names are files whose names test escaping in every backend.
var Names = []string{
	"with space.txt",
	"ünïcödé-файл-数据.txt",
	"hash#tag",
	"question?mark",
	"percent%2Fslash",
	"100%",
	"..%2F..%2Fescape",
	"plus+sign&amp=1",
	"quote'\"s",
}

// DirFixture writes the tree into a directory: a local one, or the mount
// of a shared file system through its own client.
type DirFixture string

// WriteFile implements Fixture.
func (d DirFixture) WriteFile(_ context.Context, name string, data []byte) error {
	p := filepath.Join(string(d), name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	return os.WriteFile(p, data, 0o644)
}

// Mkdir implements Fixture.
func (d DirFixture) Mkdir(_ context.Context, name string) error {
	return os.MkdirAll(filepath.Join(string(d), name), 0o755)
}

// DeepFile is a file ten directories down.
const DeepFile = "deep/a/b/c/d/e/f/g/h/i/leaf.txt"

// Content returns the deterministic content of a test file.
func Content(name string, size int64) []byte {
	h := fnv.New64a()
	h.Write([]byte(name))
	seed := h.Sum64()
	r := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), byte(seed >> 16), byte(seed >> 24),
		byte(seed >> 32), byte(seed >> 40), byte(seed >> 48), byte(seed >> 56)})
	b := make([]byte, size)
	r.Read(b)
	return b
}

func wideName(i int) string { return fmt.Sprintf("wide/f%05d", i) }

// Populate writes the whole test tree. It is slow (a 130 MiB file, 5,000
// small files), so a backend test calls it once and runs every case on it.
func Populate(ctx context.Context, fx Fixture) error {
	for name, size := range Sizes {
		if err := fx.WriteFile(ctx, name, Content(name, size)); err != nil {
			return err
		}
	}
	for _, n := range Names {
		name := "names/" + n
		if err := fx.WriteFile(ctx, name, Content(name, 100)); err != nil {
			return err
		}
	}
	if err := fx.WriteFile(ctx, DeepFile, Content(DeepFile, 10)); err != nil {
		return err
	}
	if err := fx.Mkdir(ctx, "emptydir"); err != nil {
		return err
	}
	// The wide directory, written in parallel: remote stores are slow one
	// request at a time.
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	next := make(chan int)
	for range 16 {
		wg.Go(func() {
			for i := range next {
				if err := fx.WriteFile(ctx, wideName(i), []byte{byte(i)}); err != nil {
					select {
					case errs <- err:
					default:
					}
				}
			}
		})
	}
	for i := range WideDirEntries {
		next <- i
	}
	close(next)
	wg.Wait()
	select {
	case err := <-errs:
		return err
	default:
		return nil
	}
}

// Run runs every conformance case against fsys, which must show a tree
// written by Populate.
func Run(t *testing.T, fsys ufs.FS) {
	ctx := context.Background()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) { c.fn(t, ctx, fsys) })
	}
}

type testCase struct {
	name string
	fn   func(t *testing.T, ctx context.Context, fsys ufs.FS)
}

var cases = []testCase{
	{"StatRoot", testStatRoot},
	{"StatFiles", testStatFiles},
	{"StatDirs", testStatDirs},
	{"StatMissing", testStatMissing},
	{"ListRoot", testListRoot},
	{"ListNames", testListNames},
	{"ListWidePaginated", testListWide},
	{"ListEmptyAndMissing", testListEmptyAndMissing},
	{"ReadWhole", testReadWhole},
	{"ReadRanges", testReadRanges},
	{"ReadMissing", testReadMissing},
	{"ReadIfVersion", testReadIfVersion},
	{"ConcurrentReaders", testConcurrentReaders},
	{"CancelledContext", testCancelled},
}

func testStatRoot(t *testing.T, ctx context.Context, fsys ufs.FS) {
	fi, err := fsys.Stat(ctx, "")
	if err != nil {
		t.Fatalf("Stat(root): %v", err)
	}
	if !fi.IsDir() {
		t.Fatalf("root is not a directory: %v", fi.Mode)
	}
}

func testStatFiles(t *testing.T, ctx context.Context, fsys ufs.FS) {
	want := map[string]int64{DeepFile: 10}
	for n, s := range Sizes {
		want[n] = s
	}
	for _, n := range Names {
		want["names/"+n] = 100
	}
	for name, size := range want {
		fi, err := fsys.Stat(ctx, name)
		if err != nil {
			t.Errorf("Stat(%q): %v", name, err)
			continue
		}
		if fi.IsDir() || fi.Size != size || fi.Version == "" || fi.ModTime.IsZero() {
			t.Errorf("Stat(%q) = dir %v size %d version %q mtime %v; want a file of %d bytes with a version and mtime",
				name, fi.IsDir(), fi.Size, fi.Version, fi.ModTime, size)
		}
		if fi.Name != name {
			t.Errorf("Stat(%q).Name = %q", name, fi.Name)
		}
	}
}

func testStatDirs(t *testing.T, ctx context.Context, fsys ufs.FS) {
	for _, d := range []string{"sizes", "names", "deep", "deep/a/b/c", "wide", "emptydir"} {
		fi, err := fsys.Stat(ctx, d)
		if err != nil {
			t.Errorf("Stat(%q): %v", d, err)
			continue
		}
		if !fi.IsDir() {
			t.Errorf("Stat(%q) is not a directory", d)
		}
	}
}

func testStatMissing(t *testing.T, ctx context.Context, fsys ufs.FS) {
	for _, p := range []string{"missing", "sizes/missing", "missing/deeper/file", "sizes/one/child", "deep/a/b/c/d/e/f/g/h/i/leaf.tx"} {
		_, err := fsys.Stat(ctx, p)
		if !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("Stat(%q) = %v; want fs.ErrNotExist", p, err)
		}
		if ufs.ClassOf(err) != ufs.ClassNotExist {
			t.Errorf("Stat(%q): class %v; want not_exist", p, ufs.ClassOf(err))
		}
	}
}

// listAll collects a listing and its page count.
func listAll(ctx context.Context, fsys ufs.FS, dir string) ([]ufs.FileInfo, int, error) {
	var all []ufs.FileInfo
	pages := 0
	for page, err := range fsys.List(ctx, dir) {
		if err != nil {
			return all, pages, err
		}
		pages++
		all = append(all, page...)
	}
	sort.Slice(all, func(i, j int) bool { return all[i].Name < all[j].Name })
	return all, pages, nil
}

func names(fis []ufs.FileInfo) []string {
	out := make([]string, len(fis))
	for i, fi := range fis {
		out[i] = fi.Name
	}
	return out
}

func testListRoot(t *testing.T, ctx context.Context, fsys ufs.FS) {
	got, _, err := listAll(ctx, fsys, "")
	if err != nil {
		t.Fatalf("List(root): %v", err)
	}
	want := []string{"deep", "emptydir", "names", "sizes", "wide"}
	if !slices.Equal(names(got), want) {
		t.Fatalf("List(root) = %q; want %q", names(got), want)
	}
	for _, fi := range got {
		if !fi.IsDir() {
			t.Errorf("%q listed as a file", fi.Name)
		}
	}
}

func testListNames(t *testing.T, ctx context.Context, fsys ufs.FS) {
	got, _, err := listAll(ctx, fsys, "names")
	if err != nil {
		t.Fatalf("List(names): %v", err)
	}
	want := slices.Clone(Names)
	slices.Sort(want)
	if !slices.Equal(names(got), want) {
		t.Fatalf("List(names) = %q; want %q", names(got), want)
	}
	// A listing carries every child's attributes: what Stat would say.
	for _, fi := range got {
		st, err := fsys.Stat(ctx, "names/"+fi.Name)
		if err != nil {
			t.Errorf("Stat(names/%s): %v", fi.Name, err)
			continue
		}
		if fi.Size != 100 || fi.Size != st.Size || fi.Version != st.Version || fi.IsDir() {
			t.Errorf("listed %q: size %d version %q; Stat says size %d version %q",
				fi.Name, fi.Size, fi.Version, st.Size, st.Version)
		}
	}
	sizes, _, err := listAll(ctx, fsys, "sizes")
	if err != nil {
		t.Fatalf("List(sizes): %v", err)
	}
	for _, fi := range sizes {
		if want := Sizes["sizes/"+fi.Name]; fi.Size != want {
			t.Errorf("listed sizes/%s with size %d; want %d", fi.Name, fi.Size, want)
		}
	}
}

func testListWide(t *testing.T, ctx context.Context, fsys ufs.FS) {
	got, pages, err := listAll(ctx, fsys, "wide")
	if err != nil {
		t.Fatalf("List(wide): %v", err)
	}
	if len(got) != WideDirEntries {
		t.Fatalf("List(wide) returned %d entries; want %d", len(got), WideDirEntries)
	}
	for i, fi := range got {
		if want := wideName(i)[len("wide/"):]; fi.Name != want || fi.Size != 1 {
			t.Fatalf("entry %d = %q (%d bytes); want %q (1 byte)", i, fi.Name, fi.Size, want)
		}
	}
	// Paged: no single page holds the whole directory.
	if pages < 2 {
		t.Errorf("List(wide) came in %d page(s); want several (paged listing)", pages)
	}
	// Stopping early must work (and release the backend's resources).
	n := 0
	for page, err := range fsys.List(ctx, "wide") {
		if err != nil {
			t.Fatal(err)
		}
		n += len(page)
		break
	}
	if n == 0 || n >= WideDirEntries {
		t.Errorf("first page had %d entries", n)
	}
}

func testListEmptyAndMissing(t *testing.T, ctx context.Context, fsys ufs.FS) {
	got, _, err := listAll(ctx, fsys, "emptydir")
	if err != nil || len(got) != 0 {
		t.Errorf("List(emptydir) = %q, %v; want nothing", names(got), err)
	}
	deep, _, err := listAll(ctx, fsys, "deep/a/b/c/d/e/f/g/h/i")
	if err != nil || !slices.Equal(names(deep), []string{"leaf.txt"}) {
		t.Errorf("List(deep) = %q, %v", names(deep), err)
	}
	if _, _, err := listAll(ctx, fsys, "missing"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("List(missing) = %v; want fs.ErrNotExist", err)
	}
	if _, _, err := listAll(ctx, fsys, "sizes/one"); err == nil {
		t.Errorf("List of a file succeeded")
	}
}

func readAll(ctx context.Context, fsys ufs.FS, name string, r ufs.Range) ([]byte, error) {
	rc, err := fsys.ReadRange(ctx, name, r)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	return io.ReadAll(rc)
}

func testReadWhole(t *testing.T, ctx context.Context, fsys ufs.FS) {
	for name, size := range Sizes {
		got, err := readAll(ctx, fsys, name, ufs.Range{Len: -1})
		if err != nil {
			t.Errorf("read %s: %v", name, err)
			continue
		}
		if sha256.Sum256(got) != sha256.Sum256(Content(name, size)) {
			t.Errorf("read %s: %d bytes with the wrong content; want %d bytes", name, len(got), size)
		}
	}
	small := map[string][]byte{DeepFile: Content(DeepFile, 10)}
	for _, n := range Names {
		small["names/"+n] = Content("names/"+n, 100)
	}
	for name, want := range small {
		got, err := readAll(ctx, fsys, name, ufs.Range{Len: -1})
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("read %q: %d bytes, %v", name, len(got), err)
		}
	}
}

func testReadRanges(t *testing.T, ctx context.Context, fsys ufs.FS) {
	const name = "sizes/page-plus1"
	size := Sizes[name]
	content := Content(name, size)
	for _, r := range []struct{ off, len int64 }{
		{0, 1}, {0, 4096}, {1, 10}, {4*mib - 1, 2}, {4 * mib, 1}, {123457, 1 << 20},
		{size - 10, 100},       // crosses the end: cut
		{size - 1, -1},         // the last byte to the end
		{size, 10}, {size, -1}, // at the end: nothing
		{size + 100, 10}, // past the end: nothing
		{0, 0},           // empty
	} {
		got, err := readAll(ctx, fsys, name, ufs.Range{Off: r.off, Len: r.len})
		if err != nil {
			t.Errorf("ReadRange(%d, %d): %v", r.off, r.len, err)
			continue
		}
		end := size
		if r.len >= 0 {
			end = min(size, r.off+r.len)
		}
		want := content[min(r.off, size):max(end, min(r.off, size))]
		if !bytes.Equal(got, want) {
			t.Errorf("ReadRange(%d, %d): got %d bytes, want %d (content differs: %v)", r.off, r.len, len(got), len(want), len(got) == len(want))
		}
	}
	if got, err := readAll(ctx, fsys, "sizes/zero", ufs.Range{Len: 10}); err != nil || len(got) != 0 {
		t.Errorf("read of an empty file: %d bytes, %v", len(got), err)
	}
	if _, err := fsys.ReadRange(ctx, name, ufs.Range{Off: -1, Len: 1}); err == nil {
		t.Errorf("negative offset accepted")
	}
}

func testReadMissing(t *testing.T, ctx context.Context, fsys ufs.FS) {
	for _, p := range []string{"missing", "sizes/missing", "missing/deeper/file"} {
		_, err := readAll(ctx, fsys, p, ufs.Range{Len: -1})
		if !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("read %q = %v; want fs.ErrNotExist", p, err)
		}
	}
	if _, err := readAll(ctx, fsys, "sizes", ufs.Range{Len: -1}); err == nil {
		t.Errorf("read of a directory succeeded")
	}
}

func testReadIfVersion(t *testing.T, ctx context.Context, fsys ufs.FS) {
	const name = "sizes/page"
	fi, err := fsys.Stat(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	got, err := readAll(ctx, fsys, name, ufs.Range{Off: 5, Len: 5, IfVersion: fi.Version})
	if err != nil || !bytes.Equal(got, Content(name, Sizes[name])[5:10]) {
		t.Errorf("read at the current version: %v", err)
	}
	other, err := fsys.Stat(ctx, "sizes/page-minus1")
	if err != nil {
		t.Fatal(err)
	}
	_, err = readAll(ctx, fsys, name, ufs.Range{Len: 5, IfVersion: other.Version})
	if !errors.Is(err, ufs.ErrVersionChanged) {
		t.Errorf("read at another version = %v; want ErrVersionChanged", err)
	}
}

func testConcurrentReaders(t *testing.T, ctx context.Context, fsys ufs.FS) {
	const name = "sizes/big"
	size := Sizes[name]
	content := Content(name, size)
	var wg sync.WaitGroup
	for w := range 32 {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(w), 7))
			for range 8 {
				off := r.Int64N(size)
				n := r.Int64N(2*mib) + 1
				got, err := readAll(ctx, fsys, name, ufs.Range{Off: off, Len: n})
				if err != nil {
					t.Errorf("reader %d: ReadRange(%d, %d): %v", w, off, n, err)
					return
				}
				if !bytes.Equal(got, content[off:min(size, off+n)]) {
					t.Errorf("reader %d: ReadRange(%d, %d): wrong bytes", w, off, n)
					return
				}
			}
		})
	}
	wg.Wait()
}

func testCancelled(t *testing.T, ctx context.Context, fsys ufs.FS) {
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	check := func(op string, err error) {
		t.Helper()
		if !errors.Is(err, context.Canceled) || ufs.ClassOf(err) != ufs.ClassCanceled {
			t.Errorf("%s with a cancelled context = %v (class %v); want context.Canceled", op, err, ufs.ClassOf(err))
		}
	}
	_, err := fsys.Stat(cctx, "sizes/one")
	check("Stat", err)
	_, _, err = listAll(cctx, fsys, "wide")
	check("List", err)
	rc, err := fsys.ReadRange(cctx, "sizes/big", ufs.Range{Len: -1})
	if err == nil {
		// Some backends only notice on the first read of the body.
		_, err = io.ReadAll(rc)
		rc.Close()
	}
	check("ReadRange", err)

	// A read cancelled midway stops with an error rather than hanging.
	mctx, mcancel := context.WithCancel(ctx)
	rc, err = fsys.ReadRange(mctx, "sizes/big", ufs.Range{Len: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	buf := make([]byte, 1<<20)
	if _, err := io.ReadFull(rc, buf); err != nil {
		t.Fatal(err)
	}
	mcancel()
	if _, err := io.Copy(io.Discard, rc); err == nil {
		t.Logf("note: the backend finished a read already in flight after cancel (allowed)")
	}
}
