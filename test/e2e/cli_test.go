// Package e2e runs the granary binary as a user would: built once, run as a
// process against real storage (local directories, a real S3 server).
package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/granary-cache/granary/internal/granarytest"
	"github.com/granary-cache/granary/internal/mountinfo"
	"github.com/granary-cache/granary/internal/s3test"
)

var (
	granary string         // the binary under test
	server  *s3test.Server // shared versitygw, nil when not available
)

func TestMain(m *testing.M) {
	code, err := setup(m)
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		os.Exit(1)
	}
	os.Exit(code)
}

func setup(m *testing.M) (int, error) {
	dir, err := os.MkdirTemp("", "granary-e2e")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	if granary, err = granarytest.Build(dir); err != nil {
		return 0, err
	}
	server, err = s3test.StartServer(dir)
	if err != nil {
		if s3test.Required() {
			return 0, err
		}
		fmt.Fprintln(os.Stderr, "e2e: S3 cases will skip:", err)
	} else {
		defer server.Stop()
	}
	return m.Run(), nil
}

type result struct {
	stdout, stderr string
	code           int
}

// run runs granary with args and extra environment variables.
func run(t *testing.T, env []string, args ...string) result {
	t.Helper()
	cmd := exec.Command(granary, args...)
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run granary %v: %v", args, err)
	}
	return result{stdout.String(), stderr.String(), code}
}

func ok(t *testing.T, r result) result {
	t.Helper()
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	return r
}

// fails checks that a command failed with a message containing every want.
func fails(t *testing.T, r result, want ...string) {
	t.Helper()
	if r.code == 0 {
		t.Fatalf("succeeded; want a failure containing %q\nstdout: %s", want, r.stdout)
	}
	for _, w := range want {
		if !strings.Contains(r.stderr, w) {
			t.Errorf("stderr %q does not contain %q", r.stderr, w)
		}
	}
}

// tree writes a small dataset into a new directory and returns it.
func tree(t *testing.T) string {
	dir := t.TempDir()
	files := map[string]string{
		"a.txt":              "hello\n",
		"dir/b c.txt":        "with a space",
		"dir/ünï.txt":        "unicode",
		"dir/deeper/x#y?.z%": strings.Repeat("z", 100000),
	}
	for name, data := range files {
		p := filepath.Join(dir, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestVersion(t *testing.T) {
	r := ok(t, run(t, nil, "version"))
	if !strings.HasPrefix(r.stdout, "granary ") || !strings.Contains(r.stdout, runtime.Version()) || !strings.Contains(r.stdout, "commit") {
		t.Errorf("version = %q", r.stdout)
	}
	var v map[string]any
	if err := json.Unmarshal([]byte(ok(t, run(t, nil, "version", "--json")).stdout), &v); err != nil || v["go_version"] != runtime.Version() {
		t.Errorf("version --json = %v, %v", v, err)
	}
}

func TestFileDataset(t *testing.T) {
	dir := tree(t)
	ds := "--dataset=demo=file://" + dir

	root := ok(t, run(t, nil, "ls", ds, "/"))
	if root.stdout != "demo\n" {
		t.Errorf("ls / = %q", root.stdout)
	}
	ls := ok(t, run(t, nil, "ls", "-l", ds, "/demo/"))
	lines := strings.Split(strings.TrimSpace(ls.stdout), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "-rw-r--r-- 6 ") || !strings.HasSuffix(lines[0], " a.txt") ||
		!strings.HasPrefix(lines[1], "drwx") || !strings.HasSuffix(lines[1], " dir/") {
		t.Errorf("ls -l /demo/ =\n%s", ls.stdout)
	}
	var entries []struct {
		Name  string `json:"name"`
		Path  string `json:"path"`
		Size  int64  `json:"size"`
		IsDir bool   `json:"is_dir"`
	}
	js := ok(t, run(t, nil, "ls", "--json", ds, "/demo/dir"))
	if err := json.Unmarshal([]byte(js.stdout), &entries); err != nil {
		t.Fatalf("ls --json: %v\n%s", err, js.stdout)
	}
	if len(entries) != 3 || entries[0].Name != "b c.txt" || entries[0].Path != "/demo/dir/b c.txt" || !entries[1].IsDir || entries[2].Name != "ünï.txt" {
		t.Errorf("ls --json = %+v", entries)
	}
	if r := ok(t, run(t, nil, "ls", "--json", ds, "/demo/dir/deeper/x#y?.z%")); !strings.Contains(r.stdout, `"size":100000`) {
		t.Errorf("ls of a file = %s", r.stdout)
	}
	if r := ok(t, run(t, nil, "ls", "-U", ds, "/demo/dir")); len(strings.Fields(r.stdout)) != 4 {
		t.Errorf("ls -U = %q", r.stdout)
	}

	st := ok(t, run(t, nil, "stat", ds, "/demo/dir/b c.txt"))
	for _, w := range []string{"File: /demo/dir/b c.txt", "Size: 12", "regular file", "Modify:", "Version:"} {
		if !strings.Contains(st.stdout, w) {
			t.Errorf("stat lacks %q:\n%s", w, st.stdout)
		}
	}
	var one struct {
		Size    int64  `json:"size"`
		Version string `json:"version"`
	}
	if err := json.Unmarshal([]byte(ok(t, run(t, nil, "stat", "--json", ds, "/demo/a.txt")).stdout), &one); err != nil || one.Size != 6 || one.Version == "" {
		t.Errorf("stat --json = %+v, %v", one, err)
	}

	cat := ok(t, run(t, nil, "cat", ds, "/demo/dir/deeper/x#y?.z%"))
	if cat.stdout != strings.Repeat("z", 100000) {
		t.Errorf("cat returned %d bytes", len(cat.stdout))
	}
	if r := ok(t, run(t, nil, "cat", "--offset", "1", "--length", "3", ds, "/demo/a.txt")); r.stdout != "ell" {
		t.Errorf("cat --offset 1 --length 3 = %q", r.stdout)
	}
}

func TestBadPaths(t *testing.T) {
	dir := tree(t)
	outside := t.TempDir()
	os.WriteFile(filepath.Join(outside, "secret"), []byte("secret"), 0o644)
	os.Symlink(filepath.Join(outside, "secret"), filepath.Join(dir, "link-out"))
	ds := "--dataset=demo=file://" + dir

	fails(t, run(t, nil, "cat", ds, "/demo/../../etc/passwd"), "escapes the dataset root")
	fails(t, run(t, nil, "cat", ds, "/demo/dir/../../.."), "escapes the dataset root")
	// Through the cache a link out of the dataset is not even listed; read
	// directly it is refused.
	fails(t, run(t, nil, "cat", ds, "/demo/link-out"), "/demo/link-out: no such file or directory")
	fails(t, run(t, nil, "cat", "--direct", ds, "/demo/link-out"), "permission denied")
	fails(t, run(t, nil, "cat", ds, "/demo/missing"), "/demo/missing: no such file or directory")
	fails(t, run(t, nil, "cat", "--direct", ds, "/demo/missing"), "read /demo/missing: no such file or directory")
	fails(t, run(t, nil, "ls", ds, "/other/x"), `no dataset named "other" (datasets: demo)`)
	fails(t, run(t, nil, "ls", "--dataset=demo=file://relative", "/"), "--dataset demo=file://relative", "absolute path")
	fails(t, run(t, nil, "ls", "--dataset=demo=file:///nonexistent/dir", "/demo"), "dataset demo (file:///nonexistent/dir)")
	fails(t, run(t, nil, "ls", "--dataset", "noequals", "/"), "expected NAME=URI")
	// No configuration anywhere: say which to pass. (A cache directory of
	// the test's own, so that a `granary up` of the machine is not found.)
	noCache := []string{"XDG_CACHE_HOME=" + t.TempDir(), "GRANARY_CONFIG="}
	if _, err := os.Stat("/etc/granary/granary.yaml"); err != nil {
		fails(t, run(t, noCache, "ls", "/"), "no configuration: pass --config FILE")
	}
}

func TestConfigCheck(t *testing.T) {
	dir := t.TempDir()
	secretFile := filepath.Join(dir, "sk")
	os.WriteFile(secretFile, []byte("file-secret-123\n"), 0o600)
	good := filepath.Join(dir, "good.yaml")
	os.WriteFile(good, []byte(`datasets:
  - name: train
    ufs: s3://bucket/train
    options:
      endpoint: http://127.0.0.1:1
      access_key: ${E2E_AK}
      secret_key_file: `+secretFile+`
`), 0o644)
	r := ok(t, run(t, []string{"E2E_AK=env-access-456"}, "config", "check", "--config", good))
	if strings.Contains(r.stdout, "file-secret-123") || strings.Contains(r.stdout, "env-access-456") || !strings.Contains(r.stdout, "*****") {
		t.Errorf("config check does not mask secrets:\n%s", r.stdout)
	}
	for _, w := range []string{"replicas: 1", "metadata_sync: never", "max_inflight: 64"} {
		if !strings.Contains(r.stdout, w) {
			t.Errorf("config check does not show the default %q:\n%s", w, r.stdout)
		}
	}
	fails(t, run(t, nil, "config", "check", "--config", good), good+":6: datasets[0].options.access_key: environment variable E2E_AK is not set")

	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("datasets:\n  - name: x\n    ufs: file:///data\n    replicas: 1\n    colour: blue\n"), 0o644)
	fails(t, run(t, nil, "config", "check", "--config", bad), bad+":5: datasets[0].colour: unknown field")
	fails(t, run(t, nil, "config", "check", "--config", filepath.Join(dir, "none.yaml")), "none.yaml")

	// The examples shipped with granary are valid.
	env := []string{"S3_ACCESS_KEY=a", "S3_SECRET_KEY=b", "RGW_ACCESS_KEY=c", "RGW_SECRET_KEY=d"}
	for _, ex := range []string{"granary.yaml", "s3/granary.yaml", "rgw/granary.yaml", "cephfs/granary.yaml"} {
		ok(t, run(t, env, "config", "check", "--config", "../../examples/"+ex))
	}
}

func needServer(t *testing.T) *s3test.Server {
	if server == nil {
		t.Skip("no S3 server")
	}
	return server
}

// s3Config writes a config with one S3 dataset whose keys come from the
// environment and returns its path.
func s3Config(t *testing.T, endpoint, bucket string) string {
	p := filepath.Join(t.TempDir(), "granary.yaml")
	os.WriteFile(p, []byte(fmt.Sprintf(`datasets:
  - name: train
    ufs: s3://%s/set
    options:
      endpoint: %s
      path_style: true
      access_key: ${E2E_AK}
      secret_key: ${E2E_SK}
`, bucket, endpoint)), 0o644)
	return p
}

func TestS3Dataset(t *testing.T) {
	srv := needServer(t)
	ctx := context.Background()
	if err := srv.CreateBucket(ctx, "e2e"); err != nil {
		t.Fatal(err)
	}
	big := bytes.Repeat([]byte("granary "), 1<<20) // 8 MiB: several reads
	for key, data := range map[string][]byte{"set/a.jpg": []byte("jpeg"), "set/sub/big.bin": big, "other/x": []byte("x")} {
		if err := srv.Put(ctx, "e2e", key, data); err != nil {
			t.Fatal(err)
		}
	}
	cfg := s3Config(t, srv.Endpoint, "e2e")
	keys := []string{"E2E_AK=" + s3test.AccessKey, "E2E_SK=" + s3test.SecretKey}

	ls := ok(t, run(t, keys, "ls", "-l", "--config", cfg, "/train/"))
	if !strings.Contains(ls.stdout, " 4 ") || !strings.Contains(ls.stdout, "a.jpg") || !strings.Contains(ls.stdout, "sub/") {
		t.Errorf("ls -l =\n%s", ls.stdout)
	}
	cat := ok(t, run(t, keys, "cat", "--config", cfg, "/train/sub/big.bin"))
	if sha256.Sum256([]byte(cat.stdout)) != sha256.Sum256(big) {
		t.Errorf("cat of big.bin: %d bytes, wrong content", len(cat.stdout))
	}
	fails(t, run(t, keys, "stat", "--config", cfg, "/train/../../x"), "escapes the dataset root")
	fails(t, run(t, keys, "stat", "--config", cfg, "/train/x"), "stat /train/x: no such file or directory")

	// Wrong keys: a clear message, and no secret in it.
	wrong := []string{"E2E_AK=" + s3test.AccessKey, "E2E_SK=wrong-secret-789"}
	r := run(t, wrong, "ls", "--config", cfg, "/train/")
	fails(t, r, `access denied for bucket "e2e" at endpoint `+srv.Endpoint)
	if strings.Contains(r.stderr, "wrong-secret-789") || strings.Contains(r.stderr, s3test.SecretKey) {
		t.Errorf("a secret reached the output: %s", r.stderr)
	}

	fails(t, run(t, keys, "ls", "--config", s3Config(t, srv.Endpoint, "missing-bucket"), "/train/"),
		`bucket "missing-bucket" does not exist at endpoint `+srv.Endpoint)
}

// TestBenchGenNewBucket: `bench gen` into a bucket that does not exist
// yet creates it.
func TestBenchGenNewBucket(t *testing.T) {
	srv := needServer(t)
	cfg := s3Config(t, srv.Endpoint, "bench-new")
	keys := []string{"E2E_AK=" + s3test.AccessKey, "E2E_SK=" + s3test.SecretKey}
	ok(t, run(t, keys, "bench", "gen", "--quiet", "--config", cfg, "--to", "train", "--profile", "imagenet", "--scale", "512KiB"))
	ls := ok(t, run(t, keys, "ls", "--config", cfg, "/train/train/"))
	if !strings.Contains(ls.stdout, "n00000") {
		t.Errorf("ls of the generated bucket:\n%s", ls.stdout)
	}
}

// TestUpCheck is the README's first command: a cache of three workers over
// the embedded demo dataset, read twice; the second pass costs the UFS
// nothing. When up exits, its MEM tiers (a tmpfs) are released.
func TestUpCheck(t *testing.T) {
	state, mem := t.TempDir(), t.TempDir()
	r := ok(t, run(t, nil, "up", "--workers", "3", "--check", "--state-dir", state, "--mem-dir", mem))
	for _, want := range []string{"3 worker(s)", "pass 1: read 5 files", "pass 2: read 5 files", "UFS asked: 0 stat, 0 list, 0 read (0 bytes)"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("up --check says no %q:\n%s", want, r.stdout)
		}
	}
	if left, _ := os.ReadDir(mem); len(left) != 0 {
		t.Errorf("the MEM tiers are still in %s after up exited: %v", mem, left)
	}
	if _, err := os.Stat(filepath.Join(state, "w1", "ssd")); err != nil {
		t.Errorf("the SSD tier is gone from the state directory: %v", err)
	}
	if cfg, err := os.ReadFile(filepath.Join(state, "granary.yaml")); err != nil || !strings.Contains(string(cfg), "open_mode: auto") {
		t.Errorf("the client configuration up wrote: %v\n%s", err, cfg)
	}
}

func TestS3Unreachable(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	endpoint := "http://" + l.Addr().String()
	l.Close()
	cfg := s3Config(t, endpoint, "b")
	fails(t, run(t, []string{"E2E_AK=a", "E2E_SK=b"}, "ls", "--config", cfg, "/train/"), "cannot reach endpoint "+endpoint)
}

// TestBench generates a tiny dataset with `granary bench gen`, reads it with
// `bench run` against a baseline, and checks the bad flags.
func TestBench(t *testing.T) {
	dir := t.TempDir()
	r := ok(t, run(t, nil, "bench", "gen", "--quiet", "--ufs", "file://"+dir, "--profile", "imagenet", "--scale", "1MiB", "--files-per-dir", "4"))
	if !strings.Contains(r.stdout, "wrote ") {
		t.Errorf("gen says %q", r.stdout)
	}
	js, img := filepath.Join(dir, "..", "r.json"), filepath.Join(t.TempDir(), "r.png")
	r = ok(t, run(t, nil, "bench", "run", "--quiet", "--path", "mine="+dir, "--baseline", "sdk=file://"+dir, "--baseline", "ds=dataset:d", "--dataset", "d=file://"+dir, "--epochs", "2", "--readers", "2",
		"--json", js, "--png", img))
	for _, w := range []string{"TARGET", "mine", "sdk", "× sdk", "× ds"} {
		if !strings.Contains(r.stdout, w) {
			t.Errorf("the table has no %q:\n%s", w, r.stdout)
		}
	}
	for _, f := range []string{js, img} {
		if fi, err := os.Stat(f); err != nil || fi.Size() == 0 {
			t.Errorf("%s: %v", f, err)
		}
	}
	// A new directory is made.
	ok(t, run(t, nil, "bench", "gen", "--quiet", "--ufs", "file://"+filepath.Join(t.TempDir(), "new/set"), "--profile", "meta", "--scale", "20"))
	fails(t, run(t, nil, "bench", "gen", "--ufs", "file://"+dir, "--profile", "videos"), `unknown profile "videos"`)
	fails(t, run(t, nil, "bench", "gen", "--profile", "meta"), "--ufs URI or --to DATASET")
	fails(t, run(t, nil, "bench", "gen", "--ufs", "file://"+dir, "--profile", "meta", "--scale", "1GiB"), "number of files")
	fails(t, run(t, nil, "bench", "run", "--path", dir, "--readers", "0"), "readers must be at least 1")
	fails(t, run(t, nil, "bench", "run", "--path", filepath.Join(dir, "missing")), "missing")
	fails(t, run(t, nil, "bench", "run", "--path", dir, "--profile", "videos"), `unknown profile "videos"`)
}

// TestUpMount: `granary up --mount` mounts the datasets of the workers it
// started: files read right through the mount, each dataset's open mode is
// chosen from those workers' listing (no other worker is asked: the
// configuration it samples with is the one up wrote), and an interrupt
// unmounts and stops everything.
func TestUpMount(t *testing.T) {
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Fatalf("FUSE is needed: %v", err)
	}
	data := tree(t)
	state, mem, mnt := t.TempDir(), t.TempDir(), t.TempDir()
	logPath := filepath.Join(t.TempDir(), "up.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	cmd := exec.Command(granary, "up", "--dataset", "d=file://"+data, "--state-dir", state, "--mem-dir", mem, "--mount", mnt)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	running := true
	defer func() {
		if running { // a failure before it exited
			cmd.Process.Kill()
			<-exited
			syscall.Unmount(mnt, syscall.MNT_DETACH)
		}
	}()
	upLog := func() string { b, _ := os.ReadFile(logPath); return string(b) }
	for deadline := time.Now().Add(30 * time.Second); !strings.Contains(upLog(), "mounted at "+mnt); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("up did not mount within 30s:\n%s", upLog())
		}
	}
	for name, want := range map[string]string{"a.txt": "hello\n", "dir/b c.txt": "with a space", "dir/deeper/x#y?.z%": strings.Repeat("z", 100000)} {
		if got, err := os.ReadFile(filepath.Join(mnt, "d", name)); err != nil || string(got) != want {
			t.Errorf("%s through the mount: %q, %v", name, got, err)
		}
	}
	if err := cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		running = false
		if err != nil {
			t.Errorf("up exited with %v after an interrupt:\n%s", err, upLog())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("up did not exit within 30s of an interrupt:\n%s", upLog())
	}
	l := upLog()
	if !strings.Contains(l, `msg="open mode" dataset=d`) {
		t.Errorf("up's log says no open mode for dataset d:\n%s", l)
	}
	if strings.Contains(l, "marked down") {
		t.Errorf("up's mount asked a worker up did not start:\n%s", l)
	}
	if m, err := mountinfo.Of(mnt); err != nil || m.Point == mnt {
		t.Errorf("%s is still mounted after up exited (%+v, %v)", mnt, m, err)
	}
}
