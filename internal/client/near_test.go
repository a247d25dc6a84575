package client

import (
	"bytes"
	"errors"
	"fmt"
	"github.com/granary-cache/granary/internal/block"
	"io"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// fileOwned writes a new file into ds whose first block is first owned
// by the local worker (local) or by another; it returns its name. The
// client forgets its listing of the dataset, so that it sees the file.
func (e *env) fileOwned(ds string, local bool, size int) (string, []byte) {
	e.t.Helper()
	for i := range 1000 {
		name := fmt.Sprintf("f%d-%v", i, local)
		if _, err := os.Stat(filepath.Join(e.dirs[ds], name)); err == nil {
			continue
		}
		if (e.firstOwner(ds, name, 0) == e.local) == local {
			data := e.write(ds, name, size)
			e.c.MetaCache(ds).Invalidate(name)
			return name, data
		}
	}
	e.t.Fatal("no such file")
	return "", nil
}

func nearEnv(t *testing.T) *env {
	return newEnv(t, envOpts{
		workers: 3, local: true,
		datasets: map[string]string{"near": "near_cache: true", "near2": "near_cache: true", "plain": ""},
	})
}

// A dataset with near_cache reads a block no worker of this host owns
// through the worker of this host; after it refused, not for nearBackoff.
// A dataset without near_cache never does.
func TestNearWorker(t *testing.T) {
	e := nearEnv(t)
	c := e.c
	near, _ := c.Dataset("near")
	near2, _ := c.Dataset("near2")
	plain, _ := c.Dataset("plain")
	var remoteKey, localKey string
	for i := 0; remoteKey == "" || localKey == ""; i++ {
		key := block.PlacementKey("near", fmt.Sprint(i), 0)
		if c.owners(key, 1)[0].ID == e.local.id {
			localKey = key
		} else {
			remoteKey = key
		}
	}
	pick := func(ds string, key string) (string, bool) {
		d, _ := c.Dataset(ds)
		m, ok := c.nearWorker(d, c.owners(key, d.Replicas)[:1])
		return m.ID, ok
	}
	if id, ok := pick("near", remoteKey); !ok || id != e.local.id {
		t.Errorf("near_cache, no local owner: picked %q, %v; want %s", id, ok, e.local.id)
	}
	if m, ok := c.nearWorker(near, c.owners(remoteKey, 1)[:1]); ok && m.Addr != e.local.addr() {
		t.Errorf("near worker at %s, want %s", m.Addr, e.local.addr())
	}
	if id, ok := pick("near", localKey); ok {
		t.Errorf("near_cache with a local owner: picked %q; want the owner itself read", id)
	}
	for i := range 50 {
		if m, ok := c.nearWorker(plain, c.owners(block.PlacementKey("plain", fmt.Sprint(i), 0), 1)[:1]); ok {
			t.Fatalf("a dataset without near_cache picked %q", m.ID)
		}
	}

	c.nearRefused("near", errors.New("test"))
	if id, ok := pick("near", remoteKey); ok {
		t.Errorf("picked %q right after a refusal", id)
	}
	if _, ok := c.nearWorker(near2, c.owners(remoteKey, 1)[:1]); !ok {
		t.Error("a refusal for one dataset holds back another")
	}
	c.near.mu.Lock()
	until := c.near.refused["near"]
	c.near.mu.Unlock()
	if d := time.Until(until); d < nearBackoff-time.Second || d > nearBackoff {
		t.Errorf("backoff until %v from now, want %v", d, nearBackoff)
	}
	// Once the backoff is over, it is picked again.
	c.near.mu.Lock()
	c.near.refused["near"] = time.Now().Add(-time.Millisecond)
	c.near.mu.Unlock()
	if id, ok := pick("near", remoteKey); !ok || id != e.local.id {
		t.Errorf("after the backoff: picked %q, %v; want %s", id, ok, e.local.id)
	}
	// A local worker marked down is not picked.
	e.local.ping.Store(answerBusy)
	c.reach.MarkDown(e.local.id, e.local.addr(), errors.New("test"))
	if id, ok := pick("near", remoteKey); ok {
		t.Errorf("picked %q, marked down", id)
	}
}

// Reads through a near copy: the local worker is asked with near=1, the
// client reads the copy's file and keeps it open; when the worker refuses,
// the read goes to the owners and the worker is left alone for a while.
func TestNearReads(t *testing.T) {
	e := nearEnv(t)
	name, want := e.fileOwned("near", false, testBlockSize+1000)
	f := e.open("/near/" + name)
	if got := readAll(t, f); !bytes.Equal(got, want) {
		t.Fatal("wrong bytes")
	}
	st := e.c.Stats()
	// Block 1 may be owned by the local worker: then it is a plain
	// short-circuit read, still through the local worker.
	if st.RemoteReads != 0 || st.ShortCircuitReads != 2 || st.NearReads < 1 {
		t.Errorf("stats %+v, want 2 short-circuit reads (at least 1 near), none remote", st)
	}
	if q := e.local.localQueries(); len(q) != 2 || !slices.Contains(q, "verify=0 near=1") {
		t.Errorf("local worker asked %q, want near copies with verify=0", q)
	}
	// Read again: the open block files serve it.
	if got := readAll(t, f); !bytes.Equal(got, want) {
		t.Fatal("wrong bytes")
	}
	if n := e.local.locals.Load(); n != 2 {
		t.Errorf("local worker asked %d times, want the open files reused", n)
	}

	// The worker has no room: the read goes to the owners...
	e.local.local.Store(localRefuse)
	name2, want2 := e.fileOwned("near", false, 1000)
	if got := readAll(t, e.open("/near/"+name2)); !bytes.Equal(got, want2) {
		t.Fatal("wrong bytes")
	}
	if st := e.c.Stats(); st.RemoteReads != 1 {
		t.Errorf("stats %+v, want the refused block read remotely", st)
	}
	asked := e.local.locals.Load()
	// ...and the next one does not ask the local worker.
	name3, want3 := e.fileOwned("near", false, 1000)
	if got := readAll(t, e.open("/near/"+name3)); !bytes.Equal(got, want3) {
		t.Fatal("wrong bytes")
	}
	if n := e.local.locals.Load(); n != asked {
		t.Errorf("the local worker was asked again during the backoff")
	}
	// A dataset without near_cache reads from its owners.
	name4, want4 := e.fileOwned("plain", false, 1000)
	if got := readAll(t, e.open("/plain/"+name4)); !bytes.Equal(got, want4) {
		t.Fatal("wrong bytes")
	}
	if n := e.local.locals.Load(); n != asked {
		t.Errorf("the local worker was asked for a block of a dataset without near_cache")
	}
}

// LocalFile hands out the block file of a one-block file owned here (the
// worker checks its pages first), or of a near copy.
func TestLocalFile(t *testing.T) {
	e := nearEnv(t)
	name, want := e.fileOwned("plain", true, 5000)
	fd, err := e.open("/plain/" + name).LocalFile(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(fd)
	fd.Close()
	if !bytes.Equal(got, want) {
		t.Error("wrong bytes")
	}
	if q := e.local.localQueries(); !slices.Equal(q, []string{"verify=1 near="}) {
		t.Errorf("local worker asked %q, want verify=1", q)
	}
	// Not owned here, no near_cache: none.
	other, _ := e.fileOwned("plain", false, 5000)
	if _, err := e.open("/plain/" + other).LocalFile(t.Context()); !errors.Is(err, ErrNoLocalFile) {
		t.Errorf("LocalFile of a block owned elsewhere: %v", err)
	}
	// More than one block: none.
	big, _ := e.fileOwned("plain", true, testBlockSize+1)
	if _, err := e.open("/plain/" + big).LocalFile(t.Context()); !errors.Is(err, ErrNoLocalFile) {
		t.Errorf("LocalFile of two blocks: %v", err)
	}
	// A near copy.
	nname, nwant := e.fileOwned("near", false, 5000)
	fd, err = e.open("/near/" + nname).LocalFile(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	got, _ = io.ReadAll(fd)
	fd.Close()
	if !bytes.Equal(got, nwant) {
		t.Error("wrong bytes")
	}
	// Refused: none, and no more asking for a while.
	e.local.local.Store(localRefuse)
	rname, _ := e.fileOwned("near", false, 5000)
	rf := e.open("/near/" + rname)
	if _, err := rf.LocalFile(t.Context()); !errors.Is(err, ErrNoLocalFile) {
		t.Errorf("LocalFile refused: %v", err)
	}
	asked := e.local.locals.Load()
	if _, err := rf.LocalFile(t.Context()); !errors.Is(err, ErrNoLocalFile) {
		t.Errorf("LocalFile after a refusal: %v", err)
	}
	if e.local.locals.Load() != asked {
		t.Error("the local worker was asked for a near copy during the backoff")
	}
}
