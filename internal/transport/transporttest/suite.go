// Package transporttest is the conformance suite every transport passes:
// the same named cases, run against a test handler in process
// (transport's own tests) and against a real worker (the worker's tests),
// over HTTP and over the framed protocol.
package transporttest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/granary-cache/granary/internal/block"
	"github.com/granary-cache/granary/internal/transport"
	"github.com/granary-cache/granary/internal/ufs"
	"github.com/granary-cache/granary/internal/wire"
)

// Target is a server the suite reads from.
type Target interface {
	// Addr is the server's data address.
	Addr() string
	// Put stores a file in the UFS behind the server and returns its first
	// block's reference (as a client would build it from a stat).
	Put(t testing.TB, name string, data []byte) block.Ref
	// Remove deletes a file from the UFS.
	Remove(t testing.TB, name string)
	// Dataset is the dataset the files are in.
	Dataset() string
	// Stop stops the server for good (every connection closes).
	Stop(t testing.TB)
}

// Readers builds the readers under test: good with the right credentials,
// bad with a wrong token.
type Readers struct {
	Good, Bad func() transport.Reader
}

// Run runs every case. Stop is called last.
func Run(t *testing.T, target Target, readers Readers) {
	rd := readers.Good()
	t.Cleanup(func() { rd.Close() })
	cases := []struct {
		name string
		fn   func(*testing.T, Target, transport.Reader)
	}{
		{"WholeBlock", wholeBlock},
		{"Ranges", ranges},
		{"EmptyRange", emptyRange},
		{"Concurrent", concurrent},
		{"Batch", batch},
		{"BatchWithAFailingItem", batchWithFailure},
		{"NotExistIsFinal", notExist},
		{"VersionChangedIsFinal", versionChanged},
		{"BadRequestIsInvalid", invalid},
		{"CancelMidRead", cancelMidRead},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) { c.fn(t, target, rd) })
	}
	t.Run("WrongToken", func(t *testing.T) {
		bad := readers.Bad()
		defer bad.Close()
		ref := target.Put(t, "token.bin", payload(1000, 9))
		_, err := bad.Read(context.Background(), target.Addr(), wire.ReadRequest{Block: ref, Length: 1000}, make([]byte, 1000))
		if !errors.Is(err, wire.ErrWorker) || !wire.Answered(err) {
			t.Fatalf("a wrong token: %v; want an answered worker error", err)
		}
	})
	t.Run("ServerGone", func(t *testing.T) {
		ref := target.Put(t, "gone.bin", payload(1000, 10))
		buf := make([]byte, 1000)
		if _, err := rd.Read(context.Background(), target.Addr(), wire.ReadRequest{Block: ref, Length: 1000}, buf); err != nil {
			t.Fatal(err) // a connection to lose
		}
		target.Stop(t)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err := rd.Read(ctx, target.Addr(), wire.ReadRequest{Block: ref, Length: 1000}, buf)
		if !errors.Is(err, wire.ErrWorker) || wire.Answered(err) {
			t.Fatalf("a server gone: %v; want an unanswered worker error", err)
		}
	})
}

func payload(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, uint64(n)))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func wholeBlock(t *testing.T, tg Target, rd transport.Reader) {
	for _, size := range []int{1, 4095, 110_000, 3<<20 + 17} {
		name := fmt.Sprintf("whole-%d.bin", size)
		data := payload(size, 1)
		ref := tg.Put(t, name, data)
		n := min(int64(size), ref.Len())
		buf := make([]byte, n)
		src, err := rd.Read(context.Background(), tg.Addr(), wire.ReadRequest{Block: ref, Length: n}, buf)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !bytes.Equal(buf, data[:n]) {
			t.Fatalf("%s: wrong bytes", name)
		}
		if src == wire.SourceUnknown {
			t.Errorf("%s: no source", name)
		}
		// Again: now a hit.
		clear(buf)
		if _, err := rd.Read(context.Background(), tg.Addr(), wire.ReadRequest{Block: ref, Length: n}, buf); err != nil || !bytes.Equal(buf, data[:n]) {
			t.Fatalf("%s again: %v (bytes equal %v)", name, err, bytes.Equal(buf, data[:n]))
		}
	}
}

func ranges(t *testing.T, tg Target, rd transport.Reader) {
	data := payload(5<<20+333, 2)
	ref := tg.Put(t, "ranges.bin", data)
	r := rand.New(rand.NewPCG(3, 4))
	blen := ref.Len()
	for i := range 40 {
		off := r.Int64N(blen)
		n := 1 + r.Int64N(min(blen-off, 1<<20))
		buf := make([]byte, n)
		if _, err := rd.Read(context.Background(), tg.Addr(), wire.ReadRequest{Block: ref, Offset: off, Length: n}, buf); err != nil {
			t.Fatalf("read %d: %d bytes at %d: %v", i, n, off, err)
		}
		if !bytes.Equal(buf, data[off:off+n]) {
			t.Fatalf("read %d: %d bytes at %d: wrong bytes", i, n, off)
		}
	}
}

func emptyRange(t *testing.T, tg Target, rd transport.Reader) {
	ref := tg.Put(t, "empty-range.bin", payload(100, 3))
	if _, err := rd.Read(context.Background(), tg.Addr(), wire.ReadRequest{Block: ref, Offset: 50}, nil); err != nil {
		t.Fatalf("a read of 0 bytes: %v", err)
	}
}

func concurrent(t *testing.T, tg Target, rd transport.Reader) {
	const files, readers = 16, 64
	var refs []block.Ref
	var datas [][]byte
	for i := range files {
		d := payload(64<<10+i*1000, uint64(100+i))
		refs = append(refs, tg.Put(t, fmt.Sprintf("conc-%d.bin", i), d))
		datas = append(datas, d)
	}
	var wg sync.WaitGroup
	errs := make(chan error, readers)
	for g := range readers {
		wg.Go(func() {
			for k := range 20 {
				i := (g + k) % files
				buf := make([]byte, len(datas[i]))
				if _, err := rd.Read(context.Background(), tg.Addr(), wire.ReadRequest{Block: refs[i], Length: int64(len(buf))}, buf); err != nil {
					errs <- err
					return
				}
				if !bytes.Equal(buf, datas[i]) {
					errs <- fmt.Errorf("file %d: wrong bytes", i)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

func batch(t *testing.T, tg Target, rd transport.Reader) {
	var reads []wire.ReadRequest
	var bufs, datas [][]byte
	for i := range 32 {
		d := payload(1000+i*3000, uint64(200+i))
		ref := tg.Put(t, fmt.Sprintf("batch-%d.bin", i), d)
		reads = append(reads, wire.ReadRequest{Block: ref, Length: int64(len(d))})
		bufs = append(bufs, make([]byte, len(d)))
		datas = append(datas, d)
	}
	errs := rd.ReadBatch(context.Background(), tg.Addr(), reads, bufs)
	for i, err := range errs {
		if err != nil {
			t.Fatalf("item %d: %v", i, err)
		}
		if !bytes.Equal(bufs[i], datas[i]) {
			t.Fatalf("item %d: wrong bytes", i)
		}
	}
}

func batchWithFailure(t *testing.T, tg Target, rd transport.Reader) {
	a, b := payload(5000, 300), payload(7000, 301)
	refA := tg.Put(t, "bf-a.bin", a)
	refB := tg.Put(t, "bf-b.bin", b)
	missing := block.Ref{ID: block.ID{Dataset: tg.Dataset(), Path: "bf-missing.bin", Version: refA.Version, BlockSize: refA.BlockSize}, Size: 100}
	reads := []wire.ReadRequest{{Block: refA, Length: 5000}, {Block: missing, Length: 100}, {Block: refB, Length: 7000}}
	bufs := [][]byte{make([]byte, 5000), make([]byte, 100), make([]byte, 7000)}
	errs := rd.ReadBatch(context.Background(), tg.Addr(), reads, bufs)
	if errs[0] != nil || errs[2] != nil || !bytes.Equal(bufs[0], a) || !bytes.Equal(bufs[2], b) {
		t.Fatalf("the good items: %v, %v", errs[0], errs[2])
	}
	if ufs.ClassOf(errs[1]) != ufs.ClassNotExist {
		t.Fatalf("the missing item: %v (class %v), want not exist", errs[1], ufs.ClassOf(errs[1]))
	}
}

func notExist(t *testing.T, tg Target, rd transport.Reader) {
	ref := tg.Put(t, "vanishing.bin", payload(3000, 5))
	tg.Remove(t, "vanishing.bin")
	_, err := rd.Read(context.Background(), tg.Addr(), wire.ReadRequest{Block: ref, Length: 3000}, make([]byte, 3000))
	var ue *ufs.Error
	if !errors.As(err, &ue) || ue.Class != ufs.ClassNotExist || !wire.Answered(err) || errors.Is(err, wire.ErrWorker) {
		t.Fatalf("a file gone from the UFS: %v; want a final, answered not-exist error", err)
	}
	if ue.Dataset != tg.Dataset() || ue.Path != "vanishing.bin" {
		t.Errorf("the error names /%s/%s", ue.Dataset, ue.Path)
	}
}

func versionChanged(t *testing.T, tg Target, rd transport.Reader) {
	ref := tg.Put(t, "changing.bin", payload(3000, 6))
	tg.Put(t, "changing.bin", payload(3500, 7))
	_, err := rd.Read(context.Background(), tg.Addr(), wire.ReadRequest{Block: ref, Length: 3000}, make([]byte, 3000))
	if ufs.ClassOf(err) != ufs.ClassVersionChanged || errors.Is(err, wire.ErrWorker) {
		t.Fatalf("a file changed under a versioned read: %v (class %v)", err, ufs.ClassOf(err))
	}
}

func invalid(t *testing.T, tg Target, rd transport.Reader) {
	ref := tg.Put(t, "invalid.bin", payload(3000, 8))
	for name, r := range map[string]wire.ReadRequest{
		"past the block's end": {Block: ref, Offset: 2000, Length: 1001},
		"unknown dataset":      {Block: block.Ref{ID: block.ID{Dataset: "no-such-dataset", Path: "x", BlockSize: ref.BlockSize}, Size: 10}, Length: 10},
		"path escaping":        {Block: block.Ref{ID: block.ID{Dataset: tg.Dataset(), Path: "../../etc/passwd", BlockSize: ref.BlockSize}, Size: 10}, Length: 10},
	} {
		_, err := rd.Read(context.Background(), tg.Addr(), r, make([]byte, r.Length))
		if ufs.ClassOf(err) != ufs.ClassInvalid || !wire.Answered(err) {
			t.Errorf("%s: %v (class %v); want an answered invalid error", name, err, ufs.ClassOf(err))
		}
	}
}

func cancelMidRead(t *testing.T, tg Target, rd transport.Reader) {
	data := payload(4<<20, 11)
	ref := tg.Put(t, "cancel.bin", data)
	for i := range 20 {
		ctx, cancel := context.WithCancel(context.Background())
		go func() {
			time.Sleep(time.Duration(i) * 50 * time.Microsecond)
			cancel()
		}()
		buf := make([]byte, ref.Len())
		_, err := rd.Read(ctx, tg.Addr(), wire.ReadRequest{Block: ref, Length: ref.Len()}, buf)
		if err != nil && ctx.Err() == nil {
			t.Fatalf("attempt %d: %v before the cancel", i, err)
		}
		if err == nil && !bytes.Equal(buf, data[:len(buf)]) {
			t.Fatalf("attempt %d: wrong bytes", i)
		}
		cancel()
		// The reader goes on working after a read given up.
		small := make([]byte, 1000)
		if _, err := rd.Read(context.Background(), tg.Addr(), wire.ReadRequest{Block: ref, Offset: 12345, Length: 1000}, small); err != nil {
			t.Fatalf("attempt %d: the read after a cancel: %v", i, err)
		}
		if !bytes.Equal(small, data[12345:13345]) {
			t.Fatalf("attempt %d: the read after a cancel: wrong bytes", i)
		}
	}
}

// Protocol is a way to build a Reader, for tests that run every case on
// each protocol.
type Protocol struct {
	Name string
	New  func(transport.Options) transport.Reader
}

// Protocols are the framed protocol and HTTP.
var Protocols = []Protocol{
	{"framed", func(o transport.Options) transport.Reader { return transport.NewFramed(o) }},
	{"http", func(o transport.Options) transport.Reader { return transport.NewHTTP(o) }},
}
