// Package s3 is the s3:// UFS backend: a bucket (and optional key prefix) of
// any S3-compatible service — AWS, Ceph RGW, MinIO, versitygw — read as it is.
// Keys are mapped to paths by splitting on "/": a common prefix is a
// directory, an empty "dir/" marker object is one too, and no granary-specific
// layout is assumed or written.
package s3

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"iter"
	"net"
	"net/http"
	"strings"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/ratelimit"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/granary-cache/granary/internal/ufs"
)

// Options configure the connection to the S3 service.
type Options struct {
	// Endpoint is the service URL, e.g. http://127.0.0.1:7070; empty means AWS.
	Endpoint string
	// Region defaults to us-east-1, which every S3-compatible server accepts.
	Region string
	// PathStyle addresses buckets as ENDPOINT/BUCKET rather than BUCKET.ENDPOINT,
	// as Ceph RGW and most on-premises servers need.
	PathStyle bool
	// AccessKey and SecretKey are static credentials; both empty means
	// anonymous requests.
	AccessKey, SecretKey string
	// MaxAttempts bounds the tries of one request, including the first, on
	// 5xx, throttling and network errors. Zero means 4.
	MaxAttempts int
	// MaxConns bounds the connections kept open to the endpoint. Zero means 128.
	MaxConns int
}

// FS is a read-only UFS over one S3 bucket and prefix.
type FS struct {
	client   *s3.Client
	lean     *lean // the hot path of ReadRange
	bucket   string
	prefix   string // "" or ends with "/"
	endpoint string // for error messages
	http     *http.Transport
}

// Open returns an FS over s3://bucket/prefix. It makes no request: errors such
// as a wrong key or a missing bucket surface, clearly worded, on first use.
func Open(bucket, prefix string, o Options) (*FS, error) {
	if bucket == "" {
		return nil, errors.New("s3: empty bucket name")
	}
	prefix = strings.Trim(prefix, "/")
	if prefix != "" {
		p, err := ufs.CleanPath(prefix)
		if err != nil || p != prefix {
			return nil, fmt.Errorf("s3: prefix %q is not a clean path", prefix)
		}
		prefix += "/"
	}
	if o.Region == "" {
		o.Region = "us-east-1"
	}
	if o.MaxAttempts <= 0 {
		o.MaxAttempts = 4
	}
	if o.MaxConns <= 0 {
		o.MaxConns = 128
	}
	if (o.AccessKey == "") != (o.SecretKey == "") {
		return nil, errors.New("s3: access_key and secret_key must be given together")
	}
	// One connection per concurrent request, all kept for reuse: the default
	// of 2 idle connections per host would make every parallel read pay a new
	// TCP handshake.
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.DialContext = (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	transport.MaxIdleConns = o.MaxConns
	transport.MaxIdleConnsPerHost = o.MaxConns
	transport.IdleConnTimeout = 90 * time.Second
	transport.ResponseHeaderTimeout = 60 * time.Second
	httpClient := &http.Client{Transport: transport}
	cfg := aws.Config{
		Region:     o.Region,
		HTTPClient: httpClient,
		Retryer: func() aws.Retryer {
			return retry.NewStandard(func(so *retry.StandardOptions) {
				so.MaxAttempts = o.MaxAttempts
				so.MaxBackoff = 5 * time.Second
				// The SDK's retry quota is shared by all requests of a client;
				// under many parallel readers one bad minute would empty it and
				// turn every later transient error into a hard failure.
				so.RateLimiter = ratelimit.None
			})
		},
		// Checksums on every request/response are an AWS feature that several
		// S3-compatible servers (and ranged GETs) do not support.
		RequestChecksumCalculation: aws.RequestChecksumCalculationWhenRequired,
		ResponseChecksumValidation: aws.ResponseChecksumValidationWhenRequired,
	}
	if o.AccessKey != "" {
		cfg.Credentials = credentials.NewStaticCredentialsProvider(o.AccessKey, o.SecretKey, "")
	} else {
		cfg.Credentials = aws.AnonymousCredentials{}
	}
	client := s3.NewFromConfig(cfg, func(so *s3.Options) {
		if o.Endpoint != "" {
			so.BaseEndpoint = aws.String(o.Endpoint)
		}
		so.UsePathStyle = o.PathStyle
	})
	endpoint := o.Endpoint
	if endpoint == "" {
		endpoint = "AWS S3 (" + o.Region + ")"
	}
	fast, err := newLean(o, bucket, httpClient)
	if err != nil {
		return nil, err
	}
	return &FS{client: client, lean: fast, bucket: bucket, prefix: prefix, endpoint: endpoint, http: transport}, nil
}

// Close drops idle connections.
func (f *FS) Close() error {
	f.http.CloseIdleConnections()
	return nil
}

func (f *FS) key(name string) string { return f.prefix + name }

func dirInfo(name string, mtime time.Time) ufs.FileInfo {
	return ufs.FileInfo{Name: name, Mode: fs.ModeDir | 0o755, ModTime: mtime}
}

// Stat implements ufs.FS. A file costs one HEAD; a directory one HEAD that
// misses and one LIST of at most one key.
func (f *FS) Stat(ctx context.Context, name string) (ufs.FileInfo, error) {
	if name != "" {
		out, err := f.client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: &f.bucket, Key: aws.String(f.key(name))})
		if err == nil {
			return ufs.FileInfo{
				Name:    name,
				Size:    aws.ToInt64(out.ContentLength),
				ModTime: aws.ToTime(out.LastModified),
				Mode:    0o644,
				Version: etag(out.ETag),
			}, nil
		}
		if ufs.ClassOf(f.wrap("stat", name, err)) != ufs.ClassNotExist {
			return ufs.FileInfo{}, f.wrap("stat", name, err)
		}
	}
	// Not an object: a directory if any key lives below it. The root always
	// exists once the bucket answers.
	dir := f.key(name)
	if dir != "" && !strings.HasSuffix(dir, "/") {
		dir += "/"
	}
	out, err := f.client.ListObjectsV2(ctx, &s3.ListObjectsV2Input{Bucket: &f.bucket, Prefix: &dir, MaxKeys: aws.Int32(1)})
	if err != nil {
		return ufs.FileInfo{}, f.wrap("stat", name, err)
	}
	if name != "" && len(out.Contents) == 0 && len(out.CommonPrefixes) == 0 {
		return ufs.FileInfo{}, ufs.NewError("stat", name, ufs.ClassNotExist, syscall.ENOENT)
	}
	var mtime time.Time
	if len(out.Contents) > 0 && aws.ToString(out.Contents[0].Key) == dir {
		mtime = aws.ToTime(out.Contents[0].LastModified) // a "dir/" marker object
	}
	return dirInfo(name, mtime), nil
}

// List implements ufs.FS with ListObjectsV2 and "/" as delimiter, one page
// of up to 1000 keys per request.
func (f *FS) List(ctx context.Context, dir string) iter.Seq2[[]ufs.FileInfo, error] {
	return func(yield func([]ufs.FileInfo, error) bool) {
		prefix := f.key(dir)
		if prefix != "" && !strings.HasSuffix(prefix, "/") {
			prefix += "/"
		}
		in := &s3.ListObjectsV2Input{Bucket: &f.bucket, Prefix: &prefix, Delimiter: aws.String("/")}
		p := s3.NewListObjectsV2Paginator(f.client, in)
		seen := false // any key at all below prefix, the marker included
		for p.HasMorePages() {
			out, err := p.NextPage(ctx)
			if err != nil {
				yield(nil, f.wrap("list", dir, err))
				return
			}
			page := make([]ufs.FileInfo, 0, len(out.Contents)+len(out.CommonPrefixes))
			files := make(map[string]bool, len(out.Contents))
			for _, o := range out.Contents {
				seen = true
				name := strings.TrimPrefix(aws.ToString(o.Key), prefix)
				if !ufs.ValidName(name) {
					continue // the "dir/" marker itself, or an unrepresentable key
				}
				files[name] = true
				page = append(page, ufs.FileInfo{
					Name:    name,
					Size:    aws.ToInt64(o.Size),
					ModTime: aws.ToTime(o.LastModified),
					Mode:    0o644,
					Version: etag(o.ETag),
				})
			}
			for _, cp := range out.CommonPrefixes {
				seen = true
				name := strings.TrimSuffix(strings.TrimPrefix(aws.ToString(cp.Prefix), prefix), "/")
				// An object "a" and keys below "a/" may both exist; Stat
				// answers with the object, so the listing does too.
				if !ufs.ValidName(name) || files[name] {
					continue
				}
				page = append(page, dirInfo(name, time.Time{}))
			}
			if len(page) > 0 && !yield(page, nil) {
				return
			}
		}
		if !seen && dir != "" {
			// S3 has no empty directories: nothing below the prefix means
			// either a file or nothing at all.
			if _, err := f.Stat(ctx, dir); err == nil {
				yield(nil, ufs.NewError("list", dir, ufs.ClassInvalid, errors.New("not a directory")))
			} else {
				yield(nil, ufs.NewError("list", dir, ufs.ClassNotExist, syscall.ENOENT))
			}
		}
	}
}

// ReadRange implements ufs.FS with one ranged GET.
func (f *FS) ReadRange(ctx context.Context, name string, r ufs.Range) (io.ReadCloser, error) {
	if r.Off < 0 {
		return nil, ufs.NewError("read", name, ufs.ClassInvalid, fmt.Errorf("negative offset %d", r.Off))
	}
	if r.Len == 0 {
		return io.NopCloser(strings.NewReader("")), nil
	}
	outcome := leanDeclined
	if !f.lean.off.Load() {
		var rc io.ReadCloser
		var err error
		if rc, outcome, err = f.readLean(ctx, name, r); outcome == leanServed {
			return rc, err
		}
	}
	in := &s3.GetObjectInput{Bucket: &f.bucket, Key: aws.String(f.key(name))}
	switch {
	case r.Len > 0:
		in.Range = aws.String(fmt.Sprintf("bytes=%d-%d", r.Off, r.Off+r.Len-1))
	case r.Off > 0:
		in.Range = aws.String(fmt.Sprintf("bytes=%d-", r.Off))
	}
	// The version is checked against the ETag of the answer rather than
	// with If-Match: the same guarantee, without asking the server to
	// evaluate a condition on every read.
	out, err := f.client.GetObject(ctx, in)
	if err != nil {
		if statusOf(err) == http.StatusRequestedRangeNotSatisfiable {
			// The range starts at or past the end: nothing to read. A
			// missing object answers 404, not 416, so this is not hiding one.
			return io.NopCloser(strings.NewReader("")), nil
		}
		return nil, f.wrap("read", name, err)
	}
	if outcome == leanSuspect {
		f.lean.off.Store(true) // the SDK was let in where the lean path was not
	}
	if r.IfVersion != "" && out.ETag != nil && etag(out.ETag) != r.IfVersion {
		out.Body.Close()
		return nil, ufs.NewError("read", name, ufs.ClassVersionChanged, ufs.ErrVersionChanged)
	}
	return &body{rc: out.Body, f: f, name: name}, nil
}

// body classifies errors met while streaming a response (a reset connection).
type body struct {
	rc   io.ReadCloser
	f    *FS
	name string
}

func (b *body) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	if err != nil && err != io.EOF {
		err = b.f.wrap("read", b.name, err)
	}
	return n, err
}

func (b *body) Close() error { return b.rc.Close() }

// etag strips the quotes S3 puts around an ETag.
func etag(s *string) string { return strings.Trim(aws.ToString(s), `"`) }
