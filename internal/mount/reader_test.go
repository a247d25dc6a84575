package mount

import (
	"bytes"
	"context"
	"io"
	"sync"
	"testing"
	"time"
)

// slowFile is a file whose reads take a while, counting the reads in
// flight and the bytes of the file asked for.
type slowFile struct {
	data  []byte
	delay time.Duration

	mu       sync.Mutex
	inflight int
	peak     int
	asked    int64
}

func (f *slowFile) readAt(ctx context.Context, p []byte, off int64) (int, error) {
	f.mu.Lock()
	f.inflight++
	f.peak = max(f.peak, f.inflight)
	f.asked += max(0, min(int64(len(p)), int64(len(f.data))-off)) // bytes of the file
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		f.inflight--
		f.mu.Unlock()
	}()
	select {
	case <-time.After(f.delay):
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	if off >= int64(len(f.data)) {
		return 0, io.EOF
	}
	n := copy(p, f.data[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func testReader(f *slowFile) *reader {
	return &reader{size: int64(len(f.data)), readAt: f.readAt, opened: time.Now()}
}

func pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i>>13)
	}
	return b
}

// TestSequentialReadAhead: a sequential reader gets its bytes right, and
// the windows in flight grow past two when it keeps catching up with them.
func TestSequentialReadAhead(t *testing.T) {
	f := &slowFile{data: pattern(72<<20 + 12345), delay: 20 * time.Millisecond}
	r := testReader(f)
	buf := make([]byte, 1<<20)
	var got bytes.Buffer
	for off := int64(0); ; {
		n, err := r.read(context.Background(), buf, off)
		got.Write(buf[:n])
		off += int64(n)
		if err == io.EOF || n == 0 {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(got.Bytes(), f.data) {
		t.Fatalf("read %d bytes, not the file's %d", got.Len(), len(f.data))
	}
	r.close()
	if f.peak <= minAhead {
		t.Errorf("at most %d reads in flight; want the read-ahead to grow past %d", f.peak, minAhead)
	}
	if f.peak > maxAhead+1 {
		t.Errorf("%d reads in flight; want at most %d windows and the reader's own", f.peak, maxAhead)
	}
	if f.asked > int64(len(f.data))+2*windowSize {
		t.Errorf("asked for %d bytes of a %d-byte file", f.asked, len(f.data))
	}
	checkBudget(t)
}

// TestRandomReadsNoReadAhead: a reader that jumps around reads exactly
// what it asks for.
func TestRandomReadsNoReadAhead(t *testing.T) {
	f := &slowFile{data: pattern(64 << 20)}
	r := testReader(f)
	buf := make([]byte, 4096)
	for _, off := range []int64{5 << 20, 1 << 20, 40 << 20, 3, 60 << 20} {
		n, err := r.read(context.Background(), buf, off)
		if err != nil || !bytes.Equal(buf[:n], f.data[off:off+4096]) {
			t.Fatalf("read at %d: %d bytes, %v", off, n, err)
		}
	}
	if f.asked != 5*4096 {
		t.Errorf("asked for %d bytes for 5 reads of 4 KiB", f.asked)
	}
	r.close()
}

// TestReadAheadBudget: readers that would hold more than the process's
// budget of windows read without them, and get their bytes all the same.
func TestReadAheadBudget(t *testing.T) {
	windowBytes.Add(maxWindowBytes - windowSize) // room for one window only
	defer windowBytes.Add(-(maxWindowBytes - windowSize))
	f := &slowFile{data: pattern(40 << 20)}
	r := testReader(f)
	buf := make([]byte, 1<<20)
	for off := int64(0); off < int64(len(f.data)); off += int64(len(buf)) {
		n, err := r.read(context.Background(), buf, off)
		if err != nil || !bytes.Equal(buf[:n], f.data[off:off+int64(n)]) {
			t.Fatalf("read at %d: %d bytes, %v", off, n, err)
		}
		if windowBytes.Load() > maxWindowBytes {
			t.Fatalf("%d bytes of windows, over the budget of %d", windowBytes.Load(), int64(maxWindowBytes))
		}
	}
	r.close()
}

// checkBudget: closed readers gave their windows back.
func checkBudget(t *testing.T) {
	if n := windowBytes.Load(); n != 0 {
		t.Errorf("%d bytes of windows left after close", n)
	}
}

// TestSmallFileNoReadAhead: a file, or the end of one, with less than a
// window left after a read is read as asked: no window re-reads what the
// kernel has read already.
func TestSmallFileNoReadAhead(t *testing.T) {
	for _, size := range []int{143 << 10, 3 << 20, windowSize + 64<<10} {
		f := &slowFile{data: pattern(size)}
		r := testReader(f)
		buf := make([]byte, 128<<10)
		for off := int64(0); off < int64(size); off += int64(len(buf)) {
			n, err := r.read(context.Background(), buf, off)
			if (err != nil && err != io.EOF) || !bytes.Equal(buf[:n], f.data[off:off+int64(n)]) {
				t.Fatalf("%d-byte file, read at %d: %d bytes, %v", size, off, n, err)
			}
		}
		r.close()
		if f.asked != int64(size) {
			t.Errorf("%d-byte file read sequentially: asked for %d bytes; want each byte once", size, f.asked)
		}
	}
	checkBudget(t)
}
