// Package fluid tests granary as a runtime of Fluid: `granary fluid thin`
// fed a config.json in Fluid's format, over a real S3 server and real
// workers, read through its FUSE mount; and granary's Fluid manifests
// applied to an API server that has Fluid's CRDs.
package fluid

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/granary-cache/granary/internal/granarytest"
	"github.com/granary-cache/granary/internal/s3test"
)

var granary string

func TestMain(m *testing.M) {
	os.Exit(setup(m))
}

func setup(m *testing.M) int {
	dir, err := os.MkdirTemp("", "granary-fluid")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	if granary, err = granarytest.Build(dir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return m.Run()
}

// required: missing tools fail the test instead of skipping it.
func required() bool { return os.Getenv("GRANARY_REQUIRE_SERVERS") != "" || os.Getenv("CI") == "true" }

func skipOrFail(t *testing.T, format string, args ...any) {
	t.Helper()
	if required() {
		t.Fatalf(format, args...)
	}
	t.Skipf(format, args...)
}

func needFUSE(t *testing.T) {
	t.Helper()
	if _, err := os.Stat("/dev/fuse"); err != nil {
		skipOrFail(t, "no FUSE: %v", err)
	}
	if _, err := exec.LookPath("fusermount3"); err != nil && os.Geteuid() != 0 {
		skipOrFail(t, "no fusermount3 and not root: %v", err)
	}
}

func freeAddr(t *testing.T) string { return granarytest.FreeAddr(t) }

// proc is a granary process the test started; stop ends it by its PID.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  *bytes.Buffer
	done chan struct{}
}

func start(t *testing.T, name string, args ...string) *proc {
	t.Helper()
	p := &proc{name: name, log: &bytes.Buffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(granary, args...)
	p.cmd.Stdout, p.cmd.Stderr = p.log, p.log
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() { p.stop(t) })
	return p
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM to the process and, if it lingers, SIGKILL to it.
func (p *proc) stop(t *testing.T) {
	if p.exited() {
		return
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		t.Errorf("%s did not stop on SIGTERM: %s", p.name, p.log)
		p.cmd.Process.Kill()
		<-p.done
	}
}

// data is the bucket's content: dataset prefix -> path -> bytes.
func data() map[string]map[string][]byte {
	r := rand.New(rand.NewPCG(12, 1))
	out := map[string]map[string][]byte{}
	for _, ds := range []string{"imagenet", "coco"} {
		files := map[string][]byte{}
		for i, size := range []int{0, 1, 4095, 256 << 10, 3<<20 + 17} {
			b := make([]byte, size)
			for j := range b {
				b[j] = byte(r.Uint32())
			}
			files[fmt.Sprintf("train/part-%d.bin", i)] = b
		}
		files["labels.txt"] = []byte("cat\ndog\n" + ds + "\n")
		out[ds] = files
	}
	return out
}

// startWorkers starts n workers serving the datasets of the bucket, with
// static membership, and returns their "ID=ADDR" list and admin addresses.
func startWorkers(t *testing.T, srv *s3test.Server, bucket string, n int) (string, []string) {
	dir := t.TempDir()
	var datasets strings.Builder
	datasets.WriteString("datasets:\n")
	for _, ds := range []string{"imagenet", "coco"} {
		fmt.Fprintf(&datasets, "  - name: %s\n    ufs: s3://%s/%s\n    options: {endpoint: %q, path_style: true, access_key: %q, secret_key: %q}\n",
			ds, bucket, ds, srv.Endpoint, s3test.AccessKey, s3test.SecretKey)
	}
	type w struct{ id, addr, admin string }
	var ws []w
	var members, list, admins []string
	for i := range n {
		x := w{id: fmt.Sprintf("w%d", i+1), addr: freeAddr(t), admin: freeAddr(t)}
		ws = append(ws, x)
		members = append(members, fmt.Sprintf("    - {id: %s, addr: %q}\n", x.id, x.addr))
		list = append(list, x.id+"="+x.addr)
		admins = append(admins, x.admin)
	}
	for _, x := range ws {
		wd := filepath.Join(dir, x.id)
		doc := datasets.String() + "membership:\n  workers:\n" + strings.Join(members, "") + fmt.Sprintf(`worker:
  id: %s
  listen: %q
  admin: %q
  state_dir: %q
  block_size: 1MiB
  page_size: 256KiB
  tiers:
    - {name: MEM, path: %s/mem, quota: 64MiB}
`, x.id, x.addr, x.admin, wd, wd)
		cfg := filepath.Join(dir, x.id+".yaml")
		if err := os.WriteFile(cfg, []byte(doc), 0o600); err != nil {
			t.Fatal(err)
		}
		p := start(t, "worker "+x.id, "worker", "--config", cfg, "--log-level", "warn")
		for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			if resp, err := http.Get("http://" + x.admin + "/healthz"); err == nil {
				resp.Body.Close()
				break
			}
			if p.exited() || time.Now().After(deadline) {
				t.Fatalf("worker %s did not come up: %s", x.id, p.log)
			}
		}
	}
	return strings.Join(list, ","), admins
}

// cachedBytes sums what the workers hold of a dataset.
func cachedBytes(t *testing.T, admins []string, ds string) int64 {
	var total int64
	for _, a := range admins {
		resp, err := http.Get("http://" + a + "/v1/status")
		if err != nil {
			t.Fatal(err)
		}
		var st struct {
			Datasets map[string]struct {
				CachedBytes int64 `json:"cached_bytes"`
			} `json:"datasets"`
		}
		err = json.NewDecoder(resp.Body).Decode(&st)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		total += st.Datasets[ds].CachedBytes
	}
	return total
}

// mounted reports whether dir is a mount point.
func mounted(t *testing.T, dir string) bool {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 4 && f[4] == dir {
			return true
		}
	}
	return false
}

// runThin writes config.json, starts `granary fluid thin` on it and waits
// until want (a path below the target) can be read.
func runThin(t *testing.T, cfg map[string]any, secrets, want string) (*proc, string) {
	t.Helper()
	dir := t.TempDir()
	js, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	cfgPath := filepath.Join(dir, "config.json")
	if err := os.WriteFile(cfgPath, js, 0o644); err != nil {
		t.Fatal(err)
	}
	target := cfg["targetPath"].(string)
	p := start(t, "granary fluid thin", "fluid", "thin", "--config-file", cfgPath, "--secrets-dir", secrets,
		"--write-config", filepath.Join(dir, "granary.yaml"), "--log-level", "debug")
	t.Cleanup(func() {
		p.stop(t)
		if mounted(t, target) {
			t.Errorf("%s is still mounted after the FUSE entrypoint stopped", target)
			exec.Command("fusermount3", "-u", "-z", target).Run()
		}
	})
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if _, err := os.Stat(filepath.Join(target, want)); err == nil {
			break
		}
		if p.exited() || time.Now().After(deadline) {
			t.Fatalf("the mount at %s did not come up:\n%s", target, p.log)
		}
	}
	written, _ := os.ReadFile(filepath.Join(dir, "granary.yaml"))
	return p, string(written)
}

func compare(t *testing.T, root string, files map[string][]byte) {
	t.Helper()
	for name, want := range files {
		got, err := os.ReadFile(filepath.Join(root, name))
		if err != nil {
			t.Errorf("read %s: %v", name, err)
			continue
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s: read %d bytes that differ from the %d in the bucket", name, len(got), len(want))
		}
	}
}

func TestThinRuntime(t *testing.T) {
	needFUSE(t)
	srv := s3test.Start(t)
	const bucket = "fluid-data"
	ctx := context.Background()
	if err := srv.CreateBucket(ctx, bucket); err != nil {
		t.Fatal(err)
	}
	content := data()
	for ds, files := range content {
		for name, b := range files {
			if err := srv.Put(ctx, bucket, ds+"/"+name, b); err != nil {
				t.Fatal(err)
			}
		}
	}
	workers, admins := startWorkers(t, srv, bucket, 2)

	// Fluid mounts a Dataset's encryptOptions as files of a Secret.
	secrets := t.TempDir()
	os.MkdirAll(filepath.Join(secrets, "s3-keys"), 0o700)
	os.WriteFile(filepath.Join(secrets, "s3-keys", "access-key"), []byte(s3test.AccessKey), 0o600)
	os.WriteFile(filepath.Join(secrets, "s3-keys", "secret-key"), []byte(s3test.SecretKey+"\n"), 0o600)
	mountOf := func(ds, name, path string) map[string]any {
		m := map[string]any{
			"mountPoint": "s3://" + bucket + "/" + ds,
			"options": map[string]string{
				"alluxio.underfs.s3.endpoint": srv.Endpoint, "path_style": "true",
				"aws.accessKeyId":   filepath.Join(secrets, "s3-keys", "access-key"),
				"fs.s3a.secret.key": filepath.Join(secrets, "s3-keys", "secret-key"),
			},
			"readOnly": true,
		}
		if name != "" {
			m["name"] = name
		}
		if path != "" {
			m["path"] = path
		}
		return m
	}
	runtime := map[string]string{"granary.membership.workers": workers, "granary.dataset.metadata_sync": "never"}

	t.Run("two mounts", func(t *testing.T) {
		target := filepath.Join(t.TempDir(), "runtime-mnt", "thin", "default", "train", "thin-fuse")
		cfg := map[string]any{
			"mounts":         []any{mountOf("imagenet", "imagenet", ""), mountOf("coco", "coco", "/coco")},
			"targetPath":     target,
			"runtimeOptions": runtime,
			"accessModes":    []string{"ReadOnlyMany"},
		}
		_, written := runThin(t, cfg, secrets, "coco/labels.txt")
		if strings.Contains(written, s3test.SecretKey) || strings.Contains(written, s3test.AccessKey) {
			t.Errorf("the written granary configuration holds a key:\n%s", written)
		}
		entries, err := os.ReadDir(target)
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		if strings.Join(names, ",") != "coco,imagenet" {
			t.Errorf("target lists %v, want coco, imagenet", names)
		}
		for ds, files := range content {
			compare(t, filepath.Join(target, ds), files)
		}
		// A second read comes from the cache: still the same bytes.
		compare(t, filepath.Join(target, "imagenet"), content["imagenet"])
		var size int64
		for _, b := range content["imagenet"] {
			size += int64(len(b))
		}
		// Allow a moment for the last pages to land.
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			got := cachedBytes(t, admins, "imagenet")
			if got >= size {
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("the workers cache %d bytes of imagenet, want its %d: the mount did not read through them", got, size)
				break
			}
		}
	})

	t.Run("one mount at the root", func(t *testing.T) {
		target := filepath.Join(t.TempDir(), "thin-fuse")
		cfg := map[string]any{
			"mounts":         []any{mountOf("coco", "coco", "")},
			"targetPath":     target,
			"runtimeOptions": runtime,
		}
		runThin(t, cfg, secrets, "labels.txt")
		compare(t, target, content["coco"])
	})

	t.Run("bad config", func(t *testing.T) {
		cfgPath := filepath.Join(t.TempDir(), "config.json")
		os.WriteFile(cfgPath, []byte(`{"mounts":[{"mountPoint":"s3://b","name":"../up"}],"targetPath":"/tmp/x"}`), 0o644)
		out, err := exec.Command(granary, "fluid", "thin", "--config-file", cfgPath).CombinedOutput()
		if err == nil || !strings.Contains(string(out), "mounts[0].name") {
			t.Errorf("granary fluid thin on a name with ..: %v\n%s", err, out)
		}
	})
}
