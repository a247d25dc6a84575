package s3_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/granary-cache/granary/internal/s3test"
	"github.com/granary-cache/granary/internal/ufs"
	"github.com/granary-cache/granary/internal/ufs/s3"
	"github.com/granary-cache/granary/internal/ufs/ufstest"
)

// server is one versitygw shared by the tests of this package.
var server *s3test.Server

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "granary-s3-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	server, err = s3test.StartServer(dir)
	if err != nil {
		if s3test.Required() {
			fmt.Fprintln(os.Stderr, "s3 tests need a real S3 server:", err)
			os.Exit(1)
		}
		fmt.Fprintln(os.Stderr, "skipping the S3 tests that need a server:", err)
	}
	code := m.Run()
	if server != nil {
		server.Stop()
	}
	os.RemoveAll(dir)
	os.Exit(code)
}

func needServer(t testing.TB) *s3test.Server {
	t.Helper()
	if server == nil {
		t.Skip("no S3 server (versitygw); run test/run.sh")
	}
	return server
}

func opts() s3.Options {
	return s3.Options{Endpoint: server.Endpoint, PathStyle: true, AccessKey: s3test.AccessKey, SecretKey: s3test.SecretKey}
}

// bucketFixture writes the conformance tree as objects below a prefix.
type bucketFixture struct {
	srv            *s3test.Server
	bucket, prefix string
}

func (b bucketFixture) WriteFile(ctx context.Context, name string, data []byte) error {
	return b.srv.Put(ctx, b.bucket, b.prefix+name, data)
}

func (b bucketFixture) Mkdir(ctx context.Context, name string) error {
	return b.srv.Put(ctx, b.bucket, b.prefix+name+"/", nil)
}

// TestConformance runs the suite on a whole bucket and below a prefix.
func TestConformance(t *testing.T) {
	srv := needServer(t)
	ctx := context.Background()
	for _, c := range []struct{ name, bucket, prefix string }{
		{"bucket", "whole", ""},
		{"prefix", "prefixed", "data/set-1"},
	} {
		t.Run(c.name, func(t *testing.T) {
			must(t, srv.CreateBucket(ctx, c.bucket))
			p := ""
			if c.prefix != "" {
				p = c.prefix + "/"
				// Keys that share the prefix's first letters must not leak in.
				must(t, srv.Put(ctx, c.bucket, c.prefix+"-sibling/x", []byte("x")))
				must(t, srv.Put(ctx, c.bucket, c.prefix+"x", []byte("x")))
			}
			must(t, ufstest.Populate(ctx, bucketFixture{srv, c.bucket, p}))
			fsys, err := s3.Open(c.bucket, c.prefix, opts())
			must(t, err)
			defer fsys.Close()
			ufstest.Run(t, fsys)
		})
	}
}

// TestMarkers covers keys that only S3 can hold: a "dir/" marker with files
// below it, an object and a prefix of the same name, an empty path segment.
// A server whose storage cannot hold some of them (versitygw's POSIX backend
// refuses an object that is also a prefix) is tested on the rest.
func TestMarkers(t *testing.T) { checkMarkers(t, needServer(t), opts()) }

// bucketServer is an S3 server a test can write to: versitygw or radosgw.
type bucketServer interface {
	Client() *awss3.Client
	CreateBucket(ctx context.Context, name string) error
	Put(ctx context.Context, bucket, key string, data []byte) error
}

func checkMarkers(t *testing.T, srv bucketServer, o s3.Options) {
	ctx := context.Background()
	must(t, srv.CreateBucket(ctx, "markers"))
	must(t, srv.Put(ctx, "markers", "marked/", nil))
	must(t, srv.Put(ctx, "markers", "marked/file", []byte("x")))
	must(t, srv.Put(ctx, "markers", "plain/file.gz", []byte("y")))
	want := map[string]bool{"marked": true, "plain": true}
	must(t, srv.Put(ctx, "markers", "both", []byte("object")))
	want["both"] = false
	both := srv.Put(ctx, "markers", "both/child", []byte("c")) == nil
	if !both {
		t.Log("this server cannot hold both an object and a prefix named \"both\"")
	}
	must(t, srv.Put(ctx, "markers", "odd//name", []byte("double slash")))
	want["odd"] = true
	out, err := srv.Client().ListObjectsV2(ctx, &awss3.ListObjectsV2Input{Bucket: aws.String("markers"), Prefix: aws.String("odd/")})
	must(t, err)
	odd := len(out.Contents) == 1 && aws.ToString(out.Contents[0].Key) == "odd//name"
	if !odd {
		t.Log("this server folds an empty path segment in a key")
	}
	fsys, err := s3.Open("markers", "", o)
	must(t, err)
	defer fsys.Close()

	got := map[string]bool{}
	for page, err := range fsys.List(ctx, "") {
		must(t, err)
		for _, fi := range page {
			if _, dup := got[fi.Name]; dup {
				t.Errorf("%q listed twice", fi.Name)
			}
			got[fi.Name] = fi.IsDir()
		}
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("root lists %v; want %v", got, want)
	}
	var marked []string
	for page, err := range fsys.List(ctx, "marked") {
		must(t, err)
		for _, fi := range page {
			marked = append(marked, fi.Name)
		}
	}
	if fmt.Sprint(marked) != "[file]" {
		t.Errorf("marked/ lists %q; want [file] (the marker itself is not an entry)", marked)
	}
	if both {
		if fi, err := fsys.Stat(ctx, "both"); err != nil || fi.IsDir() || fi.Size != 6 {
			t.Errorf("Stat(both) = %+v, %v; want the 6-byte object", fi, err)
		}
	}
	if odd {
		for page, err := range fsys.List(ctx, "odd") {
			must(t, err)
			if len(page) != 0 {
				t.Errorf("odd/ lists %v; an empty path segment cannot be shown", page)
			}
		}
	}
}

func TestBadBucketAndKeys(t *testing.T) {
	srv := needServer(t)
	ctx := context.Background()
	must(t, srv.CreateBucket(ctx, "private"))
	must(t, srv.Put(ctx, "private", "f", []byte("x")))

	missing, err := s3.Open("no-such-bucket", "", opts())
	must(t, err)
	for op, err := range opErrors(ctx, missing, "f") {
		if err == nil || !strings.Contains(err.Error(), `bucket "no-such-bucket" does not exist at endpoint `+srv.Endpoint) {
			t.Errorf("%s on a missing bucket: %v; want a message naming the bucket and endpoint", op, err)
		}
	}

	const wrongSecret = "not-the-secret-Kx3"
	o := opts()
	o.SecretKey = wrongSecret
	wrong, err := s3.Open("private", "", o)
	must(t, err)
	for op, err := range opErrors(ctx, wrong, "f") {
		if !errors.Is(err, fs.ErrPermission) {
			t.Errorf("%s with a wrong secret: %v; want a permission error", op, err)
		}
		if err == nil || !strings.Contains(err.Error(), `access denied for bucket "private" at endpoint `+srv.Endpoint) {
			t.Errorf("%s with a wrong secret: %q; want it to say access denied for the bucket at the endpoint", op, err)
		}
		if err != nil && (strings.Contains(err.Error(), wrongSecret) || strings.Contains(err.Error(), s3test.SecretKey)) {
			t.Errorf("%s: the error reveals a secret: %q", op, err)
		}
	}
}

// TestUnreachableEndpoint: bounded retries, then a clear error, never a hang.
func TestUnreachableEndpoint(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	addr := l.Addr().String()
	l.Close() // nothing listens there now
	fsys, err := s3.Open("b", "", s3.Options{Endpoint: "http://" + addr, PathStyle: true, MaxAttempts: 3})
	must(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for op, err := range opErrors(ctx, fsys, "f") {
		if ctx.Err() != nil {
			t.Fatalf("%s did not give up before the test's deadline", op)
		}
		if !ufs.IsRetryable(err) || !strings.Contains(err.Error(), "cannot reach endpoint http://"+addr) {
			t.Errorf("%s on an unreachable endpoint: %v (class %v); want a retryable 'cannot reach endpoint' error", op, err, ufs.ClassOf(err))
		}
	}
}

// opErrors runs stat, list and read and yields each one's error.
func opErrors(ctx context.Context, fsys ufs.FS, name string) func(func(string, error) bool) {
	return func(yield func(string, error) bool) {
		_, err := fsys.Stat(ctx, name)
		if !yield("stat", err) {
			return
		}
		var lerr error
		for _, e := range fsys.List(ctx, "") {
			lerr = e
		}
		if !yield("list", lerr) {
			return
		}
		rc, err := fsys.ReadRange(ctx, name, ufs.Range{Len: -1})
		if err == nil {
			_, err = io.Copy(io.Discard, rc)
			rc.Close()
		}
		yield("read", err)
	}
}

func TestOpenErrors(t *testing.T) {
	for _, c := range []struct {
		bucket, prefix string
		o              s3.Options
	}{
		{"", "", s3.Options{}},
		{"b", "a/../b", s3.Options{}},
		{"b", "", s3.Options{AccessKey: "only-half"}},
	} {
		if _, err := s3.Open(c.bucket, c.prefix, c.o); err == nil {
			t.Errorf("Open(%q, %q, %+v) succeeded", c.bucket, c.prefix, c.o)
		}
	}
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestLeanReads: ranged reads take the lean path (net/http and the
// package's own signer, not the SDK) for keys of every kind of character;
// a wrong key still fails as a permission error, and a lean path the
// server refuses where the SDK is let in turns itself off.
func TestLeanReads(t *testing.T) {
	srv := needServer(t)
	ctx := context.Background()
	if err := srv.CreateBucket(ctx, "lean"); err != nil {
		t.Fatal(err)
	}
	names := []string{"plain.bin", "dir/a b.dat", "ü/x+y=z&w.jpg", "sp ace/'q'(1)*!$,;:@~.bin"}
	data := []byte(strings.Repeat("0123456789abcdef", 4096))
	for _, n := range names {
		if err := srv.Put(ctx, "lean", n, data); err != nil {
			t.Fatal(err)
		}
	}
	fsys, err := s3.Open("lean", "", opts())
	if err != nil {
		t.Fatal(err)
	}
	defer fsys.Close()
	for _, n := range names {
		fi, err := fsys.Stat(ctx, n)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range []ufs.Range{{Off: 0, Len: 100}, {Off: 1000, Len: 5000, IfVersion: fi.Version}, {Off: 60000, Len: -1}} {
			rc, how, err := s3.ReadLean(fsys, ctx, n, r)
			if err != nil || how != "served" {
				t.Fatalf("%s %+v: %s, %v", n, r, how, err)
			}
			got, err := io.ReadAll(rc)
			rc.Close()
			end := int64(len(data))
			if r.Len > 0 {
				end = r.Off + r.Len
			}
			if err != nil || string(got) != string(data[r.Off:end]) {
				t.Fatalf("%s %+v: %d bytes, %v", n, r, len(got), err)
			}
		}
		// A changed version is seen on the lean path too.
		if _, _, err := s3.ReadLean(fsys, ctx, n, ufs.Range{Off: 0, Len: 10, IfVersion: "not-the-etag"}); ufs.ClassOf(err) != ufs.ClassVersionChanged {
			t.Errorf("%s read at a stale version: %v", n, err)
		}
	}
	if rc, how, err := s3.ReadLean(fsys, ctx, "plain.bin", ufs.Range{Off: int64(len(data)) + 10, Len: 10}); err != nil || how != "served" {
		t.Errorf("a range past the end: %s, %v", how, err)
	} else if got, _ := io.ReadAll(rc); len(got) != 0 {
		t.Errorf("a range past the end: %d bytes", len(got))
	}
	if _, how, _ := s3.ReadLean(fsys, ctx, "missing.bin", ufs.Range{Off: 0, Len: 10}); how != "declined" {
		t.Errorf("a missing object on the lean path: %s; want it left to the SDK", how)
	}
	if _, err := fsys.ReadRange(ctx, "missing.bin", ufs.Range{Off: 0, Len: 10}); ufs.ClassOf(err) != ufs.ClassNotExist {
		t.Errorf("a missing object: %v", err)
	}

	// A wrong secret: refused on both paths, a permission error, and the
	// lean path stays on (it was not what was wrong).
	bad := opts()
	bad.SecretKey = "not-the-secret"
	wrong, err := s3.Open("lean", "", bad)
	if err != nil {
		t.Fatal(err)
	}
	defer wrong.Close()
	if _, err := wrong.ReadRange(ctx, "plain.bin", ufs.Range{Off: 0, Len: 10}); ufs.ClassOf(err) != ufs.ClassPermission {
		t.Errorf("a wrong secret: %v", err)
	}
	if s3.LeanOff(wrong) {
		t.Error("the lean path turned off for a wrong secret")
	}

	// A lean path the server refuses while the SDK is let in: the read
	// succeeds, and the lean path is off from then on.
	s3.BreakLeanSigner(fsys)
	rc, err := fsys.ReadRange(ctx, "plain.bin", ufs.Range{Off: 0, Len: 10})
	if err != nil {
		t.Fatalf("a read whose lean request was refused: %v", err)
	}
	rc.Close()
	if !s3.LeanOff(fsys) {
		t.Error("the lean path stayed on after the server refused it and let the SDK in")
	}
}
