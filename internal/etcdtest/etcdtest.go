// Package etcdtest runs a real etcd server for tests: a single-member
// cluster, on free ports of 127.0.0.1 or on the address of a simulated host
// (netnstest), with its data in a directory that survives Restart, stopped
// by PID when the test ends.
//
// The etcd binary is found through $GRANARY_ETCD or $PATH (test/lib.sh
// builds it into .cache/bin/etcd). When it is missing the tests that need it
// skip — unless $GRANARY_REQUIRE_SERVERS is set, as the test script sets it,
// in which case they fail: in CI a missing server must never pass silently.
package etcdtest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/granary-cache/granary/internal/netnstest"
	"github.com/granary-cache/granary/internal/testport"
)

// Binary returns the path of etcd, or an error saying how to get it.
func Binary() (string, error) {
	if p := os.Getenv("GRANARY_ETCD"); p != "" {
		return p, nil
	}
	if p, err := exec.LookPath("etcd"); err == nil {
		return p, nil
	}
	return "", errors.New("etcd not found: run test/run.sh (it builds test/tools/etcd into .cache/bin/etcd), " +
		"or `cd test/tools/etcd && go build -o ../../../.cache/bin/etcd go.etcd.io/etcd/server/v3` and set GRANARY_ETCD")
}

// Required reports whether tests must fail rather than skip without servers.
func Required() bool { return os.Getenv("GRANARY_REQUIRE_SERVERS") != "" }

// Options say where the server runs. The zero value is a server on free
// ports of 127.0.0.1 (with Start, in a temporary directory).
type Options struct {
	// Dir is the data directory, kept across Restart. Start makes a
	// temporary one when empty; StartServer needs it.
	Dir string
	// Client is the HOST:PORT the client URL listens on: by default a free
	// port of 127.0.0.1, or HOST_IP:2379 in a Host.
	Client string
	// Peer is the HOST:PORT of the peer URL (a single member has one too):
	// by default a free port of 127.0.0.1, or HOST_IP:2380 in a Host.
	Peer string
	// Host, if set, is the simulated host whose network namespace the
	// server runs in; it listens on the host's IP.
	Host *netnstest.Host
	// Name is the member's name, "etcd" by default.
	Name string
}

// Server is a running etcd.
type Server struct {
	Endpoint string // the client URL: http://IP:PORT
	Dir      string // its data directory
	PeerURL  string // http://IP:PORT

	bin  string
	args []string
	host *netnstest.Host

	mu   sync.Mutex
	proc *netnstest.Proc // nil once stopped
	// logs holds the output of earlier runs of this server (before a
	// Restart), so that a failure shows the whole story.
	logs strings.Builder
}

var errNoBinary = errors.New("no etcd binary")

// Start starts a server for one test and stops it at the test's end. It
// skips the test when there is no etcd binary (unless Required) and fails
// it when the server does not start.
func Start(t testing.TB, o Options) *Server {
	t.Helper()
	if o.Dir == "" {
		o.Dir = filepath.Join(t.TempDir(), "etcd")
	}
	s, err := StartServer(o)
	if err != nil {
		if !Required() && errors.Is(err, errNoBinary) {
			t.Skip(err)
		}
		t.Fatal(err)
	}
	t.Cleanup(func() {
		s.Stop()
		if t.Failed() {
			t.Logf("etcd %s log:\n%s", s.Endpoint, s.Log())
		}
	})
	return s
}

// StartServer starts a server (for TestMain, where there is no testing.T)
// and returns once it is healthy. The caller must Stop it.
func StartServer(o Options) (*Server, error) {
	bin, err := Binary()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errNoBinary, err)
	}
	if o.Dir == "" {
		return nil, errors.New("etcdtest: no data directory")
	}
	if err := os.MkdirAll(filepath.Dir(o.Dir), 0o755); err != nil {
		return nil, err
	}
	if o.Name == "" {
		o.Name = "etcd"
	}
	// Free ports of the root namespace's loopback may be taken between the
	// probe and etcd's bind: then another pair. A host's namespace has its
	// ports to itself.
	pick := o.Host == nil && (o.Client == "" || o.Peer == "")
	var lastErr error
	for range 5 {
		client, peer := o.Client, o.Peer
		if o.Host != nil {
			if client == "" {
				client = o.Host.Addr(2379)
			}
			if peer == "" {
				peer = o.Host.Addr(2380)
			}
		}
		if client == "" {
			if client, err = freeAddr(); err != nil {
				return nil, err
			}
		}
		if peer == "" {
			if peer, err = freeAddr(); err != nil {
				return nil, err
			}
		}
		s := &Server{Endpoint: "http://" + client, PeerURL: "http://" + peer, Dir: o.Dir, bin: bin, host: o.Host}
		s.args = []string{
			"--name", o.Name,
			"--data-dir", o.Dir,
			"--listen-client-urls", s.Endpoint,
			"--advertise-client-urls", s.Endpoint,
			"--listen-peer-urls", s.PeerURL,
			"--initial-advertise-peer-urls", s.PeerURL,
			"--initial-cluster", o.Name + "=" + s.PeerURL,
			"--initial-cluster-state", "new",
			"--initial-cluster-token", "granary-test",
			// Fast elections for a test; no fsync: a killed process loses
			// nothing (its writes are in the page cache), only a crash of
			// the machine would.
			"--heartbeat-interval", "50",
			"--election-timeout", "500",
			"--unsafe-no-fsync",
			"--log-level", "warn",
		}
		err := s.start()
		if err == nil {
			return s, nil
		}
		lastErr = err
		if !pick || !strings.Contains(err.Error(), "address already in use") {
			break
		}
	}
	return nil, lastErr
}

// start runs etcd and waits until it is healthy.
func (s *Server) start() error {
	var cmd *exec.Cmd
	if s.host != nil {
		cmd = s.host.Command(s.bin, s.args...)
	} else {
		cmd = exec.Command(s.bin, s.args...)
	}
	// etcd takes any ETCD_* variable for a flag: none from the environment.
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "ETCD_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	p, err := netnstest.Spawn(cmd)
	if err != nil {
		return fmt.Errorf("etcdtest: %w", err)
	}
	s.proc = p
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := s.Healthy()
		if err == nil {
			return nil
		}
		select {
		case <-p.Done():
			p.Stop()
			s.proc = nil
			return fmt.Errorf("etcdtest: etcd exited at start: %s", p.Log())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			p.Kill()
			s.proc = nil
			return fmt.Errorf("etcdtest: etcd at %s not healthy within 30s (%v): %s", s.Endpoint, err, p.Log())
		}
	}
}

// healthClient goes straight to the server: no proxy from the environment
// (a test's 10.x address would go to it), no connections kept.
var healthClient = &http.Client{
	Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true},
	Timeout:   2 * time.Second,
}

// Healthy asks the server's /health once: nil when it answers
// {"health":"true"}, which etcd does when it has a leader and serves reads.
func (s *Server) Healthy() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.Endpoint+"/health", nil)
	if err != nil {
		return err
	}
	resp, err := healthClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if err != nil {
		return err
	}
	var h struct {
		Health string `json:"health"`
	}
	if err := json.Unmarshal(body, &h); err != nil || resp.StatusCode != http.StatusOK || h.Health != "true" {
		return fmt.Errorf("etcd %s/health: %s: %s", s.Endpoint, resp.Status, strings.TrimSpace(string(body)))
	}
	return nil
}

// Stop stops the server by PID: SIGTERM, then SIGKILL after 10 s. The data
// directory stays, for Restart.
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.end((*netnstest.Proc).Stop)
}

// Kill kills the server by PID (SIGKILL), as a crash would.
func (s *Server) Kill() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.end(func(p *netnstest.Proc) error { p.Kill(); return nil })
}

func (s *Server) end(stop func(*netnstest.Proc) error) {
	if s.proc == nil {
		return
	}
	stop(s.proc) // etcd dies of the SIGTERM it handles: never status 0
	s.logs.WriteString(s.proc.Log())
	s.logs.WriteString("--- stopped\n")
	s.proc = nil
}

// Restart stops the server if it runs and starts it again, with the same
// data directory and URLs, and returns once it is healthy.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.end((*netnstest.Proc).Stop)
	if err := s.start(); err != nil {
		t.Fatalf("restart etcd: %v\nearlier runs:\n%s", err, s.logs.String())
	}
}

// PID is the server's process ID, 0 when it is stopped.
func (s *Server) PID() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil {
		return 0
	}
	return s.proc.PID()
}

// Log returns the output of the server, its earlier runs included.
func (s *Server) Log() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	log := s.logs.String()
	if s.proc != nil {
		log += s.proc.Log()
	}
	return log
}

func freeAddr() (string, error) { return testport.Addr("127.0.0.1") }
