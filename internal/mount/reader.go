package mount

import (
	"context"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/granary-cache/granary/internal/bufpool"
	"github.com/granary-cache/granary/internal/client"
)

// reader reads one file through the client. A sequential reader gets
// read-ahead windows: the kernel's READs (128 KiB to 1 MiB each) come out
// of windows fetched before it asks, several at once — in parallel from
// the owners of the blocks they fall in, and from the UFS on a miss — so
// that a stream keeps the network and the UFS busy rather than waiting on
// one request at a time. The windows in flight start at two and double,
// up to maxAhead, each time the reader catches up with a window still on
// its way; a reader that jumps around gets none, and so does the end of a
// file, once less than a window is left after a read: the kernel's own
// read-ahead (READs of up to 1 MiB) covers it. A window there would read
// bytes the kernel already has (it starts on the window grid) and cost a
// small file a second read of the block.
type reader struct {
	file   *client.File // nil in tests, which set size and readAt
	size   int64
	readAt func(ctx context.Context, p []byte, off int64) (int, error)
	opened time.Time

	mu    sync.Mutex
	ahead []*window // in file order, back to back; the first is being read
	depth int       // windows to keep in flight
	pos   int64     // where a sequential reader reads next
}

func newReader(file *client.File) *reader {
	return &reader{file: file, size: file.Size(), readAt: file.ReadAtContext, opened: time.Now()}
}

// window is a prefetched range [off, off+size) of a file. data and err
// are written by the fetch and read only after done is closed.
type window struct {
	off, size int64
	data      []byte
	done      chan struct{}
	err       error

	// Guarded by the reader's mu: the buffer goes back to windowBufs once
	// the window is dropped, its fetch is over and no read copies from it.
	buf     *[]byte
	refs    int
	dropped bool
	fetched bool
}

// windowBufs keeps window buffers for reuse: as many as the budget
// allows, for a minute after the last read-ahead.
var windowBufs = &bufpool.Pool{Size: windowSize, Max: maxWindowBytes / windowSize}

// recycle gives w's buffer back when nothing uses it any more. Called with
// the reader's mu held.
func (w *window) recycle() {
	if w.dropped && w.fetched && w.refs == 0 && w.buf != nil {
		windowBufs.Put(w.buf)
		w.buf, w.data = nil, nil
	}
}

func (w *window) covers(off int64) bool { return off >= w.off && off < w.off+w.size }

func (w *window) ready() bool {
	select {
	case <-w.done:
		return true
	default:
		return false
	}
}

// The windows' size and depth. At most maxWindowBytes of windows exist at
// once in the process, so that many open files cannot hold unbounded
// memory: a reader that would pass it reads without windows.
const (
	windowSize = 8 << 20
	minAhead   = 2
	// maxAhead: 32 MiB ahead of a reader. Deeper was measured slower on a
	// cold read of 4 x 1 GiB from S3 (BenchmarkMountBigS3: 170 MB/s at 4,
	// 117-146 at 8, 81 at 16): the first read of a block waits for the
	// whole block, and windows in the next block make its fetch compete
	// with the current one's.
	maxAhead       = 4
	maxWindowBytes = 512 << 20
)

var windowBytes atomic.Int64

// close frees the reader's windows.
func (r *reader) close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.dropAhead(len(r.ahead))
}

// dropAhead forgets the first n windows and gives their memory back to the
// budget (a fetch still running finishes into a window nobody reads).
// Called with r.mu held.
func (r *reader) dropAhead(n int) {
	for _, w := range r.ahead[:n] {
		windowBytes.Add(-w.size)
		w.dropped = true
		w.recycle()
	}
	r.ahead = append(r.ahead[:0], r.ahead[n:]...)
}

func (r *reader) read(ctx context.Context, dest []byte, off int64) (int, error) {
	if off >= r.size {
		return 0, io.EOF
	}
	want := min(int64(len(dest)), r.size-off)
	r.mu.Lock()
	sequential := off == r.pos && off > 0
	r.pos = off + want
	i := 0
	for i < len(r.ahead) && !r.ahead[i].covers(off) {
		i++
	}
	switch {
	case i < len(r.ahead):
		r.dropAhead(i) // the ones before were read past
	case sequential && r.size-r.pos > windowSize:
		r.dropAhead(len(r.ahead))
		r.depth = minAhead
	default:
		r.mu.Unlock()
		return r.readAt(ctx, dest, off)
	}
	r.fill(off)
	if len(r.ahead) == 0 {
		r.mu.Unlock() // out of budget
		return r.readAt(ctx, dest, off)
	}
	w := r.ahead[0]
	if !w.ready() && r.depth < maxAhead {
		// Caught up with the fetches: more in flight.
		r.depth = min(2*r.depth, maxAhead)
		r.fill(off)
	}
	w.refs++
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		w.refs--
		w.recycle()
		r.mu.Unlock()
	}()
	select {
	case <-w.done:
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	if w.err == nil || w.err == io.EOF {
		if at := off - w.off; at <= int64(len(w.data)) && int64(len(w.data))-at >= want {
			return copy(dest, w.data[at:at+want]), nil
		}
	}
	// The window failed, or ends inside this read: read directly.
	return r.readAt(ctx, dest, off)
}

// fill starts windows, from off or after the last one, until depth are in
// flight or the file or the budget ends. Called with r.mu held.
func (r *reader) fill(off int64) {
	next := off
	if n := len(r.ahead); n > 0 {
		next = r.ahead[n-1].off + r.ahead[n-1].size
	} else {
		next -= next % windowSize // windows on a fixed grid: whole pages and blocks
	}
	for len(r.ahead) < r.depth && next < r.size {
		w := r.prefetch(next)
		if w == nil {
			return
		}
		r.ahead = append(r.ahead, w)
		next += w.size
	}
}

// prefetch starts fetching a window at off, or returns nil when the
// process holds its budget of windows already.
func (r *reader) prefetch(off int64) *window {
	n := min(int64(windowSize), r.size-off)
	if windowBytes.Add(n) > maxWindowBytes {
		windowBytes.Add(-n)
		return nil
	}
	w := &window{off: off, size: n, done: make(chan struct{}), buf: windowBufs.Get()}
	data := (*w.buf)[:n]
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		k, err := r.readAt(ctx, data, off)
		cancel()
		w.data, w.err = data[:k], err // a short read keeps only what was read
		close(w.done)
		r.mu.Lock()
		w.fetched = true
		w.recycle()
		r.mu.Unlock()
	}()
	return w
}
