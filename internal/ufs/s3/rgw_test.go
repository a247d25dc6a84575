package s3_test

import (
	"context"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/granary-cache/granary/internal/cephtest"
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

// TestConformanceRGW runs the UFS conformance suite against Ceph's radosgw:
// its ETags, listing and range behaviour differ from versitygw's.
func TestConformanceRGW(t *testing.T) {
	env := cephtest.S3(t, cephtest.Dir(t))
	ctx := context.Background()
	c := awss3.New(awss3.Options{BaseEndpoint: aws.String(env["S3_ENDPOINT"]), Region: "default", UsePathStyle: true,
		Credentials: credentials.NewStaticCredentialsProvider(env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"], "")})
	bucket := "conformance"
	if _, err := c.CreateBucket(ctx, &awss3.CreateBucketInput{Bucket: &bucket}); err != nil && !strings.Contains(err.Error(), "BucketAlreadyOwnedByYou") {
		t.Fatal(err)
	}
	if err := ufstest.Populate(ctx, rgwFixture{c, bucket}); err != nil {
		t.Fatal(err)
	}
	fsys, err := s3.Open(bucket, "", s3.Options{Endpoint: env["S3_ENDPOINT"], Region: "default", PathStyle: true,
		AccessKey: env["AWS_ACCESS_KEY_ID"], SecretKey: env["AWS_SECRET_ACCESS_KEY"]})
	if err != nil {
		t.Fatal(err)
	}
	defer fsys.Close()
	ufstest.Run(t, fsys)
}
