package mount

import (
	"context"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/granary-cache/granary/internal/client"
)

// reader reads one file through the client, with read-ahead windows for a
// sequential reader: the kernel's READs (128 KiB to 1 MiB each) then come
// out of one fetch, and the next window is fetched while this one is read.
type reader struct {
	file   *client.File
	opened time.Time

	mu        sync.Mutex
	cur, next *window
	pos       int64 // where a sequential reader reads next
}

// window is a prefetched range [off, off+size) of a file. data and err
// are written by the fetch and read only after done is closed.
type window struct {
	off, size int64
	data      []byte
	done      chan struct{}
	err       error
}

// covers reports whether off falls in the window's range (whose data may
// still be on its way).
func (w *window) covers(off int64) bool {
	return w != nil && off >= w.off && off < w.off+w.size
}

// readAheadSize is the size of a read-ahead window; at most
// maxWindowBytes of windows exist at once in the process, so that many
// open files cannot hold unbounded memory.
const (
	readAheadSize  = 8 << 20
	maxWindowBytes = 512 << 20
)

var windowBytes atomic.Int64

// close frees the reader's windows.
func (r *reader) close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.drop(r.cur)
	r.drop(r.next)
	r.cur, r.next = nil, nil
}

// drop gives a window's memory back to the budget. Called with r.mu held.
func (r *reader) drop(w *window) {
	if w != nil {
		windowBytes.Add(-w.size)
	}
}

func (r *reader) read(ctx context.Context, dest []byte, off int64) (int, error) {
	size := r.file.Size()
	if off >= size {
		return 0, io.EOF
	}
	want := min(int64(len(dest)), size-off)
	r.mu.Lock()
	sequential := off == r.pos && off > 0
	r.pos = off + want
	switch {
	case r.cur.covers(off):
	case r.next.covers(off):
		r.drop(r.cur)
		r.cur, r.next = r.next, nil
	case sequential:
		if w := r.prefetch(off); w != nil {
			r.drop(r.cur)
			r.drop(r.next)
			r.cur, r.next = w, nil
			break
		}
		fallthrough
	default:
		r.mu.Unlock()
		return r.file.ReadAtContext(ctx, dest, off)
	}
	w := r.cur
	end := w.off + w.size
	if r.next == nil && off+want > w.off+w.size/2 && end < size {
		r.next = r.prefetch(end)
	}
	r.mu.Unlock()
	select {
	case <-w.done:
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	if w.err == nil || w.err == io.EOF {
		if at := off - w.off; at <= int64(len(w.data)) && int64(len(w.data))-at >= want {
			return copy(dest, w.data[at:]), nil
		}
	}
	// The window failed, or ends inside this read: read directly.
	return r.file.ReadAtContext(ctx, dest, off)
}

// prefetch starts fetching a window at off, or returns nil when the
// process holds its budget of windows already. Called with r.mu held.
func (r *reader) prefetch(off int64) *window {
	n := min(int64(readAheadSize), r.file.Size()-off)
	if windowBytes.Add(n) > maxWindowBytes {
		windowBytes.Add(-n)
		return nil
	}
	w := &window{off: off, size: n, done: make(chan struct{})}
	go func() {
		defer close(w.done)
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		data := make([]byte, n)
		k, err := r.file.ReadAtContext(ctx, data, off)
		w.data, w.err = data[:k], err // a short read keeps only what was read
	}()
	return w
}
