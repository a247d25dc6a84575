package client

import (
	"bytes"
	"errors"
	"fmt"
	"hash/crc32"
	"net"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/granary-cache/granary/internal/config"
	"github.com/granary-cache/granary/internal/membership"
	"github.com/granary-cache/granary/internal/wire"
)

// Short-circuit: a block owned by the worker of this host is read from its
// file; a file that fails its check is asked for again with verify=all,
// and one that keeps failing (or that the worker describes wrongly) is
// read over HTTP.
func TestShortCircuitRead(t *testing.T) {
	for _, tc := range []struct {
		name          string
		mode          int32
		short, remote int64
		queries       []string
	}{
		{"ok", localOK, 1, 0, []string{"verify=0 near="}},
		{"corrupt once", localCorruptOnce, 1, 0, []string{"verify=0 near=", "verify=all near="}},
		{"corrupt always", localCorruptAlways, 0, 1, []string{"verify=0 near=", "verify=all near="}},
		{"wrong length", localWrongLength, 0, 1, []string{"verify=0 near="}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := nearEnv(t)
			name, want := e.fileOwned("plain", true, testBlockSize-1000)
			f := e.open("/plain/" + name)
			e.local.local.Store(tc.mode)
			if got := readAll(t, f); !bytes.Equal(got, want) {
				t.Fatal("wrong bytes")
			}
			st := e.c.Stats()
			if st.ShortCircuitReads != tc.short || st.RemoteReads != tc.remote || st.Retries != 0 || st.NearReads != 0 {
				t.Errorf("stats %+v, want %d short-circuit, %d remote reads, no retry", st, tc.short, tc.remote)
			}
			if q := e.local.localQueries(); !slices.Equal(q, tc.queries) {
				t.Errorf("local worker asked %q, want %q", q, tc.queries)
			}
			if tc.remote > 0 && e.local.blocks.Load() != tc.remote {
				t.Errorf("the local worker served %d blocks over HTTP, want %d", e.local.blocks.Load(), tc.remote)
			}
			// A bad file is not kept open.
			if tc.short == 0 {
				e.c.local.mu.Lock()
				n := len(e.c.local.files)
				e.c.local.mu.Unlock()
				if n != 0 {
					t.Errorf("%d block files kept open after failed checks", n)
				}
			}
		})
	}
}

// TestRefusedBlockNotAskedAgain: a block whose file the worker of this
// host refuses (a large block it is still fetching whole) is read through
// the worker, and not asked for again for refusedFor: a reader's every
// window would otherwise cost a round trip more.
func TestRefusedBlockNotAskedAgain(t *testing.T) {
	e := nearEnv(t)
	name, want := e.fileOwned("plain", true, testBlockSize-1000)
	e.local.local.Store(localNotYet)
	start := time.Now()
	for range 3 {
		if got := readAll(t, e.open("/plain/"+name)); !bytes.Equal(got, want) {
			t.Fatal("wrong bytes")
		}
	}
	if time.Since(start) < refusedFor {
		if q := e.local.localQueries(); len(q) != 1 {
			t.Errorf("the worker was asked %d times for a file it refused (%q); want once", len(q), q)
		}
	}
	if st := e.c.Stats(); st.RemoteReads != 3 || st.ShortCircuitReads != 0 {
		t.Errorf("stats %+v; want 3 reads through the worker", st)
	}
	// Once refusedFor has passed, it is asked again, and read from its
	// file when it is there.
	time.Sleep(refusedFor + 10*time.Millisecond)
	e.local.local.Store(localOK)
	if got := readAll(t, e.open("/plain/"+name)); !bytes.Equal(got, want) {
		t.Fatal("wrong bytes")
	}
	if st := e.c.Stats(); st.ShortCircuitReads != 1 {
		t.Errorf("stats %+v; want the block read from its file once it is handed out", st)
	}
}

// testBlock writes data to a block file and opens it as a localBlock
// described by the CRCs of want (data itself when want is nil).
func testBlock(t *testing.T, data, want []byte, ps int64, expires time.Time) *localBlock {
	t.Helper()
	if want == nil {
		want = data
	}
	p := filepath.Join(t.TempDir(), "block")
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	info := wire.LocalBlock{File: p, Length: int64(len(want)), PageSize: ps}
	for off := int64(0); off < int64(len(want)); off += ps {
		info.CRCs = append(info.CRCs, crc32.Checksum(want[off:min(int64(len(want)), off+ps)], castagnoli))
	}
	return &localBlock{f: f, info: info, verified: make([]bool, len(info.CRCs)), expires: expires}
}

func isClosed(lb *localBlock) bool {
	_, err := lb.f.Stat()
	return errors.Is(err, os.ErrClosed)
}

func testData(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i>>8)
	}
	return b
}

func TestLocalBlocksReferences(t *testing.T) {
	l := newLocalBlocks(8)
	future := time.Now().Add(time.Hour)
	a := testBlock(t, testData(100), nil, 64, future)
	if got := l.put("k", a); got != a || a.refs != 1 {
		t.Fatalf("put: %p refs %d", got, a.refs)
	}
	if got := l.get("k"); got != a || a.refs != 2 {
		t.Fatalf("get: %p refs %d", got, a.refs)
	}
	// Another reader opened the same block meanwhile: it gets the one kept,
	// and its own file is closed.
	b := testBlock(t, testData(100), nil, 64, future)
	if got := l.put("k", b); got != a || a.refs != 3 || !isClosed(b) {
		t.Fatalf("second put: got %p (want %p), refs %d, closed %v", got, a, a.refs, isClosed(b))
	}
	l.release(a)
	l.drop("k", a)
	if l.get("k") != nil {
		t.Fatal("a dropped block is still handed out")
	}
	if isClosed(a) {
		t.Fatal("a dropped block's file was closed while two readers use it")
	}
	l.release(a)
	if isClosed(a) {
		t.Fatal("a dropped block's file was closed while a reader uses it")
	}
	l.release(a)
	if !isClosed(a) {
		t.Fatal("a dropped block's file stays open after its last reader released it")
	}
	// Dropping a block that is no longer key's leaves key's alone.
	c := testBlock(t, testData(100), nil, 64, future)
	l.put("k", c)
	l.release(c)
	l.drop("k", a)
	if got := l.get("k"); got != c {
		t.Fatal("dropping an old block took out the new one")
	}
	l.release(c)
	if isClosed(c) {
		t.Fatal("a block in the set was closed when its readers released it")
	}
	l.closeAll()
	if !isClosed(c) || l.get("k") != nil {
		t.Fatal("closeAll left a block open")
	}
}

func TestLocalBlocksExpire(t *testing.T) {
	l := newLocalBlocks(8)
	old := testBlock(t, testData(100), nil, 64, time.Now().Add(-time.Second))
	l.put("k", old)
	l.release(old)
	if l.get("k") != nil {
		t.Fatal("an expired block was handed out")
	}
	if !isClosed(old) {
		t.Fatal("an expired block without readers was not closed")
	}
	// One that expires while read is closed by its last reader.
	lb := testBlock(t, testData(100), nil, 64, time.Now().Add(50*time.Millisecond))
	l.put("k", lb)
	time.Sleep(60 * time.Millisecond)
	if l.get("k") != nil {
		t.Fatal("an expired block was handed out")
	}
	if isClosed(lb) {
		t.Fatal("an expired block was closed under its reader")
	}
	l.release(lb)
	if !isClosed(lb) {
		t.Fatal("an expired block stays open after its reader released it")
	}
}

func TestLocalBlocksBounded(t *testing.T) {
	l := newLocalBlocks(2)
	future := time.Now().Add(time.Hour)
	var lbs []*localBlock
	for i := range 5 {
		lb := testBlock(t, testData(10), nil, 64, future)
		lbs = append(lbs, lb)
		l.put(fmt.Sprint(i), lb)
		l.release(lb)
	}
	if len(l.files) != 2 {
		t.Fatalf("%d open files, want at most 2", len(l.files))
	}
	closed := 0
	for _, lb := range lbs {
		if isClosed(lb) {
			closed++
		}
	}
	if closed != 3 {
		t.Errorf("%d files closed, want the 3 evicted", closed)
	}
	if lb := l.get("4"); lb != lbs[4] {
		t.Error("the last block put was evicted")
	}
}

// Every page is checked against its CRC the first time it is read from the
// open file; a flipped byte or a cut file fails with errPageMismatch.
func TestLocalBlockPageCheck(t *testing.T) {
	const ps = 1024
	data := testData(3*ps + 100) // 4 pages, the last one short
	future := time.Now().Add(time.Hour)

	lb := testBlock(t, data, nil, ps, future)
	for _, r := range [][2]int{{0, 10}, {ps - 5, ps + 5}, {500, 3*ps + 100}, {0, 3*ps + 100}, {3 * ps, 3*ps + 100}} {
		buf := make([]byte, r[1]-r[0])
		if err := lb.readAt(buf, int64(r[0])); err != nil {
			t.Fatalf("read [%d, %d): %v", r[0], r[1], err)
		}
		if !bytes.Equal(buf, data[r[0]:r[1]]) {
			t.Fatalf("read [%d, %d): wrong bytes", r[0], r[1])
		}
	}
	if !slices.Equal(lb.verified, []bool{true, true, true, true}) {
		t.Errorf("verified %v after reading every page", lb.verified)
	}
	if err := lb.readAt(make([]byte, 10), 3*ps+95); err == nil || errors.Is(err, errPageMismatch) {
		t.Errorf("read past the end of the block: %v", err)
	}

	// A flipped byte in page 2.
	bad := slices.Clone(data)
	bad[2*ps+17] ^= 1
	lb = testBlock(t, bad, data, ps, future)
	buf := make([]byte, 2*ps)
	if err := lb.readAt(buf, 0); err != nil || !bytes.Equal(buf, data[:2*ps]) {
		t.Fatalf("read of the good pages: %v", err)
	}
	for _, r := range [][2]int{{2 * ps, 2*ps + 1}, {2*ps + 17, 2*ps + 18}, {ps, 3 * ps}, {0, 3*ps + 100}} {
		err := lb.readAt(make([]byte, r[1]-r[0]), int64(r[0]))
		if !errors.Is(err, errPageMismatch) {
			t.Errorf("read [%d, %d) over a flipped byte: %v, want a page mismatch", r[0], r[1], err)
		}
	}
	if lb.verified[2] {
		t.Error("a page that failed its check is marked verified")
	}

	// A file cut short.
	lb = testBlock(t, data[:3*ps+50], data, ps, future)
	if err := lb.readAt(make([]byte, 10), 3*ps); !errors.Is(err, errPageMismatch) {
		t.Errorf("read of a cut page: %v, want a page mismatch", err)
	}
}

// clientWith builds a client over members without servers (for what does
// not talk to them).
func clientWith(t *testing.T, members []membership.Member, clientYAML string) *Client {
	t.Helper()
	cfg, err := config.Parse("test.yaml", []byte("client:\n  host: "+testHost+"\n"+clientYAML+
		"datasets:\n  - name: a\n    ufs: file:///nonexistent\n"))
	if err != nil {
		t.Fatal(err)
	}
	src, err := membership.NewStatic(members)
	if err != nil {
		t.Fatal(err)
	}
	c := NewWithMembership(cfg, src)
	t.Cleanup(func() { c.Close() })
	return c
}

func listenUnix(t *testing.T, p string) {
	t.Helper()
	l, err := net.Listen("unix", p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
}

// A worker is local when membership puts it on this host and its socket is
// there; a socket that is not there is looked for again after
// socketRecheck.
func TestUnixClient(t *testing.T) {
	dir := shortTempDir(t)
	sock, later, file := filepath.Join(dir, "w.sock"), filepath.Join(dir, "later.sock"), filepath.Join(dir, "file")
	listenUnix(t, sock)
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	members := []membership.Member{
		{ID: "here", Addr: "127.0.0.1:1", Socket: sock, Host: testHost},
		{ID: "unknown-host", Addr: "127.0.0.1:2", Socket: sock},
		{ID: "elsewhere", Addr: "127.0.0.1:3", Socket: sock, Host: "other"},
		{ID: "no-socket", Addr: "127.0.0.1:4", Host: testHost},
		{ID: "later", Addr: "127.0.0.1:5", Socket: later, Host: testHost},
		{ID: "not-a-socket", Addr: "127.0.0.1:6", Socket: file, Host: testHost},
	}
	c := clientWith(t, members, "")
	for id, want := range map[string]bool{"here": true, "unknown-host": true, "elsewhere": false, "no-socket": false,
		"later": false, "not-a-socket": false, "not-a-member": false} {
		if got := c.isLocal(id); got != want {
			t.Errorf("isLocal(%s) = %v, want %v", id, got, want)
		}
	}
	hc1, _ := c.unixClient("here")
	hc2, _ := c.unixClient("unknown-host")
	if hc1 == nil || hc1 != hc2 {
		t.Error("two members on one socket do not share its client")
	}

	// The missing socket is remembered...
	c.sockets.mu.Lock()
	ls := c.sockets.byPath[later]
	c.sockets.mu.Unlock()
	if ls == nil || ls.hc != nil || time.Since(ls.checked) > time.Minute {
		t.Fatalf("no negative entry for a missing socket: %+v", ls)
	}
	// ...so when it appears, it is not found at once...
	listenUnix(t, later)
	if c.isLocal("later") {
		t.Error("a socket that was missing is found before socketRecheck")
	}
	// ...but after socketRecheck.
	c.sockets.mu.Lock()
	c.sockets.byPath[later].checked = time.Now().Add(-socketRecheck - time.Second)
	c.sockets.mu.Unlock()
	if !c.isLocal("later") {
		t.Error("a socket that appeared is not found after socketRecheck")
	}
	// Short-circuit off: nobody is local.
	off := clientWith(t, members, "  short_circuit: false\n")
	if off.isLocal("here") {
		t.Error("a worker is local with short_circuit: false")
	}
}
