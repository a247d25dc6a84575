package s3

import (
	"bytes"
	"context"
	"errors"
	"fmt"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
)

// partSize is the part of a multipart upload.
const partSize = 64 << 20

// Put writes an object below the FS's prefix. granary never writes to a
// UFS; this is for tools that create datasets (granary bench gen). Objects
// larger than a part go up in parts.
func (f *FS) Put(ctx context.Context, name string, data []byte) error {
	key := f.key(name)
	if len(data) <= partSize {
		_, err := f.client.PutObject(ctx, &s3.PutObjectInput{Bucket: &f.bucket, Key: &key,
			Body: bytes.NewReader(data), ContentLength: aws.Int64(int64(len(data)))})
		if err != nil {
			return f.wrap("put", name, err)
		}
		return nil
	}
	up, err := f.client.CreateMultipartUpload(ctx, &s3.CreateMultipartUploadInput{Bucket: &f.bucket, Key: &key})
	if err != nil {
		return f.wrap("put", name, err)
	}
	var parts []types.CompletedPart
	for off, n := 0, int32(1); off < len(data); off, n = off+partSize, n+1 {
		part := data[off:min(off+partSize, len(data))]
		out, err := f.client.UploadPart(ctx, &s3.UploadPartInput{Bucket: &f.bucket, Key: &key, UploadId: up.UploadId,
			PartNumber: aws.Int32(n), Body: bytes.NewReader(part), ContentLength: aws.Int64(int64(len(part)))})
		if err != nil {
			f.client.AbortMultipartUpload(context.WithoutCancel(ctx), &s3.AbortMultipartUploadInput{Bucket: &f.bucket, Key: &key, UploadId: up.UploadId})
			return f.wrap("put", name, fmt.Errorf("part %d: %w", n, err))
		}
		parts = append(parts, types.CompletedPart{ETag: out.ETag, PartNumber: aws.Int32(n)})
	}
	_, err = f.client.CompleteMultipartUpload(ctx, &s3.CompleteMultipartUploadInput{Bucket: &f.bucket, Key: &key,
		UploadId: up.UploadId, MultipartUpload: &types.CompletedMultipartUpload{Parts: parts}})
	if err != nil {
		return f.wrap("put", name, err)
	}
	return nil
}

// CreateBucket creates the FS's bucket unless it exists, for tools that
// create datasets (granary bench gen into a new bucket).
func (f *FS) CreateBucket(ctx context.Context) error {
	if _, err := f.client.HeadBucket(ctx, &s3.HeadBucketInput{Bucket: &f.bucket}); err == nil {
		return nil
	}
	_, err := f.client.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: &f.bucket})
	var owned *types.BucketAlreadyOwnedByYou
	if err != nil && !errors.As(err, &owned) {
		return f.wrap("create bucket", "", err)
	}
	return nil
}
