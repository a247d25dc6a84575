package s3

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/granary-cache/granary/internal/ufs"
)

// lean is the hot path of reads: a ranged GET made with net/http and
// signed by signer, without the SDK's middleware stack (a third of the CPU
// of a cold small-file read went to it). Anything but a plain answer — an
// error status, a network error — goes to the SDK, which retries, and
// classifies and words the error as every other request. A request the
// SDK then serves although this path's was refused (a signature or
// address this path gets wrong for some service) turns the path off for
// the FS: reads stay correct, at the SDK's cost.
type lean struct {
	client *http.Client
	base   string  // the URL of the bucket: what an object's escaped key follows
	signer *signer // nil: anonymous requests
	off    atomic.Bool
}

// newLean builds the path for o's endpoint and bucket, addressed as the
// SDK addresses it: ENDPOINT/BUCKET with path_style, BUCKET.ENDPOINT
// without; AWS's regional endpoint when none is given.
func newLean(o Options, bucket string, client *http.Client) (*lean, error) {
	endpoint := o.Endpoint
	if endpoint == "" {
		endpoint = "https://s3." + o.Region + ".amazonaws.com"
	}
	u, err := url.Parse(endpoint)
	if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
		return nil, fmt.Errorf("s3: endpoint %q is not an http(s) URL", o.Endpoint)
	}
	// A default port is left out, as the SDK leaves it out of the Host it
	// sends and signs.
	if port := u.Port(); u.Scheme == "http" && port == "80" || u.Scheme == "https" && port == "443" {
		u.Host = u.Hostname()
		if strings.Contains(u.Host, ":") {
			u.Host = "[" + u.Host + "]"
		}
	}
	path := strings.TrimSuffix(u.EscapedPath(), "/")
	l := &lean{client: client}
	if o.PathStyle || net.ParseIP(u.Hostname()) != nil { // no bucket.IP host names
		l.base = u.Scheme + "://" + u.Host + path + "/" + escapePath(bucket)
	} else {
		l.base = u.Scheme + "://" + bucket + "." + u.Host + path
	}
	if o.AccessKey != "" {
		l.signer = &signer{access: o.AccessKey, secret: o.SecretKey, region: o.Region}
	}
	return l, nil
}

// get sends the GET of bytes r of key.
func (l *lean) get(ctx context.Context, key string, r ufs.Range) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, l.base+"/"+escapePath(key), nil)
	if err != nil {
		return nil, err
	}
	if r.Len > 0 {
		req.Header.Set("Range", "bytes="+strconv.FormatInt(r.Off, 10)+"-"+strconv.FormatInt(r.Off+r.Len-1, 10))
	} else if r.Off > 0 {
		req.Header.Set("Range", "bytes="+strconv.FormatInt(r.Off, 10)+"-")
	}
	if l.signer != nil {
		l.signer.sign(req, time.Now())
	}
	return l.client.Do(req)
}

// leanOutcome is what readLean did.
type leanOutcome int

const (
	leanServed   leanOutcome = iota // the answer (or a final error) is in hand
	leanDeclined                    // ask the SDK
	leanSuspect                     // ask the SDK; if it succeeds, this path is wrong here
)

// readLean is ReadRange's lean path.
func (f *FS) readLean(ctx context.Context, name string, r ufs.Range) (io.ReadCloser, leanOutcome, error) {
	resp, err := f.lean.get(ctx, f.key(name), r)
	if err != nil {
		if ctx.Err() != nil {
			return nil, leanServed, f.wrap("read", name, ctx.Err())
		}
		return nil, leanDeclined, nil
	}
	switch {
	case resp.StatusCode == http.StatusPartialContent || resp.StatusCode == http.StatusOK && r.Off == 0:
		if r.IfVersion != "" {
			if tag := strings.Trim(resp.Header.Get("ETag"), `"`); tag != "" && tag != r.IfVersion {
				resp.Body.Close()
				return nil, leanServed, ufs.NewError("read", name, ufs.ClassVersionChanged, ufs.ErrVersionChanged)
			}
		}
		var rc io.ReadCloser = resp.Body
		if resp.StatusCode == http.StatusOK && r.Len > 0 {
			// A server that ignored the range: the range is the start.
			rc = limitedBody{io.LimitReader(resp.Body, r.Len), resp.Body}
		}
		return &body{rc: rc, f: f, name: name}, leanServed, nil
	case resp.StatusCode == http.StatusRequestedRangeNotSatisfiable:
		discard(resp)
		return io.NopCloser(strings.NewReader("")), leanServed, nil
	case resp.StatusCode == http.StatusBadRequest || resp.StatusCode == http.StatusForbidden ||
		resp.StatusCode == http.StatusMovedPermanently || resp.StatusCode == http.StatusTemporaryRedirect:
		discard(resp)
		return nil, leanSuspect, nil
	}
	discard(resp)
	return nil, leanDeclined, nil
}

// discard reads a little of an error answer (so that its connection can
// be reused) and closes it.
func discard(resp *http.Response) {
	io.CopyN(io.Discard, resp.Body, 4<<10)
	resp.Body.Close()
}

type limitedBody struct {
	io.Reader
	io.Closer
}
