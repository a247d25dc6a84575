package etcdtest

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/granary-cache/granary/internal/netnstest"
)

// put and get go through etcd's JSON gateway (/v3/kv/...), so that the test
// needs no etcd client.
func put(t *testing.T, s *Server, key, value string) {
	t.Helper()
	call(t, s, "/v3/kv/put", map[string]string{
		"key":   base64.StdEncoding.EncodeToString([]byte(key)),
		"value": base64.StdEncoding.EncodeToString([]byte(value)),
	}, nil)
}

func get(t *testing.T, s *Server, key string) string {
	t.Helper()
	var r struct {
		Kvs []struct {
			Value string `json:"value"`
		} `json:"kvs"`
	}
	call(t, s, "/v3/kv/range", map[string]string{"key": base64.StdEncoding.EncodeToString([]byte(key))}, &r)
	if len(r.Kvs) == 0 {
		return ""
	}
	v, err := base64.StdEncoding.DecodeString(r.Kvs[0].Value)
	if err != nil {
		t.Fatal(err)
	}
	return string(v)
}

func call(t *testing.T, s *Server, path string, req any, resp any) {
	t.Helper()
	body, _ := json.Marshal(req)
	r, err := healthClient.Post(s.Endpoint+path, "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Body.Close()
	b, _ := io.ReadAll(r.Body)
	if r.StatusCode != http.StatusOK {
		t.Fatalf("%s: %s: %s", path, r.Status, b)
	}
	if resp != nil {
		if err := json.Unmarshal(b, resp); err != nil {
			t.Fatalf("%s: %v: %s", path, err, b)
		}
	}
}

func TestRestart(t *testing.T) {
	s := Start(t, Options{})
	if err := s.Healthy(); err != nil {
		t.Fatal(err)
	}
	endpoint, pid := s.Endpoint, s.PID()
	put(t, s, "k", "v1")

	start := time.Now()
	s.Restart(t)
	t.Logf("restart took %v", time.Since(start))
	if s.Endpoint != endpoint || s.PID() == pid || s.PID() == 0 {
		t.Errorf("after Restart: %s pid %d, before %s pid %d", s.Endpoint, s.PID(), endpoint, pid)
	}
	if syscall.Kill(pid, 0) != syscall.ESRCH {
		t.Errorf("old pid %d still exists", pid)
	}
	if err := s.Healthy(); err != nil {
		t.Fatal(err)
	}
	if got := get(t, s, "k"); got != "v1" {
		t.Errorf("k = %q after restart", got)
	}
	put(t, s, "k", "v2")

	s.Stop()
	if err := s.Healthy(); err == nil {
		t.Error("healthy after Stop")
	}
	s.Restart(t)
	if got := get(t, s, "k"); got != "v2" {
		t.Errorf("k = %q after stop and restart", got)
	}
	put(t, s, "k", "v3")

	s.Kill()
	s.Restart(t)
	if err := s.Healthy(); err != nil {
		t.Fatal(err)
	}
	if got := get(t, s, "k"); got != "v3" {
		t.Errorf("k = %q after kill and restart", got)
	}
}

func TestStartServerNeedsDir(t *testing.T) {
	if _, err := Binary(); err != nil {
		t.Skip(err)
	}
	if _, err := StartServer(Options{}); err == nil {
		t.Error("no error without a data directory")
	}
}

func TestInHost(t *testing.T) {
	if err := netnstest.Supported(); err != nil {
		if !Required() && errors.Is(err, syscall.EPERM) {
			t.Skip(err)
		}
		t.Fatal(err)
	}
	if _, err := Binary(); err != nil && !Required() {
		t.Skip(err)
	}
	n := netnstest.New(t, "", "etcd", "w1")
	h := n.Host("etcd")
	s := Start(t, Options{Host: h})
	if want := "http://" + h.IP + ":2379"; s.Endpoint != want {
		t.Errorf("endpoint %s, want %s", s.Endpoint, want)
	}
	// The server is in the host's network namespace.
	var st syscall.Stat_t
	if err := syscall.Stat("/run/netns/"+h.NS, &st); err != nil {
		t.Fatal(err)
	}
	if got, err := os.Readlink("/proc/" + strconv.Itoa(s.PID()) + "/ns/net"); err != nil || got != fmt.Sprintf("net:[%d]", st.Ino) {
		t.Errorf("etcd in %s (%v), want %s", got, err, h.NS)
	}
	// Reached from the root namespace.
	if err := s.Healthy(); err != nil {
		t.Fatal(err)
	}
	put(t, s, "k", "v")

	h.Cut(t)
	if err := s.Healthy(); err == nil {
		t.Error("healthy across a cut")
	}
	h.Heal(t)
	if err := s.Healthy(); err != nil {
		t.Error(err)
	}
	s.Restart(t)
	if got := get(t, s, "k"); got != "v" {
		t.Errorf("k = %q after restart", got)
	}
}
