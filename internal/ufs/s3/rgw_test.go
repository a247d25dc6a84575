package s3_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"

	"github.com/granary-cache/granary/internal/cephtest"
	"github.com/granary-cache/granary/internal/ufs"
	"github.com/granary-cache/granary/internal/ufs/s3"
	"github.com/granary-cache/granary/internal/ufs/ufstest"
)

// rgwFixture writes the conformance tree through radosgw's S3 API.
type rgwFixture struct {
	c      *awss3.Client
	bucket string
}

func (r rgwFixture) WriteFile(ctx context.Context, name string, data []byte) error {
	_, err := r.c.PutObject(ctx, &awss3.PutObjectInput{Bucket: &r.bucket, Key: aws.String(name),
		Body: strings.NewReader(string(data)), ContentLength: aws.Int64(int64(len(data)))})
	return err
}

func (r rgwFixture) Mkdir(ctx context.Context, name string) error {
	return r.WriteFile(ctx, name+"/", nil)
}

// rgw is the test cluster's radosgw as a bucketServer.
type rgw struct {
	c    *awss3.Client
	opts s3.Options
}

func newRGW(t *testing.T) rgw {
	env := cephtest.S3(t, cephtest.Dir(t))
	o := s3.Options{Endpoint: env["S3_ENDPOINT"], Region: "default", PathStyle: true,
		AccessKey: env["AWS_ACCESS_KEY_ID"], SecretKey: env["AWS_SECRET_ACCESS_KEY"]}
	c := awss3.New(awss3.Options{BaseEndpoint: aws.String(o.Endpoint), Region: o.Region, UsePathStyle: true,
		Credentials: credentials.NewStaticCredentialsProvider(o.AccessKey, o.SecretKey, "")})
	return rgw{c, o}
}

func (r rgw) Client() *awss3.Client { return r.c }

func (r rgw) CreateBucket(ctx context.Context, name string) error {
	_, err := r.c.CreateBucket(ctx, &awss3.CreateBucketInput{Bucket: &name})
	if err != nil && strings.Contains(err.Error(), "BucketAlreadyOwnedByYou") {
		return nil
	}
	return err
}

func (r rgw) Put(ctx context.Context, bucket, key string, data []byte) error {
	return rgwFixture{r.c, bucket}.WriteFile(ctx, key, data)
}

// TestConformanceRGW runs the UFS conformance suite against Ceph's radosgw:
// its ETags, listing and range behaviour differ from versitygw's.
func TestConformanceRGW(t *testing.T) {
	r := newRGW(t)
	ctx := context.Background()
	bucket := "conformance"
	if err := r.CreateBucket(ctx, bucket); err != nil {
		t.Fatal(err)
	}
	if err := ufstest.Populate(ctx, rgwFixture{r.c, bucket}); err != nil {
		t.Fatal(err)
	}
	fsys, err := s3.Open(bucket, "", r.opts)
	if err != nil {
		t.Fatal(err)
	}
	defer fsys.Close()
	ufstest.Run(t, fsys)
}

// TestMarkersRGW: radosgw, unlike versitygw, holds an object and a prefix of
// the same name and keys with empty path segments: the listing must still
// show each name once.
func TestMarkersRGW(t *testing.T) { r := newRGW(t); checkMarkers(t, r, r.opts) }

// TestETagsRGW: radosgw's ETag of a multipart object is not an MD5 ("-N"
// suffix); versions compare as opaque strings, and a changed object is
// refused mid-read.
func TestETagsRGW(t *testing.T) {
	r := newRGW(t)
	ctx := context.Background()
	bucket := "etags"
	if err := r.CreateBucket(ctx, bucket); err != nil {
		t.Fatal(err)
	}
	// A two-part upload (parts of at least 5 MiB but the last).
	key := "multi.bin"
	up, err := r.c.CreateMultipartUpload(ctx, &awss3.CreateMultipartUploadInput{Bucket: &bucket, Key: &key})
	if err != nil {
		t.Fatal(err)
	}
	var parts []types.CompletedPart
	for i, n := range []int{5 << 20, 1 << 20} {
		num := int32(i + 1)
		out, err := r.c.UploadPart(ctx, &awss3.UploadPartInput{Bucket: &bucket, Key: &key, UploadId: up.UploadId,
			PartNumber: &num, Body: bytes.NewReader(bytes.Repeat([]byte{byte('a' + i)}, n)), ContentLength: aws.Int64(int64(n))})
		if err != nil {
			t.Fatal(err)
		}
		parts = append(parts, types.CompletedPart{ETag: out.ETag, PartNumber: &num})
	}
	if _, err := r.c.CompleteMultipartUpload(ctx, &awss3.CompleteMultipartUploadInput{Bucket: &bucket, Key: &key,
		UploadId: up.UploadId, MultipartUpload: &types.CompletedMultipartUpload{Parts: parts}}); err != nil {
		t.Fatal(err)
	}
	fsys, err := s3.Open(bucket, "", r.opts)
	if err != nil {
		t.Fatal(err)
	}
	defer fsys.Close()
	fi, err := fsys.Stat(ctx, key)
	if err != nil || fi.Size != 6<<20 {
		t.Fatalf("stat %s = %+v, %v", key, fi, err)
	}
	if !strings.Contains(fi.Version, "-2") {
		t.Errorf("version %q of a two-part object; want radosgw's multipart ETag (\"...-2\")", fi.Version)
	}
	rc, err := fsys.ReadRange(ctx, key, ufs.Range{Off: 5<<20 - 1, Len: 2, IfVersion: fi.Version})
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || string(b) != "ab" {
		t.Fatalf("read across the part boundary = %q, %v; want \"ab\"", b, err)
	}
	// Overwritten: the old version is refused.
	if err := r.Put(ctx, bucket, key, []byte("new")); err != nil {
		t.Fatal(err)
	}
	rc, err = fsys.ReadRange(ctx, key, ufs.Range{Off: 0, Len: 2, IfVersion: fi.Version})
	if err == nil {
		_, err = io.ReadAll(rc) // a server may only tell once the body comes
		rc.Close()
	}
	if !errors.Is(err, ufs.ErrVersionChanged) {
		t.Errorf("read of an overwritten object with its old version: %v; want a version change", err)
	}
}
