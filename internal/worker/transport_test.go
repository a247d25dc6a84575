package worker

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/granary-cache/granary/internal/block"
	"github.com/granary-cache/granary/internal/transport"
	"github.com/granary-cache/granary/internal/transport/transporttest"
)

// TestTransportConformance runs the transport suite against a real worker
// (a POSIX UFS, a memory tier, a token) over both protocols.
func TestTransportConformance(t *testing.T) {
	for _, proto := range transporttest.Protocols {
		t.Run(proto.Name, func(t *testing.T) {
			tg := startTokenWorker(t)
			transporttest.Run(t, tg, transporttest.Readers{
				Good: func() transport.Reader { return proto.New(transport.Options{Token: tg.token}) },
				Bad:  func() transport.Reader { return proto.New(transport.Options{Token: "not-the-token"}) },
			})
		})
	}
}

// workerTarget is a worker as a transporttest.Target.
type workerTarget struct {
	w      *Worker
	ufsDir string
	token  string
	stop   func()
}

func startTokenWorker(t testing.TB) *workerTarget {
	dir := t.TempDir()
	ufsDir, stateDir := filepath.Join(dir, "ufs"), filepath.Join(dir, "state")
	os.MkdirAll(ufsDir, 0o755)
	tokenFile := filepath.Join(dir, "token")
	os.WriteFile(tokenFile, []byte("s3cret-token\n"), 0o600)
	doc := fmt.Sprintf(`datasets:
  - {name: d, ufs: "file://%s"}
auth: {token_file: %q}
worker:
  id: w1
  listen: 127.0.0.1:0
  admin: 127.0.0.1:0
  state_dir: %q
  block_size: 4MiB
  page_size: 1MiB
  tiers:
    - {name: MEM, path: %q, quota: 1GiB}
`, ufsDir, tokenFile, stateDir, filepath.Join(stateDir, "mem"))
	w, stop := serveWorker(t, doc)
	t.Cleanup(stop)
	return &workerTarget{w: w, ufsDir: ufsDir, token: "s3cret-token", stop: stop}
}

func (tg *workerTarget) Addr() string    { return tg.w.Addr() }
func (tg *workerTarget) Dataset() string { return "d" }
func (tg *workerTarget) Stop(testing.TB) { tg.stop() }

func (tg *workerTarget) Put(t testing.TB, name string, data []byte) block.Ref {
	t.Helper()
	p := filepath.Join(tg.ufsDir, name)
	if err := os.WriteFile(p+".tmp", data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(p+".tmp", p); err != nil {
		t.Fatal(err)
	}
	ds, _ := tg.w.datasets.Get("d")
	fi, err := ds.FS.Stat(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	return block.Ref{ID: block.ID{Dataset: "d", Path: name, Version: fi.Version, BlockSize: int64(tg.w.cfg.Worker.BlockSize)}, Size: fi.Size}
}

func (tg *workerTarget) Remove(t testing.TB, name string) {
	if err := os.Remove(filepath.Join(tg.ufsDir, name)); err != nil {
		t.Fatal(err)
	}
}
