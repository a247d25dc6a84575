package ufs

import (
	"context"
	"io"
	"iter"

	"golang.org/x/time/rate"
)

// Limits bound what one dataset may ask of its UFS, whatever the number of
// readers behind it. A zero field means no limit.
type Limits struct {
	// MaxInflight bounds concurrent requests. A read holds its slot until
	// its body is closed, since the transfer is what loads the UFS.
	MaxInflight int
	// MetadataOpsPerSecond bounds stats and listing pages per second: on
	// CephFS each is an MDS request.
	MetadataOpsPerSecond float64
	// BytesPerSecond bounds read bandwidth.
	BytesPerSecond int64
}

// Limited wraps an FS and enforces Limits on it.
type Limited struct {
	fs    FS
	slots chan struct{}
	meta  *rate.Limiter
	bytes *rate.Limiter
	burst int
}

// Limit wraps fs with l. With no limit set it returns fs unchanged.
func Limit(fs FS, l Limits) FS {
	if l == (Limits{}) {
		return fs
	}
	w := &Limited{fs: fs}
	if l.MaxInflight > 0 {
		w.slots = make(chan struct{}, l.MaxInflight)
	}
	if l.MetadataOpsPerSecond > 0 {
		w.meta = rate.NewLimiter(rate.Limit(l.MetadataOpsPerSecond), max(1, int(l.MetadataOpsPerSecond)))
	}
	if l.BytesPerSecond > 0 {
		// A burst of a tenth of a second, at least 64 KiB: small enough to
		// hold the rate, large enough for few wake-ups.
		w.burst = int(max(l.BytesPerSecond/10, 64<<10))
		w.bytes = rate.NewLimiter(rate.Limit(l.BytesPerSecond), w.burst)
	}
	return w
}

func (w *Limited) acquire(ctx context.Context, op, name string, metadata bool) error {
	if metadata && w.meta != nil {
		if err := w.meta.Wait(ctx); err != nil {
			return NewError(op, name, ClassCanceled, err)
		}
	}
	if w.slots != nil {
		select {
		case w.slots <- struct{}{}:
		case <-ctx.Done():
			return NewError(op, name, ClassCanceled, ctx.Err())
		}
	}
	return nil
}

func (w *Limited) release() {
	if w.slots != nil {
		<-w.slots
	}
}

// Stat implements FS.
func (w *Limited) Stat(ctx context.Context, name string) (FileInfo, error) {
	if err := w.acquire(ctx, OpStat, name, true); err != nil {
		return FileInfo{}, err
	}
	defer w.release()
	return w.fs.Stat(ctx, name)
}

// List implements FS; each page is one metadata operation and holds an
// in-flight slot only while it is fetched.
func (w *Limited) List(ctx context.Context, dir string) iter.Seq2[[]FileInfo, error] {
	return func(yield func([]FileInfo, error) bool) {
		next, stop := iter.Pull2(w.fs.List(ctx, dir))
		defer stop()
		for {
			if err := w.acquire(ctx, OpList, dir, true); err != nil {
				yield(nil, err)
				return
			}
			page, err, ok := next()
			w.release()
			if !ok || !yield(page, err) || err != nil {
				return
			}
		}
	}
}

// ReadRange implements FS.
func (w *Limited) ReadRange(ctx context.Context, name string, r Range) (io.ReadCloser, error) {
	if err := w.acquire(ctx, OpRead, name, false); err != nil {
		return nil, err
	}
	rc, err := w.fs.ReadRange(ctx, name, r)
	if err != nil {
		w.release()
		return nil, err
	}
	return &limitedReader{rc: rc, w: w, ctx: ctx, name: name}, nil
}

// Close implements FS.
func (w *Limited) Close() error { return w.fs.Close() }

type limitedReader struct {
	rc     io.ReadCloser
	w      *Limited
	ctx    context.Context
	name   string
	closed bool
}

func (l *limitedReader) Read(p []byte) (int, error) {
	if l.w.bytes != nil && len(p) > l.w.burst {
		p = p[:l.w.burst]
	}
	n, err := l.rc.Read(p)
	if n > 0 && l.w.bytes != nil {
		if werr := l.w.bytes.WaitN(l.ctx, n); werr != nil && err == nil {
			err = NewError(OpRead, l.name, ClassCanceled, werr)
		}
	}
	return n, err
}

func (l *limitedReader) Close() error {
	if l.closed {
		return nil
	}
	l.closed = true
	err := l.rc.Close() // the request holds its slot until its body is closed
	l.w.release()
	return err
}
