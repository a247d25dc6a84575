package s3

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"syscall"

	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/smithy-go"

	"github.com/granary-cache/granary/internal/ufs"
)

// wrap turns an SDK error into a classified ufs error whose message says what
// is wrong in the user's terms (bucket, endpoint) and never carries a secret:
// the server's own message is dropped for authentication failures.
func (f *FS) wrap(op, name string, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return ufs.NewError(op, name, ufs.ClassCanceled, err)
	}
	code := ""
	var api smithy.APIError
	if errors.As(err, &api) {
		code = api.ErrorCode()
	}
	status := statusOf(err)
	switch {
	case code == "NoSuchBucket":
		return ufs.NewError(op, name, ufs.ClassFatal,
			fmt.Errorf("bucket %q does not exist at endpoint %s", f.bucket, f.endpoint))
	case code == "NoSuchKey" || code == "NotFound" || status == http.StatusNotFound:
		return ufs.NewError(op, name, ufs.ClassNotExist, syscall.ENOENT)
	case code == "InvalidAccessKeyId" || code == "SignatureDoesNotMatch" || code == "AccessDenied" ||
		status == http.StatusForbidden || status == http.StatusUnauthorized:
		return ufs.NewError(op, name, ufs.ClassPermission,
			fmt.Errorf("access denied for bucket %q at endpoint %s (%s): check access_key and secret_key: %w",
				f.bucket, f.endpoint, orStatus(code, status), fs.ErrPermission))
	case code == "PreconditionFailed" || status == http.StatusPreconditionFailed:
		return ufs.NewError(op, name, ufs.ClassVersionChanged, ufs.ErrVersionChanged)
	case status >= 500 || status == http.StatusTooManyRequests || code == "SlowDown" || code == "Throttling":
		return ufs.NewError(op, name, ufs.ClassRetryable,
			fmt.Errorf("endpoint %s answered %s after retries", f.endpoint, orStatus(code, status)))
	case status == 0 && isNetwork(err):
		return ufs.NewError(op, name, ufs.ClassRetryable,
			fmt.Errorf("cannot reach endpoint %s: %w", f.endpoint, rootCause(err)))
	}
	if status != 0 {
		return ufs.NewError(op, name, ufs.ClassFatal,
			fmt.Errorf("endpoint %s answered %s for bucket %q", f.endpoint, orStatus(code, status), f.bucket))
	}
	return ufs.NewError(op, name, ufs.ClassFatal, err)
}

func statusOf(err error) int {
	var re *awshttp.ResponseError
	if errors.As(err, &re) {
		return re.HTTPStatusCode()
	}
	return 0
}

func orStatus(code string, status int) string {
	if code != "" {
		return fmt.Sprintf("%s, HTTP %d", code, status)
	}
	return fmt.Sprintf("HTTP %d", status)
}

func isNetwork(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET)
}

// rootCause digs out the innermost network error: the SDK wraps it in
// several layers of "operation error ..., exceeded maximum attempts ...".
func rootCause(err error) error {
	var oe *net.OpError
	if errors.As(err, &oe) {
		return oe
	}
	return err
}
