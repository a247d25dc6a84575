package transport

import (
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"

	"github.com/granary-cache/granary/internal/ufs"
	"github.com/granary-cache/granary/internal/wire"
)

// HTTPHandler serves h on HTTP: GET wire.PathBlock with the block in the
// query and the range in a Range header (none: the whole block). The
// status goes out with the first bytes, so that an error before them
// reaches the reader whole; one after them cuts the body short.
func HTTPHandler(h Handler) http.Handler {
	return http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		ref, err := wire.ParseRef(r.URL.Query())
		if err != nil {
			wire.WriteError(rw, ufs.NewError("read", ref.Path, ufs.ClassInvalid, err))
			return
		}
		blen := ref.Len()
		off, n, partial, err := parseRange(r.Header.Get("Range"), blen)
		if err != nil {
			http.Error(rw, err.Error(), http.StatusRequestedRangeNotSatisfiable)
			return
		}
		hw := &httpWriter{rw: rw, n: n, partial: partial, off: off, blen: blen}
		err = h.ServeRead(r.Context(), wire.ReadRequest{Block: ref, Offset: off, Length: n}, hw)
		switch {
		case err != nil && !hw.started:
			wire.WriteError(rw, err)
		case err == nil && !hw.started: // an empty range of a valid block
			hw.start(wire.SourceUnknown)
		}
		// After the first bytes, an error leaves the body short of its
		// Content-Length: the reader sees it cut.
	})
}

// httpWriter is the RangeWriter of one HTTP response.
type httpWriter struct {
	rw      http.ResponseWriter
	off, n  int64
	blen    int64
	partial bool
	started bool
}

func (w *httpWriter) start(src wire.Source) {
	if w.started {
		return
	}
	w.started = true
	h := w.rw.Header()
	h.Set("Content-Length", strconv.FormatInt(w.n, 10))
	h.Set("Content-Type", "application/octet-stream")
	if src != wire.SourceUnknown {
		h.Set(wire.HeaderSource, src.String())
	}
	if w.partial {
		h.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", w.off, w.off+w.n-1, w.blen))
		w.rw.WriteHeader(http.StatusPartialContent)
	}
}

func (w *httpWriter) Write(p []byte, src wire.Source) error {
	w.start(src)
	_, err := w.rw.Write(p)
	return err
}

// WriteFile copies at an offset (the file may be shared by other
// requests, so its own offset is not used, and net/http sends by sendfile
// only from the offset).
func (w *httpWriter) WriteFile(f *os.File, off, n int64, src wire.Source) error {
	w.start(src)
	return copyAt(w.rw, f, off, n)
}

// parseRange parses a single "bytes=a-b" range of a block of size bytes.
func parseRange(h string, size int64) (off, n int64, partial bool, err error) {
	if h == "" {
		return 0, size, false, nil
	}
	spec, ok := strings.CutPrefix(h, "bytes=")
	a, b, ok2 := strings.Cut(spec, "-")
	if !ok || !ok2 || strings.Contains(spec, ",") {
		return 0, 0, false, fmt.Errorf("unsupported range %q", h)
	}
	if off, err = strconv.ParseInt(a, 10, 64); err != nil || off < 0 || off >= max(size, 1) {
		return 0, 0, false, fmt.Errorf("range %q outside a block of %d bytes", h, size)
	}
	last := size - 1
	if b != "" {
		if last, err = strconv.ParseInt(b, 10, 64); err != nil || last < off {
			return 0, 0, false, fmt.Errorf("bad range %q", h)
		}
		last = min(last, size-1)
	}
	return off, last - off + 1, true, nil
}
