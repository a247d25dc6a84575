package client

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"testing"

	"github.com/granary-cache/granary/internal/ufs"
)

// TestReadBatch: a batch of whole small files, a range, a file that spans
// blocks, a missing file and a read past the end, each with its own
// outcome; a worker that fails its group's request sends those reads to
// the next owner.
func TestReadBatch(t *testing.T) {
	e := newEnv(t, envOpts{workers: 3, datasets: map[string]string{"a": ""}})
	want := map[string][]byte{}
	for i := range 12 {
		name := fmt.Sprintf("f%02d", i)
		want[name] = e.write("a", name, 3000+i*500)
	}
	big := e.write("a", "big", int(e.c.layout.BlockSize)+5000)
	var reads []*BatchRead
	for i := range 12 {
		name := fmt.Sprintf("f%02d", i)
		reads = append(reads, &BatchRead{Path: "/a/" + name, Buf: make([]byte, len(want[name]))})
	}
	ranged := &BatchRead{Path: "/a/f03", Off: 100, Buf: make([]byte, 200)}
	spanning := &BatchRead{Path: "/a/big", Off: e.c.layout.BlockSize - 1000, Buf: make([]byte, 3000)}
	missing := &BatchRead{Path: "/a/nope", Buf: make([]byte, 10)}
	past := &BatchRead{Path: "/a/f00", Off: 2900, Buf: make([]byte, 500)}
	reads = append(reads, ranged, spanning, missing, past)

	check := func() {
		t.Helper()
		for i := range 12 {
			r := reads[i]
			name := r.Path[len("/a/"):]
			if r.Err != nil || r.N != len(want[name]) || !bytes.Equal(r.Buf, want[name]) {
				t.Fatalf("%s: %d bytes, %v", r.Path, r.N, r.Err)
			}
		}
		if ranged.Err != nil || !bytes.Equal(ranged.Buf, want["f03"][100:300]) {
			t.Errorf("the range: %v", ranged.Err)
		}
		if spanning.Err != nil || !bytes.Equal(spanning.Buf, big[e.c.layout.BlockSize-1000:e.c.layout.BlockSize+2000]) {
			t.Errorf("the read across blocks: %v", spanning.Err)
		}
		if ufs.ClassOf(missing.Err) != ufs.ClassNotExist {
			t.Errorf("the missing file: %v", missing.Err)
		}
		if past.N != 100 || past.Err != io.EOF || !bytes.Equal(past.Buf[:100], want["f00"][2900:]) {
			t.Errorf("the read past the end: %d, %v", past.N, past.Err)
		}
	}
	e.c.ReadBatch(context.Background(), reads)
	check()

	// A worker that fails: its reads go to the next owner.
	e.firstOwner("a", "f05", 0).block.Store(answerBusy)
	for _, r := range reads {
		clear(r.Buf)
	}
	e.c.ReadBatch(context.Background(), reads)
	check()
	if st := e.c.Stats(); st.Retries == 0 {
		t.Errorf("no retries after a worker failed: %+v", st)
	}
}
