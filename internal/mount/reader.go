package mount

import (
	"context"
	"io"
	"sync"
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

// window is a prefetched range of a file.
type window struct {
	off  int64
	data []byte
	done chan struct{}
	err  error
}

func (w *window) covers(off int64) bool {
	return w != nil && off >= w.off && off < w.off+int64(len(w.data))
}

// readAheadSize is the size of a read-ahead window.
const readAheadSize = 8 << 20

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
		r.cur, r.next = r.next, nil
	case sequential:
		r.cur, r.next = r.prefetch(off), nil
	default:
		r.mu.Unlock()
		return r.file.ReadAtContext(ctx, dest, off)
	}
	w := r.cur
	end := w.off + int64(len(w.data))
	if r.next == nil && off+want > w.off+int64(len(w.data))/2 && end < size {
		r.next = r.prefetch(end)
	}
	r.mu.Unlock()
	select {
	case <-w.done:
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	if w.err == nil || w.err == io.EOF {
		if in := w.data[off-w.off:]; int64(len(in)) >= want {
			return copy(dest, in), nil
		}
	}
	// The window failed, or ends inside this read: read directly.
	return r.file.ReadAtContext(ctx, dest, off)
}

// prefetch starts fetching a window at off. Called with r.mu held.
func (r *reader) prefetch(off int64) *window {
	w := &window{off: off, data: make([]byte, min(int64(readAheadSize), r.file.Size()-off)), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		_, w.err = r.file.ReadAtContext(ctx, w.data, off)
	}()
	return w
}
