package csi

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"
)

// The mounter protocol: JSON over HTTP on a unix socket of the node, from
// the plugin to `granary csi mounter`.
//
//	POST /v1/ensure   {"key","dataset","config","options"} -> {"staging"}
//	POST /v1/release  {"key"}                               -> {}
//
// Errors are a status other than 200 with {"error": "..."}.

type ensureRequest struct {
	Key     string   `json:"key"`
	Dataset string   `json:"dataset"`
	Config  string   `json:"config"`
	Options []string `json:"options,omitempty"`
}

type ensureResponse struct {
	Staging string `json:"staging"`
}

type releaseRequest struct {
	Key string `json:"key"`
}

type errorResponse struct {
	Error string `json:"error"`
}

// ServeMounter serves a Spawner's mounts on a unix socket until ctx ends.
func ServeMounter(ctx context.Context, socket string, s *Spawner, log *slog.Logger) error {
	if err := os.MkdirAll(filepath.Dir(socket), 0o755); err != nil {
		return err
	}
	os.Remove(socket)
	l, err := net.Listen("unix", socket)
	if err != nil {
		return fmt.Errorf("listen %s: %w", socket, err)
	}
	if err := os.Chmod(socket, 0o600); err != nil {
		l.Close()
		return err
	}
	var locks datasetLocks
	mux := http.NewServeMux()
	reply := func(w http.ResponseWriter, v any, err error) {
		w.Header().Set("Content-Type", "application/json")
		if err != nil {
			w.WriteHeader(http.StatusInternalServerError)
			v = errorResponse{Error: err.Error()}
		}
		json.NewEncoder(w).Encode(v)
	}
	mux.HandleFunc("POST /v1/ensure", func(w http.ResponseWriter, r *http.Request) {
		var req ensureRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.Key == "" || req.Dataset == "" {
			http.Error(w, `{"error":"expected {key, dataset, config}"}`, http.StatusBadRequest)
			return
		}
		unlock := locks.lock(req.Key)
		defer unlock()
		staging, err := s.Ensure(r.Context(), req.Key, req.Dataset, req.Config, req.Options)
		reply(w, ensureResponse{Staging: staging}, err)
	})
	mux.HandleFunc("POST /v1/release", func(w http.ResponseWriter, r *http.Request) {
		var req releaseRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.Key == "" {
			http.Error(w, `{"error":"expected {key}"}`, http.StatusBadRequest)
			return
		}
		unlock := locks.lock(req.Key)
		defer unlock()
		reply(w, struct{}{}, s.Release(req.Key))
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	log.Info("CSI mounter serving", "socket", socket, "state", s.StateDir)
	if err := srv.Serve(l); err != http.ErrServerClosed {
		return err
	}
	return nil
}

// RemoteMounter is a Mounter in another process (ServeMounter).
type RemoteMounter struct {
	Socket string
	c      *http.Client
}

// NewRemoteMounter reaches the mounter at socket.
func NewRemoteMounter(socket string) *RemoteMounter {
	return &RemoteMounter{Socket: socket, c: &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
	}}}
}

func (m *RemoteMounter) call(ctx context.Context, path string, req, resp any) error {
	body, _ := json.Marshal(req)
	r, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://mounter"+path, bytes.NewReader(body))
	if err != nil {
		return err
	}
	res, err := m.c.Do(r)
	if err != nil {
		return fmt.Errorf("the mounter at %s: %w", m.Socket, err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(res.Body, 1<<20))
	if res.StatusCode != http.StatusOK {
		var e errorResponse
		if json.Unmarshal(b, &e) == nil && e.Error != "" {
			return fmt.Errorf("the mounter: %s", e.Error)
		}
		return fmt.Errorf("the mounter: %s: %s", res.Status, bytes.TrimSpace(b))
	}
	return json.Unmarshal(b, resp)
}

// Ensure asks the mounter to mount the dataset.
func (m *RemoteMounter) Ensure(ctx context.Context, key, dataset, config string, opts []string) (string, error) {
	var resp ensureResponse
	err := m.call(ctx, "/v1/ensure", ensureRequest{Key: key, Dataset: dataset, Config: config, Options: opts}, &resp)
	return resp.Staging, err
}

// Release asks the mounter to stop the dataset mount.
func (m *RemoteMounter) Release(key string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return m.call(ctx, "/v1/release", releaseRequest{Key: key}, &struct{}{})
}
