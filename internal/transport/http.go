package transport

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/granary-cache/granary/internal/ufs"
	"github.com/granary-cache/granary/internal/wire"
)

// HTTP reads with HTTP range requests (wire.PathBlock), one per read.
type HTTP struct {
	opts   Options
	scheme string
	client *http.Client
}

// NewHTTP returns a Reader on HTTP.
func NewHTTP(opts Options) *HTTP {
	connect := opts.connectTimeout()
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = 256
	tr.MaxIdleConns = 1024
	tr.DialContext = (&net.Dialer{Timeout: connect, KeepAlive: 30 * time.Second}).DialContext
	tr.TLSClientConfig = opts.TLS
	tr.TLSHandshakeTimeout = connect + time.Second
	t := &HTTP{opts: opts, scheme: "http", client: &http.Client{Transport: tr}}
	if opts.TLS != nil {
		t.scheme = "https"
	}
	return t
}

// Read implements Reader.
func (t *HTTP) Read(ctx context.Context, addr string, r wire.ReadRequest, buf []byte) (wire.Source, error) {
	ref := r.Block
	u := t.scheme + "://" + addr + wire.PathBlock + "?" + wire.RefQuery(ref).Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return 0, err
	}
	if len(buf) == 0 {
		return 0, nil
	}
	req.Header.Set("Range", "bytes="+strconv.FormatInt(r.Offset, 10)+"-"+strconv.FormatInt(r.Offset+int64(len(buf))-1, 10))
	if t.opts.Token != "" {
		req.Header.Set("Authorization", "Bearer "+t.opts.Token)
	}
	resp, err := t.client.Do(req)
	if err != nil {
		return 0, fmt.Errorf("%w: %v", wire.ErrWorker, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return 0, wire.ReadError("read", ref.Dataset, ref.Path, resp)
	}
	if resp.ContentLength >= 0 && resp.ContentLength != int64(len(buf)) {
		return 0, &ufs.Error{Op: "read", Dataset: ref.Dataset, Path: ref.Path, Class: ufs.ClassInvalid,
			Err: wire.MarkAnswered(fmt.Errorf("%d bytes at %d of block %d: the worker has %d", len(buf), r.Offset, ref.Index, resp.ContentLength))}
	}
	if _, err := io.ReadFull(resp.Body, buf); err != nil {
		return 0, fmt.Errorf("%w: block %d of /%s/%s cut short: %v", wire.ErrWorker, ref.Index, ref.Dataset, ref.Path, err)
	}
	return wire.SourceOf(resp.Header.Get(wire.HeaderSource)), nil
}

// ReadBatch implements Reader: HTTP has no batch, so the reads go in
// parallel, at most 16 at once.
func (t *HTTP) ReadBatch(ctx context.Context, addr string, reads []wire.ReadRequest, bufs [][]byte) []error {
	errs := make([]error, len(reads))
	sem := make(chan struct{}, 16)
	var wg sync.WaitGroup
	for i := range reads {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			_, errs[i] = t.Read(ctx, addr, reads[i], bufs[i])
		})
	}
	wg.Wait()
	return errs
}

// Drop implements Reader.
func (t *HTTP) Drop(string) { t.client.CloseIdleConnections() }

// Close implements Reader.
func (t *HTTP) Close() error {
	t.client.CloseIdleConnections()
	return nil
}
