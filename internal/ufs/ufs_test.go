package ufs_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"iter"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/common/expfmt"

	"github.com/granary-cache/granary/internal/ufs"
)

func TestCleanPath(t *testing.T) {
	ok := map[string]string{
		"": "", "/": "", ".": "", "a": "a", "/a/b/": "a/b", "a//b": "a/b", "./a/./b": "a/b",
		"a/../b": "b", "a/b/..": "a", "a%2Fb": "a%2Fb", "..%2F..%2Fetc": "..%2F..%2Fetc",
		"with space/ü": "with space/ü", `back\slash`: `back\slash`, "a/..": "",
	}
	for in, want := range ok {
		got, err := ufs.CleanPath(in)
		if err != nil || got != want {
			t.Errorf("CleanPath(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"..", "/..", "../etc/passwd", "a/../../b", "/a/b/../../../c", "a\x00b", "\x00"} {
		if got, err := ufs.CleanPath(in); !errors.Is(err, ufs.ErrInvalidPath) {
			t.Errorf("CleanPath(%q) = %q, %v; want ErrInvalidPath", in, got, err)
		}
	}
}

func TestParseURI(t *testing.T) {
	ok := map[string]ufs.URI{
		"file:///data/x":           {Scheme: "file", Path: "/data/x"},
		"file:///data/x/":          {Scheme: "file", Path: "/data/x"},
		"file:///":                 {Scheme: "file", Path: "/"},
		"file:///data/with space":  {Scheme: "file", Path: "/data/with space"},
		"s3://bucket":              {Scheme: "s3", Host: "bucket"},
		"s3://bucket/":             {Scheme: "s3", Host: "bucket"},
		"s3://bucket/a/b/":         {Scheme: "s3", Host: "bucket", Path: "a/b"},
		"s3://bucket/a%2Fb":        {Scheme: "s3", Host: "bucket", Path: "a%2Fb"},
		"cephfs://cephfs/datasets": {Scheme: "cephfs", Host: "cephfs", Path: "/datasets"},
		"cephfs:///datasets":       {Scheme: "cephfs", Path: "/datasets"},
	}
	for in, want := range ok {
		got, err := ufs.ParseURI(in)
		if err != nil || got != want {
			t.Errorf("ParseURI(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
	bad := map[string]string{
		"/data/x":               "not a URI",
		"hdfs://nn/x":           "unknown scheme",
		"file://data/x":         "absolute path",
		"file:///data/../etc":   "not clean",
		"file:///a//b":          "not clean",
		"s3:///prefix":          "missing bucket",
		"s3://host:9000/bucket": "not a bucket name",
		"s3://b/a/../../x":      "not clean",
		"s3://b/a//x":           "not clean",
		"file:///a\x00b":        "NUL",
	}
	for in, want := range bad {
		_, err := ufs.ParseURI(in)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseURI(%q) = %v; want an error containing %q", in, err, want)
		}
	}
}

func TestErrorClasses(t *testing.T) {
	cases := []struct {
		err  error
		cls  ufs.Class
		is   error
		retr bool
	}{
		{ufs.NewError("stat", "a", ufs.ClassNotExist, errors.New("gone")), ufs.ClassNotExist, fs.ErrNotExist, false},
		{ufs.NewError("read", "a", ufs.ClassPermission, errors.New("denied")), ufs.ClassPermission, fs.ErrPermission, false},
		{ufs.NewError("read", "a", ufs.ClassRetryable, errors.New("503")), ufs.ClassRetryable, nil, true},
		{ufs.NewError("read", "a", ufs.ClassNone, context.Canceled), ufs.ClassCanceled, context.Canceled, false},
		{ufs.NewError("read", "a", ufs.ClassNone, ufs.ErrVersionChanged), ufs.ClassVersionChanged, ufs.ErrVersionChanged, false},
		{fs.ErrNotExist, ufs.ClassNotExist, fs.ErrNotExist, false},
		{errors.New("odd"), ufs.ClassFatal, nil, false},
	}
	for _, c := range cases {
		if got := ufs.ClassOf(c.err); got != c.cls {
			t.Errorf("ClassOf(%v) = %v; want %v", c.err, got, c.cls)
		}
		if c.is != nil && !errors.Is(c.err, c.is) {
			t.Errorf("errors.Is(%v, %v) = false", c.err, c.is)
		}
		if ufs.IsRetryable(c.err) != c.retr {
			t.Errorf("IsRetryable(%v) = %v", c.err, !c.retr)
		}
	}
	if ufs.ClassOf(nil) != ufs.ClassNone || ufs.NewError("x", "y", ufs.ClassFatal, nil) != nil {
		t.Error("nil errors must stay nil")
	}
	if s := ufs.NewError("stat", "", ufs.ClassFatal, errors.New("boom")).Error(); s != "stat /: boom" {
		t.Errorf("Error() = %q", s)
	}
}

// memFS is an in-memory FS for testing the wrappers' logic: one directory of
// files, listed in pages of two, with an optional delay per request.
type memFS struct {
	files    map[string][]byte
	delay    time.Duration
	inflight atomic.Int32
	peak     atomic.Int32
}

func (m *memFS) enter() func() {
	n := m.inflight.Add(1)
	for {
		p := m.peak.Load()
		if n <= p || m.peak.CompareAndSwap(p, n) {
			break
		}
	}
	time.Sleep(m.delay)
	return func() { m.inflight.Add(-1) }
}

func (m *memFS) Stat(ctx context.Context, name string) (ufs.FileInfo, error) {
	defer m.enter()()
	b, ok := m.files[name]
	if !ok {
		return ufs.FileInfo{}, ufs.NewError("stat", name, ufs.ClassNotExist, fs.ErrNotExist)
	}
	return ufs.FileInfo{Name: name, Size: int64(len(b)), Version: "v1"}, nil
}

func (m *memFS) List(ctx context.Context, dir string) iter.Seq2[[]ufs.FileInfo, error] {
	return func(yield func([]ufs.FileInfo, error) bool) {
		var page []ufs.FileInfo
		for name, b := range m.files {
			page = append(page, ufs.FileInfo{Name: name, Size: int64(len(b))})
			if len(page) == 2 {
				done := m.enter()
				done()
				if !yield(page, nil) {
					return
				}
				page = nil
			}
		}
		if len(page) > 0 {
			yield(page, nil)
		}
	}
}

func (m *memFS) ReadRange(ctx context.Context, name string, r ufs.Range) (io.ReadCloser, error) {
	done := m.enter()
	b, ok := m.files[name]
	if !ok {
		done()
		return nil, ufs.NewError("read", name, ufs.ClassNotExist, fs.ErrNotExist)
	}
	return &doneCloser{Reader: bytes.NewReader(b[r.Off:]), done: done}, nil
}

func (m *memFS) Close() error { return nil }

type doneCloser struct {
	io.Reader
	done func()
}

func (d *doneCloser) Close() error { d.done(); return nil }

func TestInstrument(t *testing.T) {
	reg := prometheus.NewRegistry()
	metrics := ufs.NewMetrics(reg)
	mem := &memFS{files: map[string][]byte{"a": []byte("hello"), "b": nil, "c": nil}}
	in := ufs.Instrument(mem, "demo", metrics)
	ctx := context.Background()

	in.Stat(ctx, "a")
	in.Stat(ctx, "missing")
	for range in.List(ctx, "") {
	}
	rc, err := in.ReadRange(ctx, "a", ufs.Range{Len: -1})
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, rc)
	rc.Close()
	in.ReadRange(ctx, "missing", ufs.Range{Len: -1})

	want := ufs.Stats{Stat: 2, List: 2, Read: 2, BytesRead: 5, Errors: 2}
	if got := in.Stats(); got != want {
		t.Errorf("Stats = %+v; want %+v", got, want)
	}
	if n := testutil.CollectAndCount(reg, "granary_ufs_errors_total"); n != 3*len(ufs.Classes()) {
		t.Errorf("%d error series; want one per op and class from the start", n)
	}
	out, _ := testutil.CollectAndFormat(reg, expfmt.TypeTextPlain, "granary_ufs_errors_total", "granary_ufs_operations_total", "granary_ufs_read_bytes_total")
	for _, line := range []string{
		`granary_ufs_operations_total{dataset="demo",op="stat"} 2`,
		`granary_ufs_operations_total{dataset="demo",op="list"} 2`,
		`granary_ufs_errors_total{class="not_exist",dataset="demo",op="read"} 1`,
		`granary_ufs_read_bytes_total{dataset="demo"} 5`,
	} {
		if !strings.Contains(string(out), line) {
			t.Errorf("metrics lack %s:\n%s", line, out)
		}
	}
}

func TestLimitInflight(t *testing.T) {
	mem := &memFS{files: map[string][]byte{"a": make([]byte, 100)}, delay: 5 * time.Millisecond}
	fsys := ufs.Limit(mem, ufs.Limits{MaxInflight: 3})
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() {
			rc, err := fsys.ReadRange(context.Background(), "a", ufs.Range{Len: -1})
			if err != nil {
				t.Error(err)
				return
			}
			time.Sleep(2 * time.Millisecond) // the body is still being read
			rc.Close()
			fsys.Stat(context.Background(), "a")
		})
	}
	wg.Wait()
	if p := mem.peak.Load(); p > 3 || p < 1 {
		t.Errorf("peak concurrency %d; want at most 3", p)
	}
	// A slot is given back once, however many times a body is closed.
	rc, _ := fsys.ReadRange(context.Background(), "a", ufs.Range{})
	rc.Close()
	rc.Close()
}

func TestLimitBlocksUntilCancelled(t *testing.T) {
	mem := &memFS{files: map[string][]byte{"a": make([]byte, 1<<20)}}
	ctx := context.Background()

	full := ufs.Limit(mem, ufs.Limits{MaxInflight: 1})
	held, err := full.ReadRange(ctx, "a", ufs.Range{})
	if err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if _, err := full.Stat(short, "a"); ufs.ClassOf(err) != ufs.ClassCanceled {
		t.Errorf("Stat with every slot taken = %v; want it to wait until cancelled", err)
	}
	held.Close()
	if _, err := full.Stat(ctx, "a"); err != nil {
		t.Errorf("Stat after the slot was freed: %v", err)
	}

	// One metadata op per second, burst 1: the second stat must wait.
	slow := ufs.Limit(mem, ufs.Limits{MetadataOpsPerSecond: 1})
	if _, err := slow.Stat(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	short2, cancel2 := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel2()
	if _, err := slow.Stat(short2, "a"); ufs.ClassOf(err) != ufs.ClassCanceled {
		t.Errorf("second Stat within the rate = %v; want it held back", err)
	}
	var listErr error
	for _, err := range slow.List(short2, "") {
		listErr = err
	}
	if ufs.ClassOf(listErr) != ufs.ClassCanceled {
		t.Errorf("List within the rate = %v; want it held back", listErr)
	}

	// 64 KiB/s: reading 1 MiB cannot finish in 50 ms.
	bw := ufs.Limit(mem, ufs.Limits{BytesPerSecond: 64 << 10})
	short3, cancel3 := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel3()
	rc, err := bw.ReadRange(short3, "a", ufs.Range{Len: -1})
	if err != nil {
		t.Fatal(err)
	}
	n, err := io.Copy(io.Discard, rc)
	rc.Close()
	if ufs.ClassOf(err) != ufs.ClassCanceled || n >= 1<<20 {
		t.Errorf("read 1 MiB at 64 KiB/s in 50ms: %d bytes, %v; want it held back", n, err)
	}
}

func TestLimitNoneIsIdentity(t *testing.T) {
	mem := &memFS{}
	if ufs.Limit(mem, ufs.Limits{}) != ufs.FS(mem) {
		t.Error("Limit with no limits should return the FS itself")
	}
}
