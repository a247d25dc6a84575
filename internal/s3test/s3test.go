// Package s3test runs a real S3 server for tests: versitygw with its POSIX
// backend, on a free port of 127.0.0.1, in a temporary directory, stopped by
// PID when the test ends.
//
// The versitygw binary is found through $GRANARY_VERSITYGW or $PATH
// (test/run.sh builds it). When it is missing the tests that need it skip —
// unless $GRANARY_REQUIRE_SERVERS is set, as the test script sets it, in which
// case they fail: in CI a missing server must never pass silently.
package s3test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/granary-cache/granary/internal/testport"
)

// Keys of the server's root account.
const (
	AccessKey = "granary-test-access"
	SecretKey = "granary-test-secret-Zq8w"
)

// Server is a running versitygw.
type Server struct {
	Endpoint string // http://127.0.0.1:PORT
	Dir      string // the directory that backs it: Dir/BUCKET/KEY

	cmd    *exec.Cmd
	log    *bytes.Buffer
	client *s3.Client
	done   chan struct{}
	once   sync.Once
}

// Binary returns the path of versitygw, or an error saying how to get it.
func Binary() (string, error) {
	if p := os.Getenv("GRANARY_VERSITYGW"); p != "" {
		return p, nil
	}
	if p, err := exec.LookPath("versitygw"); err == nil {
		return p, nil
	}
	return "", errors.New("versitygw not found: run test/run.sh, or `go install github.com/versity/versitygw/cmd/versitygw@v1.8.0` and set GRANARY_VERSITYGW")
}

// Required reports whether tests must fail rather than skip without servers.
func Required() bool { return os.Getenv("GRANARY_REQUIRE_SERVERS") != "" }

// Start starts a server for one test and stops it at the test's end.
func Start(t testing.TB) *Server {
	t.Helper()
	s, err := StartServer(t.TempDir())
	if err != nil {
		if !Required() && errors.Is(err, errNoBinary) {
			t.Skip(err)
		}
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	return s
}

var errNoBinary = errors.New("no versitygw binary")

// StartServer starts a server whose data lives under dir (for TestMain,
// where there is no testing.T). The caller must Stop it.
func StartServer(dir string) (*Server, error) {
	bin, err := Binary()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errNoBinary, err)
	}
	data := filepath.Join(dir, "s3data")
	if err := os.MkdirAll(data, 0o755); err != nil {
		return nil, err
	}
	var lastErr error
	for range 5 { // the free port may be taken between probe and bind
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		s, err := launch(bin, port, data)
		if err == nil {
			return s, nil
		}
		lastErr = err
	}
	return nil, lastErr
}

func launch(bin string, port int, data string) (*Server, error) {
	addr := "127.0.0.1:" + strconv.Itoa(port)
	s := &Server{Endpoint: "http://" + addr, Dir: data, log: &bytes.Buffer{}, done: make(chan struct{})}
	s.cmd = exec.Command(bin, "--port", addr, "--access", AccessKey, "--secret", SecretKey,
		"--keep-alive", "--quiet", "posix", data)
	s.cmd.Stdout, s.cmd.Stderr = s.log, s.log
	// Its own process group, so that a stop reaches nothing else and a
	// test binary killed mid-run does not take the terminal's signals with it.
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := s.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start versitygw: %w", err)
	}
	go func() { s.cmd.Wait(); close(s.done) }()
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			break
		}
		select {
		case <-s.done:
			return nil, fmt.Errorf("versitygw exited at start: %s", s.log.String())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			s.Stop()
			return nil, fmt.Errorf("versitygw did not listen on %s within 20s: %s", addr, s.log.String())
		}
	}
	s.client = s3.New(s3.Options{
		BaseEndpoint: aws.String(s.Endpoint),
		Region:       "us-east-1",
		UsePathStyle: true,
		Credentials:  credentials.NewStaticCredentialsProvider(AccessKey, SecretKey, ""),
	})
	return s, nil
}

// Stop kills the server by PID and waits for it.
func (s *Server) Stop() {
	s.once.Do(func() {
		if s.cmd.Process != nil {
			s.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-s.done:
			case <-time.After(5 * time.Second):
				s.cmd.Process.Kill()
				<-s.done
			}
		}
	})
}

// Client returns an S3 client with the root keys, for writing fixtures.
func (s *Server) Client() *s3.Client { return s.client }

// CreateBucket creates a bucket through the S3 API (a directory made by hand
// would not be a proper bucket to the server).
func (s *Server) CreateBucket(ctx context.Context, name string) error {
	_, err := s.client.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(name)})
	if err != nil {
		return fmt.Errorf("create bucket %s: %w", name, err)
	}
	return nil
}

// Put writes one object.
func (s *Server) Put(ctx context.Context, bucket, key string, data []byte) error {
	_, err := s.client.PutObject(ctx, &s3.PutObjectInput{
		Bucket: aws.String(bucket), Key: aws.String(key), Body: bytes.NewReader(data),
		ContentLength: aws.Int64(int64(len(data))),
	})
	if err != nil {
		return fmt.Errorf("put s3://%s/%s: %w", bucket, key, err)
	}
	return nil
}

func freePort() (int, error) { return testport.Port("127.0.0.1") }
