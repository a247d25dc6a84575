//go:build cephfs

package cephfs_test

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/granary-cache/granary/internal/cephstat"
	"github.com/granary-cache/granary/internal/cephtest"
	"github.com/granary-cache/granary/internal/ufs"
	"github.com/granary-cache/granary/internal/ufs/cephfs"
	"github.com/granary-cache/granary/internal/ufs/ufstest"
)

// tree writes files (name → content) below a new directory of the test
// cluster's CephFS and returns that directory's path in CephFS.
func tree(t testing.TB, dir string, files map[string]string) string {
	t.Helper()
	mnt := cephtest.FuseMount(t, dir)
	root := fmt.Sprintf("/%s-%d", strings.ToLower(strings.ReplaceAll(t.Name(), "/", "-")), time.Now().UnixNano())
	for name, data := range files {
		p := filepath.Join(mnt, root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cephtest.Unmount(t, mnt) // the writer's sizes reach the MDS
	return root
}

func TestConformance(t *testing.T) {
	dir := cephtest.Dir(t)
	mnt := cephtest.FuseMount(t, dir)
	root := fmt.Sprintf("/conformance-%d", time.Now().UnixNano())
	if err := ufstest.Populate(context.Background(), ufstest.DirFixture(filepath.Join(mnt, root))); err != nil {
		t.Fatal(err)
	}
	cephtest.Unmount(t, mnt)
	fsys, err := cephfs.Open(root, cephfs.Options{Conf: cephtest.Conf(dir), FSName: "cephfs"})
	if err != nil {
		t.Fatal(err)
	}
	defer fsys.Close()
	ufstest.Run(t, fsys)
}

// TestOpenErrors: each way of getting the cluster wrong fails within the
// op timeout, with a message that names what is wrong and no secret.
func TestOpenErrors(t *testing.T) {
	dir := cephtest.Dir(t)
	conf := cephtest.Conf(dir)
	const badKey = "AQBbadbadbadbadbadbadbadbadbadbadbadbadbad=="
	// A well-formed key that is not client.admin's: type 1 (AES), a zero
	// creation time, 16 bytes of secret.
	raw := append([]byte{1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 16, 0}, []byte("not-the-real-key")...)
	wrongKey := base64.StdEncoding.EncodeToString(raw)
	for _, c := range []struct {
		name string
		root string
		o    cephfs.Options
		want string
	}{
		{"missing path", "/does-not-exist", cephfs.Options{Conf: conf}, "/does-not-exist: mount (no such directory"},
		{"missing file system", "/", cephfs.Options{Conf: conf, FSName: "nosuchfs"}, "nosuchfs"},
		{"malformed key", "/", cephfs.Options{Conf: conf, Secret: badKey}, "key"},
		{"wrong key", "/", cephfs.Options{Conf: conf, Secret: wrongKey}, "key"},
		{"wrong monitor", "/", cephfs.Options{Monitors: "127.0.0.1:1", User: "admin", Keyring: filepath.Join(dir, "keyring"), OpTimeout: 2 * time.Second}, "monitors"},
		{"missing conf", "/", cephfs.Options{Conf: filepath.Join(dir, "no.conf")}, "no.conf"},
	} {
		t.Run(c.name, func(t *testing.T) {
			start := time.Now()
			fsys, err := cephfs.Open(c.root, c.o)
			if err == nil {
				fsys.Close()
				t.Fatalf("Open(%q) succeeded", c.root)
			}
			t.Logf("after %v: %v", time.Since(start).Round(time.Millisecond), err)
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q does not name %q", err, c.want)
			}
			if strings.Contains(err.Error(), badKey) || strings.Contains(err.Error(), wrongKey) {
				t.Errorf("error %q shows the secret", err)
			}
			if ufs.ClassOf(err) == ufs.ClassNone {
				t.Errorf("error %q has no class", err)
			}
			if d := time.Since(start); d > 40*time.Second {
				t.Errorf("took %v to fail", d)
			}
		})
	}
}

// TestIdleUnmount: an idle handle gives its session and capabilities back
// to the MDS, and the next call mounts again.
func TestIdleUnmount(t *testing.T) {
	dir := cephtest.Dir(t)
	root := tree(t, dir, map[string]string{"a/x": "hello", "a/y": "world", "b/z": "!"})
	asok := filepath.Join(dir, "run", "ceph-mds.a.asok")
	ctx := context.Background()
	before, err := cephstat.ReadMDS(ctx, asok)
	if err != nil {
		t.Fatal(err)
	}
	fsys, err := cephfs.Open(root, cephfs.Options{Conf: cephtest.Conf(dir), IdleUnmount: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer fsys.Close()
	for page, err := range fsys.List(ctx, "a") {
		if err != nil || len(page) != 2 {
			t.Fatalf("list a: %v, %v", page, err)
		}
	}
	// Sessions of this process: other clients of the test cluster may come
	// and go meanwhile.
	ours := func(m cephstat.MDS) []cephstat.Session {
		var s []cephstat.Session
		for _, x := range m.Since(before).Sessions {
			if x.PID == strconv.Itoa(os.Getpid()) {
				s = append(s, x)
			}
		}
		return s
	}
	during, _ := cephstat.ReadMDS(ctx, asok)
	if s := ours(during); len(s) != 1 || s[0].Caps < 2 {
		t.Fatalf("sessions while in use: %+v; want one holding caps", s)
	}
	// An open file keeps the handle mounted.
	rc, err := fsys.ReadRange(ctx, "a/x", ufs.Range{Len: -1})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	if !fsys.Mounted() {
		t.Fatal("unmounted under an open file")
	}
	if b, err := io.ReadAll(rc); err != nil || string(b) != "hello" {
		t.Fatalf("read a/x = %q, %v", b, err)
	}
	rc.Close()
	for deadline := time.Now().Add(20 * time.Second); fsys.Mounted(); time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("still mounted 20 s after the last call")
		}
	}
	idle, _ := cephstat.ReadMDS(ctx, asok)
	if s := ours(idle); len(s) != 0 {
		t.Errorf("sessions once idle: %+v; want none", s)
	}
	fi, err := fsys.Stat(ctx, "b/z")
	if err != nil || fi.Size != 1 {
		t.Fatalf("stat after the idle unmount: %+v, %v", fi, err)
	}
	if n := fsys.Mounts(); n != 2 {
		t.Errorf("%d mounts; want 2", n)
	}
}

// TestMDSPaused: with the MDS not answering, a call fails with a retryable
// error after the op timeout instead of hanging, and the handle works
// again once the MDS is back.
func TestMDSPaused(t *testing.T) {
	dir := cephtest.Dir(t)
	root := tree(t, dir, map[string]string{"a/x": "hello", "b/y": "world"})
	ctx := context.Background()
	fsys, err := cephfs.Open(root, cephfs.Options{Conf: cephtest.Conf(dir), OpTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer fsys.Close()
	if _, err := fsys.Stat(ctx, "a/x"); err != nil {
		t.Fatal(err)
	}
	resume := cephtest.PauseMDS(t, dir)
	start := time.Now()
	_, err = fsys.Stat(ctx, "b/y") // never looked up: the MDS must answer
	took := time.Since(start)
	resume()
	t.Logf("stat with the MDS paused: %v after %v", err, took.Round(time.Millisecond))
	if ufs.ClassOf(err) != ufs.ClassRetryable {
		t.Fatalf("stat with the MDS paused: %v; want a retryable error", err)
	}
	if took > 10*time.Second {
		t.Errorf("took %v; want about the 2 s op timeout", took)
	}
	var fi ufs.FileInfo
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		if fi, err = fsys.Stat(ctx, "b/y"); err == nil || time.Now().After(deadline) {
			break
		}
	}
	if err != nil || fi.Size != 5 {
		t.Fatalf("stat once the MDS is back: %+v, %v", fi, err)
	}
	if !errors.Is(fsys.Close(), nil) {
		t.Error("close failed")
	}
}

// TestMetadataLimit: a dataset's metadata_ops_per_second bounds the rate of
// requests its readers cause on the MDS, however many there are.
func TestMetadataLimit(t *testing.T) {
	dir := cephtest.Dir(t)
	files := map[string]string{}
	for i := range 12 {
		files[fmt.Sprintf("d%02d/f", i)] = "x"
	}
	root := tree(t, dir, files)
	fsys, err := cephfs.Open(root, cephfs.Options{Conf: cephtest.Conf(dir)})
	if err != nil {
		t.Fatal(err)
	}
	defer fsys.Close()
	const rate = 10
	limited := ufs.Limit(fsys, ufs.Limits{MetadataOpsPerSecond: rate})
	asok := filepath.Join(dir, "run", "ceph-mds.a.asok")
	ctx := context.Background()
	before, _ := cephstat.ReadMDS(ctx, asok)
	start := time.Now()
	var wg sync.WaitGroup
	for i := range 12 { // 12 readers, 2 metadata operations each
		wg.Go(func() {
			d := fmt.Sprintf("d%02d", i)
			for _, err := range limited.List(ctx, d) {
				if err != nil {
					t.Error(err)
				}
			}
			if _, err := limited.Stat(ctx, d+"/f"); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	took := time.Since(start)
	after, _ := cephstat.ReadMDS(ctx, asok)
	n := after.Since(before).Requests
	t.Logf("24 metadata operations at most %d/s: %v MDS requests in %v (%.1f/s)", rate, n, took.Round(time.Millisecond), n/took.Seconds())
	// A burst of `rate`, then `rate` per second: 24 operations take at least 1.4 s.
	if took < 1300*time.Millisecond {
		t.Errorf("24 operations took %v; the limit of %d/s allows no less than 1.4 s", took, rate)
	}
}

// TestSymlinksNotFollowed: links are left out of listings and refused by
// Stat and ReadRange, whether they stay inside the dataset or lead out of
// it; a path through a link leads nowhere either.
func TestSymlinksNotFollowed(t *testing.T) {
	dir := cephtest.Dir(t)
	mnt := cephtest.FuseMount(t, dir)
	base := fmt.Sprintf("links-%d", time.Now().UnixNano())
	root, outside := filepath.Join(mnt, base, "root"), filepath.Join(mnt, base, "outside")
	for _, d := range []string{filepath.Join(root, "a"), outside} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for p, data := range map[string]string{filepath.Join(root, "a/x"): "inside", filepath.Join(outside, "secret"): "outside"} {
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for name, target := range map[string]string{
		"in":  "a",                           // stays inside
		"ix":  "a/x",                         // a file inside
		"up":  "../outside",                  // leads out
		"abs": "/" + base + "/outside",       // absolute, out
		"far": "../../../../../../../../etc", // out of the file system's root
	} {
		if err := os.Symlink(target, filepath.Join(root, name)); err != nil {
			t.Fatal(err)
		}
	}
	cephtest.Unmount(t, mnt)

	fsys, err := cephfs.Open("/"+base+"/root", cephfs.Options{Conf: cephtest.Conf(dir)})
	if err != nil {
		t.Fatal(err)
	}
	defer fsys.Close()
	ctx := context.Background()
	var names []string
	for page, err := range fsys.List(ctx, "") {
		if err != nil {
			t.Fatal(err)
		}
		for _, fi := range page {
			names = append(names, fi.Name)
		}
	}
	if fmt.Sprint(names) != "[a]" {
		t.Errorf("listing: %v; want [a] (links left out)", names)
	}
	for _, name := range []string{"in", "ix", "up", "abs", "far", "in/x", "up/secret", "abs/secret", "far/passwd"} {
		if fi, err := fsys.Stat(ctx, name); err == nil {
			t.Errorf("stat %s: %+v; want an error", name, fi)
		} else if ufs.ClassOf(err) != ufs.ClassNotExist && ufs.ClassOf(err) != ufs.ClassInvalid {
			t.Errorf("stat %s: %v (class %v); want not-exist or invalid", name, err, ufs.ClassOf(err))
		}
		if rc, err := fsys.ReadRange(ctx, name, ufs.Range{Len: -1}); err == nil {
			b, _ := io.ReadAll(rc)
			rc.Close()
			t.Errorf("read %s through a link: %q; want an error", name, b)
		}
	}
}

// TestRemountWithMDSPaused: callers that find the handle idle-unmounted
// while the MDS does not answer wait for one shared mount attempt, so each
// fails after about one op timeout however many there are; once the MDS is
// back, the next call mounts.
func TestRemountWithMDSPaused(t *testing.T) {
	dir := cephtest.Dir(t)
	root := tree(t, dir, map[string]string{"a/x": "hello"})
	const opTimeout = 2 * time.Second
	fsys, err := cephfs.Open(root, cephfs.Options{Conf: cephtest.Conf(dir), OpTimeout: opTimeout, IdleUnmount: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer fsys.Close()
	for deadline := time.Now().Add(20 * time.Second); fsys.Mounted(); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("not idle-unmounted after 20 s")
		}
	}
	resume := cephtest.PauseMDS(t, dir)
	const callers = 8
	start := time.Now()
	var wg sync.WaitGroup
	errs := make([]error, callers)
	for i := range callers {
		wg.Go(func() { _, errs[i] = fsys.Stat(context.Background(), "a/x") })
	}
	wg.Wait()
	took := time.Since(start)
	resume()
	t.Logf("%d stats with the MDS paused and no mount: %v after %v", callers, errs[0], took.Round(time.Millisecond))
	for i, err := range errs {
		if ufs.ClassOf(err) != ufs.ClassRetryable {
			t.Errorf("caller %d: %v; want a retryable error", i, err)
		}
	}
	// One shared attempt: the op timeout plus the mount's margin, not
	// `callers` times that.
	if took > 3*(opTimeout+5*time.Second) {
		t.Errorf("%d callers took %v to fail; want about one mount attempt", callers, took)
	}
	var fi ufs.FileInfo
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		if fi, err = fsys.Stat(context.Background(), "a/x"); err == nil || time.Now().After(deadline) {
			break
		}
	}
	if err != nil || fi.Size != 5 {
		t.Fatalf("stat once the MDS is back: %+v, %v", fi, err)
	}
}

// TestDefaultConf: with neither conf nor monitors, the client reads the
// ceph.conf every Ceph client reads ($CEPH_CONF here).
func TestDefaultConf(t *testing.T) {
	dir := cephtest.Dir(t)
	root := tree(t, dir, map[string]string{"f": "x"})
	t.Setenv("CEPH_CONF", cephtest.Conf(dir))
	fsys, err := cephfs.Open(root, cephfs.Options{})
	if err != nil {
		t.Fatalf("open with the default ceph.conf: %v", err)
	}
	defer fsys.Close()
	if fi, err := fsys.Stat(context.Background(), "f"); err != nil || fi.Size != 1 {
		t.Fatalf("stat f: %+v, %v", fi, err)
	}
	t.Setenv("CEPH_CONF", filepath.Join(dir, "missing.conf"))
	if _, err := cephfs.Open(root, cephfs.Options{}); err == nil || !strings.Contains(err.Error(), "ceph.conf") {
		t.Errorf("open with no ceph.conf to find: %v; want an error naming ceph.conf", err)
	}
}

// TestColdReadsAfterIdleUnmount: a client session that never listed a
// directory (a new one after an idle unmount, while granary's metadata
// cache still answers the listings) lists it when its second file is read,
// so that reading every file of a directory costs the MDS a lookup and a
// listing, not a lookup per file.
func TestColdReadsAfterIdleUnmount(t *testing.T) {
	dir := cephtest.Dir(t)
	const n = 60
	files := map[string]string{}
	for i := range n {
		files[fmt.Sprintf("d/f%03d", i)] = strconv.Itoa(i)
	}
	root := tree(t, dir, files)
	asok := filepath.Join(dir, "run", "ceph-mds.a.asok")
	ctx := context.Background()
	fsys := openListed(t, root, cephfs.Options{Conf: cephtest.Conf(dir), IdleUnmount: 300 * time.Millisecond}, "d")
	for deadline := time.Now().Add(20 * time.Second); fsys.Mounted(); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("still mounted 20 s after the last call")
		}
	}
	before, err := cephstat.ReadMDS(ctx, asok)
	if err != nil {
		t.Fatal(err)
	}
	readWhole(t, fsys, files)
	after, err := cephstat.ReadMDS(ctx, asok)
	if err != nil {
		t.Fatal(err)
	}
	reqs := after.Since(before)
	t.Logf("%d files read in a new session: %v MDS requests (%v)", n, reqs.Requests, reqs.ByOp)
	if reqs.Requests > n/3 {
		t.Errorf("%v MDS requests to read the %d files of one directory in a new session; want a mount's, a lookup and a listing, not a lookup per file", reqs.Requests, n)
	}
}

// TestSmallFileOneOSDRead: a small file read whole costs the OSD one read,
// even when the caller reads it in small pieces (io.ReadAll starts at 512
// bytes), and the bytes come back whole. The OSD's counter also counts what
// the test cluster reads for itself meanwhile (its manager, the MDS, the
// gateway), so the bound is 1.5 reads per file on average: without the
// reader's minimum read a file of 100 KiB costs about 13.
func TestSmallFileOneOSDRead(t *testing.T) {
	dir := cephtest.Dir(t)
	const n = 48
	files := map[string]string{}
	for i := range n {
		files[fmt.Sprintf("d/f%03d", i)] = strings.Repeat(strconv.Itoa(i)+"|", (100<<10)/4)
	}
	root := tree(t, dir, files)
	osd := filepath.Join(dir, "run", "ceph-osd.0.asok")
	ctx := context.Background()
	fsys := openListed(t, root, cephfs.Options{Conf: cephtest.Conf(dir)}, "d")
	before, err := cephstat.ReadOSD(ctx, osd)
	if err != nil {
		t.Fatal(err)
	}
	readWhole(t, fsys, files)
	after, err := cephstat.ReadOSD(ctx, osd)
	if err != nil {
		t.Fatal(err)
	}
	reads := after.Since(before)
	t.Logf("%d small files: %v OSD reads, %v bytes", n, reads.Reads, reads.ReadBytes)
	if reads.Reads > n*3/2 {
		t.Errorf("%v OSD reads for %d small files read whole; want about one each", reads.Reads, n)
	}
}

// readWhole reads each file (name → content) whole with io.ReadAll, which
// asks for 512 bytes first, and checks its bytes.
func readWhole(t *testing.T, fsys *cephfs.FS, files map[string]string) {
	t.Helper()
	for name, want := range files {
		rc, err := fsys.ReadRange(context.Background(), name, ufs.Range{Len: -1})
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(rc)
		rc.Close()
		if err != nil || string(b) != want {
			t.Fatalf("read %s: %d bytes, %v; want its %d", name, len(b), err, len(want))
		}
	}
}

// openListed opens root with o, closed at the test's end, and lists dir.
func openListed(t *testing.T, root string, o cephfs.Options, dir string) *cephfs.FS {
	t.Helper()
	fsys, err := cephfs.Open(root, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fsys.Close() })
	for _, err := range fsys.List(context.Background(), dir) {
		if err != nil {
			t.Fatal(err)
		}
	}
	return fsys
}
