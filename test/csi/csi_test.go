// Package csi tests `granary csi`, the CSI node plugin, as a process, with
// real FUSE mounts on this machine: publishing and unpublishing, the one
// mount per dataset that every target shares, and reads that go on while
// the FUSE serving process is killed and the plugin itself is restarted.
package csi

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/granary-cache/granary/internal/granarytest"
	"github.com/granary-cache/granary/internal/mountinfo"
)

var granary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "granary-csi")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if granary, err = granarytest.Build(dir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func freeAddr(t *testing.T) string { return granarytest.FreeAddr(t) }

// proc is a granary process of the test.
type proc struct {
	cmd  *exec.Cmd
	log  *bytes.Buffer
	done chan struct{}
}

func start(t *testing.T, args ...string) *proc {
	t.Helper()
	p := &proc{log: &bytes.Buffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(granary, args...)
	p.cmd.Stdout, p.cmd.Stderr = p.log, p.log
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			t.Logf("granary %s:\n%s", strings.Join(args[:1], " "), p.log.String())
		}
	})
	return p
}

func (p *proc) stop() {
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
}

func (p *proc) kill() {
	p.cmd.Process.Kill()
	<-p.done
}

// fixture is a worker over a directory, and the plugin's configuration.
type fixture struct {
	data, config, state, socket string
	files                       map[string][]byte
}

func newFixture(t *testing.T) *fixture {
	if os.Getuid() != 0 {
		t.Fatal("the CSI plugin's tests mount FUSE file systems: run them as root")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Fatalf("no /dev/fuse: %v", err)
	}
	f := &fixture{data: t.TempDir(), state: t.TempDir(), files: map[string][]byte{}}
	rng := rand.New(rand.NewPCG(3, 5))
	for i := range 16 {
		b := make([]byte, 64<<10+rng.IntN(1<<20))
		for j := range b {
			b[j] = byte(rng.Uint32())
		}
		name := fmt.Sprintf("shard-%02d.bin", i)
		f.files[name] = b
		if err := os.WriteFile(filepath.Join(f.data, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	listen, admin := freeAddr(t), freeAddr(t)
	dir := t.TempDir()
	f.config = filepath.Join(dir, "granary.yaml")
	cfg := fmt.Sprintf(`datasets:
  - {name: data, ufs: "file://%s"}
worker:
  id: w1
  listen: %s
  admin: %s
  state_dir: %s
  block_size: 1MiB
  page_size: 256KiB
  tiers: [{name: MEM, path: %s, quota: 256MiB}]
membership:
  workers: [{id: w1, addr: %s}]
`, f.data, listen, admin, filepath.Join(dir, "state"), filepath.Join(dir, "mem"), listen)
	if err := os.WriteFile(f.config, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	start(t, "worker", "--config", f.config, "--log-level", "warn")
	waitFor(t, 30*time.Second, "the worker", func() bool {
		resp, err := http.Get("http://" + admin + "/healthz")
		if err == nil {
			resp.Body.Close()
		}
		return err == nil && resp.StatusCode == http.StatusOK
	})
	f.socket = filepath.Join(t.TempDir(), "csi.sock")
	// Whatever a failed test left: the dataset mounts' supervisors (their
	// own sessions: nothing else stops them) and every mount below the
	// test's directories.
	t.Cleanup(func() {
		pids, _ := filepath.Glob(filepath.Join(f.state, "datasets", "*", "pid"))
		for _, p := range pids {
			b, _ := os.ReadFile(p)
			if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 0 {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		unmountBelow(os.TempDir() + "/" + strings.Split(t.Name(), "/")[0])
	})
	return f
}

// unmountBelow detaches every mount whose path starts with prefix.
func unmountBelow(prefix string) {
	b, _ := os.ReadFile("/proc/self/mountinfo")
	lines := strings.Split(string(b), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		f := strings.Fields(lines[i])
		if len(f) > 4 && strings.HasPrefix(f[4], prefix) {
			syscall.Unmount(f[4], syscall.MNT_DETACH)
		}
	}
}

// mounter starts `granary csi mounter` and returns its socket.
func (f *fixture) mounter(t *testing.T) (*proc, string) {
	t.Helper()
	socket := filepath.Join(t.TempDir(), "mounter.sock")
	p := start(t, "csi", "mounter", "--socket", socket, "--state-dir", f.state)
	waitFor(t, 10*time.Second, "the mounter's socket", func() bool {
		_, err := os.Stat(socket)
		return err == nil
	})
	return p, socket
}

// plugin starts `granary csi` (asking the mounter at socket, if any) and a
// client of it.
func (f *fixture) plugin(t *testing.T, mounter ...string) (*proc, csi.NodeClient) {
	t.Helper()
	args := []string{"csi", "--endpoint", "unix://" + f.socket, "--node-id", "node-1", "--state-dir", f.state, "--config-file", f.config}
	if len(mounter) > 0 {
		args = append(args, "--mounter", mounter[0])
	}
	p := start(t, args...)
	conn, err := grpc.NewClient("unix://"+f.socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	id := csi.NewIdentityClient(conn)
	waitFor(t, 30*time.Second, "the plugin", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		info, err := id.GetPluginInfo(ctx, &csi.GetPluginInfoRequest{})
		return err == nil && info.Name == "csi.granary.io"
	})
	return p, csi.NewNodeClient(conn)
}

func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: not within %v", what, d)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

var readOnlyMany = &csi.VolumeCapability{
	AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
	AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY},
}

func publish(ctx context.Context, n csi.NodeClient, vol, target string) error {
	_, err := n.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: vol, TargetPath: target, VolumeCapability: readOnlyMany,
		Readonly: true, VolumeContext: map[string]string{"dataset": "data", "namespace": "default"}})
	return err
}

func unpublish(ctx context.Context, n csi.NodeClient, vol, target string) error {
	_, err := n.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: vol, TargetPath: target})
	return err
}

// supervisor is the PID of the dataset's mount supervisor, and its
// serving process (its child).
func (f *fixture) supervisor(t *testing.T) (sup, server int) {
	b, err := os.ReadFile(filepath.Join(f.state, "datasets", "default_data", "pid"))
	if err != nil {
		t.Fatal(err)
	}
	sup, _ = strconv.Atoi(strings.TrimSpace(string(b)))
	// Children are listed by the thread that started them.
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", sup))
	for _, task := range tasks {
		kids, _ := os.ReadFile(task)
		if fs := strings.Fields(string(kids)); len(fs) > 0 {
			server, _ = strconv.Atoi(fs[0])
			break
		}
	}
	return sup, server
}

func checkFiles(t *testing.T, dir string, files map[string][]byte) {
	t.Helper()
	for name, want := range files {
		got, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("%s/%s: content differs", dir, name)
		}
	}
}

func TestPublishUnpublish(t *testing.T) {
	f := newFixture(t)
	_, n := f.plugin(t)
	ctx := context.Background()
	pods := t.TempDir()
	t1, t2 := filepath.Join(pods, "pod-a", "volume"), filepath.Join(pods, "pod-b", "volume")
	began := time.Now()
	if err := publish(ctx, n, "default/data", t1); err != nil {
		t.Fatal(err)
	}
	checkFiles(t, t1, f.files)
	t.Logf("FIGURE publish to a readable mount (first pod of the node): %v", time.Since(began).Round(time.Millisecond))
	// Twice for the same target: nothing changes.
	if err := publish(ctx, n, "default/data", t1); err != nil {
		t.Fatalf("publishing again: %v", err)
	}
	sup, _ := f.supervisor(t)
	began = time.Now()
	if err := publish(ctx, n, "default/data", t2); err != nil {
		t.Fatal(err)
	}
	t.Logf("FIGURE publish to a readable mount (second pod, dataset mounted): %v", time.Since(began).Round(time.Millisecond))
	checkFiles(t, t2, f.files)
	if again, _ := f.supervisor(t); again != sup {
		t.Errorf("a second target started another mount (supervisor %d, then %d)", sup, again)
	}
	if err := os.WriteFile(filepath.Join(t1, "new"), []byte("x"), 0o644); err == nil {
		t.Error("a published volume is writable")
	}
	if err := unpublish(ctx, n, "default/data", t2); err != nil {
		t.Fatal(err)
	}
	if err := unpublish(ctx, n, "default/data", t2); err != nil {
		t.Fatalf("unpublishing again: %v", err)
	}
	checkFiles(t, t1, f.files) // the other pod still reads
	if err := unpublish(ctx, n, "default/data", t1); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the dataset's mount to stop with its last target", func() bool {
		return syscall.Kill(sup, 0) != nil
	})
	for _, p := range []string{t1, t2} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("target %s left behind: %v", p, err)
		}
	}
}

// A directory of the dataset whose files call for the other open mode
// (thumbnails among shards) has a FUSE connection of its own, mounted
// below the staging directory. Publishing waits for it, and a pod's target
// holds it too, read-only like the rest. The state directory is a shared
// mount, as the chart's is (Bidirectional): unpublishing one pod leaves the
// connection to the other pods and to the staging directory.
func TestPublishSplitDirectory(t *testing.T) {
	f := newFixture(t)
	if err := os.MkdirAll(filepath.Join(f.data, "thumbs"), 0o755); err != nil {
		t.Fatal(err)
	}
	for i := range 6 {
		name := fmt.Sprintf("thumbs/t%d.png", i)
		b := bytes.Repeat([]byte{byte(i + 1)}, 8<<10+i)
		f.files[name] = b
		if err := os.WriteFile(filepath.Join(f.data, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := syscall.Mount(f.state, f.state, "", syscall.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("", f.state, "", syscall.MS_SHARED, ""); err != nil {
		t.Fatal(err)
	}
	_, n := f.plugin(t)
	ctx := context.Background()
	pods := t.TempDir()
	t1, t2 := filepath.Join(pods, "a", "volume"), filepath.Join(pods, "b", "volume")
	for _, target := range []string{t1, t2} {
		if err := publish(ctx, n, "default/data", target); err != nil {
			t.Fatal(err)
		}
	}
	sup, _ := f.supervisor(t)
	staging := filepath.Join(f.state, "datasets", "default_data", "mnt")
	// No waiting: the publish returned once the directory's connection was
	// up, and the targets took it.
	for _, target := range []string{t1, t2} {
		thumbs := filepath.Join(target, "thumbs")
		m, ok := mountEntry(t, thumbs)
		if !ok {
			b, _ := os.ReadFile(filepath.Join(f.state, "datasets", "default_data", "log"))
			t.Fatalf("%s is not a mount point of the target: the directory's connection did not reach it\nmount log:\n%s", thumbs, b)
		}
		if m.FSType != "fuse.granary" {
			t.Errorf("%s: not a granary connection: %+v", thumbs, m)
		}
		for _, mp := range []string{target, thumbs} {
			if e, _ := mountEntry(t, mp); !e.HasOption("ro") || !e.HasOption("nosuid") || !e.HasOption("nodev") {
				t.Errorf("%s: want ro,nosuid,nodev, got %+v", mp, e)
			}
		}
		checkFiles(t, target, f.files)
		if err := os.WriteFile(filepath.Join(thumbs, "new"), []byte("x"), 0o644); err == nil {
			t.Error("the directory's connection is writable at the target")
		}
	}
	if err := unpublish(ctx, n, "default/data", t1); err != nil {
		t.Fatal(err)
	}
	for _, mp := range []string{filepath.Join(t1, "thumbs"), t1} {
		if _, ok := mountEntry(t, mp); ok {
			t.Errorf("%s is still mounted after unpublish", mp)
		}
	}
	if _, err := os.Stat(t1); !os.IsNotExist(err) {
		t.Errorf("target %s left behind: %v", t1, err)
	}
	for _, mp := range []string{filepath.Join(staging, "thumbs"), filepath.Join(t2, "thumbs")} {
		if _, ok := mountEntry(t, mp); !ok {
			t.Errorf("unpublishing the other pod took %s down", mp)
		}
	}
	checkFiles(t, t2, f.files)
	if err := unpublish(ctx, n, "default/data", t2); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the dataset's mount to stop with its last target", func() bool {
		return syscall.Kill(sup, 0) != nil
	})
	for _, mp := range []string{filepath.Join(staging, "thumbs"), staging, filepath.Join(t2, "thumbs"), t2} {
		if _, ok := mountEntry(t, mp); ok {
			t.Errorf("%s is still mounted after the dataset's mount stopped", mp)
		}
	}
}

// mountEntry is the mount whose mount point is mp (the last one made).
func mountEntry(t *testing.T, mp string) (mountinfo.Mount, bool) {
	t.Helper()
	mounts, err := mountinfo.Read()
	if err != nil {
		t.Fatal(err)
	}
	var m mountinfo.Mount
	found := false
	for _, e := range mounts {
		if e.Point == mp {
			m, found = e, true
		}
	}
	return m, found
}

func TestPublishErrors(t *testing.T) {
	f := newFixture(t)
	_, n := f.plugin(t)
	ctx := context.Background()
	target := filepath.Join(t.TempDir(), "volume")
	writer := &csi.VolumeCapability{AccessType: readOnlyMany.AccessType,
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER}}
	block := &csi.VolumeCapability{AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}},
		AccessMode: readOnlyMany.AccessMode}
	for _, c := range []struct {
		name string
		req  *csi.NodePublishVolumeRequest
		code codes.Code
		msg  string
	}{
		{"no volume", &csi.NodePublishVolumeRequest{TargetPath: target, VolumeCapability: readOnlyMany}, codes.InvalidArgument, "volume id"},
		{"no target", &csi.NodePublishVolumeRequest{VolumeId: "default/data", VolumeCapability: readOnlyMany}, codes.InvalidArgument, "target path"},
		{"no capability", &csi.NodePublishVolumeRequest{VolumeId: "default/data", TargetPath: target}, codes.InvalidArgument, "capability"},
		{"writer", &csi.NodePublishVolumeRequest{VolumeId: "default/data", TargetPath: target, VolumeCapability: writer}, codes.InvalidArgument, "read-only"},
		{"block", &csi.NodePublishVolumeRequest{VolumeId: "default/data", TargetPath: target, VolumeCapability: block}, codes.InvalidArgument, "block"},
		{"bad handle", &csi.NodePublishVolumeRequest{VolumeId: "data", TargetPath: target, VolumeCapability: readOnlyMany}, codes.InvalidArgument, "NAMESPACE/DATASET"},
		{"escape", &csi.NodePublishVolumeRequest{VolumeId: "default/..", TargetPath: target, VolumeCapability: readOnlyMany}, codes.InvalidArgument, "NAMESPACE/DATASET"},
		{"unknown dataset", &csi.NodePublishVolumeRequest{VolumeId: "default/nope", TargetPath: target, VolumeCapability: readOnlyMany}, codes.FailedPrecondition, "no dataset \"nope\""},
	} {
		_, err := n.NodePublishVolume(ctx, c.req)
		if s, _ := status.FromError(err); s.Code() != c.code || !strings.Contains(s.Message(), c.msg) {
			t.Errorf("%s: %v, want %s saying %q", c.name, err, c.code, c.msg)
		}
	}
	if _, err := os.Stat(target); !os.IsNotExist(err) {
		t.Errorf("a refused publish left its target: %v", err)
	}
}

// Eight readers hold files open and read them again and again while the
// FUSE serving process is killed (kill -9) and then the plugin itself is
// killed and started again: no read fails, no byte is wrong, and the
// restarted plugin unpublishes what the first one published. The plugin
// asks a mounter process for the mounts, as it does on Kubernetes.
func TestMountsOutliveTheirProcesses(t *testing.T) {
	f := newFixture(t)
	_, socket := f.mounter(t)
	p, n := f.plugin(t, socket)
	ctx := context.Background()
	target := filepath.Join(t.TempDir(), "volume")
	if err := publish(ctx, n, "default/data", target); err != nil {
		t.Fatal(err)
	}
	names := make([]string, 0, len(f.files))
	for name := range f.files {
		names = append(names, name)
	}
	// Each read is counted in the phase it ran in: before the faults, while
	// the serving process is killed and replaced, while the plugin is
	// killed and restarted. The page cache is dropped all along, so that
	// reads reach the mount rather than the kernel's cache.
	const phases = 3
	var (
		stop, stopDrop    atomic.Bool
		phase             atomic.Int32
		reads, fails, bad [phases]atomic.Int64
		longest           [phases]atomic.Int64
		wg, dropWG        sync.WaitGroup
		firstErr          atomic.Pointer[error]
	)
	dropWG.Go(func() {
		for !stopDrop.Load() {
			os.WriteFile("/proc/sys/vm/drop_caches", []byte("1"), 0)
			time.Sleep(100 * time.Millisecond)
		}
	})
	for i := range 8 {
		name := names[i]
		want := f.files[name]
		fh, err := os.Open(filepath.Join(target, name))
		if err != nil {
			t.Fatal(err)
		}
		defer fh.Close()
		wg.Go(func() {
			buf := make([]byte, 128<<10)
			for off := int64(0); !stop.Load(); off = (off + int64(len(buf))) % int64(len(want)) {
				ph := phase.Load()
				began := time.Now()
				k, err := fh.ReadAt(buf, off)
				if d := time.Since(began); int64(d) > longest[ph].Load() {
					longest[ph].Store(int64(d))
				}
				reads[ph].Add(1)
				if err != nil && k < min(len(buf), len(want)-int(off)) {
					fails[ph].Add(1)
					firstErr.CompareAndSwap(nil, &err)
					continue
				}
				if !bytes.Equal(buf[:k], want[off:off+int64(k)]) {
					bad[ph].Add(1)
				}
			}
		})
	}
	time.Sleep(time.Second)
	sup, server := f.supervisor(t)
	if server == 0 {
		t.Fatal("the supervisor has no serving process")
	}
	phase.Store(1)
	syscall.Kill(server, syscall.SIGKILL)
	waitFor(t, 20*time.Second, "a new serving process", func() bool {
		_, s := f.supervisor(t)
		return s != 0 && s != server
	})
	time.Sleep(time.Second)
	phase.Store(2)
	p.kill()
	time.Sleep(300 * time.Millisecond)
	_, n = f.plugin(t, socket)
	time.Sleep(time.Second)
	stop.Store(true)
	wg.Wait()
	stopDrop.Store(true)
	dropWG.Wait()
	for ph, what := range []string{"before any fault", "kill -9 of the FUSE serving process", "kill -9 and restart of the plugin"} {
		t.Logf("FIGURE reads, %s: %d reads, %d failed, %d wrong, longest %v", what,
			reads[ph].Load(), fails[ph].Load(), bad[ph].Load(), time.Duration(longest[ph].Load()).Round(time.Millisecond))
		if fails[ph].Load() != 0 || bad[ph].Load() != 0 {
			t.Errorf("%s: %d reads failed (first: %v), %d were wrong; want 0 and 0", what, fails[ph].Load(), *firstErr.Load(), bad[ph].Load())
		}
	}
	if again, _ := f.supervisor(t); again != sup {
		t.Errorf("the dataset was mounted again (supervisor %d, then %d)", sup, again)
	}
	if err := unpublish(ctx, n, "default/data", target); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the mount to stop after the restarted plugin unpublished it", func() bool {
		return syscall.Kill(sup, 0) != nil
	})
}

// After a loss of everything (the node rebooted: every process and mount
// gone, the state directory kept), the next publish mounts afresh, and an
// unpublish of a target that no longer exists succeeds.
func TestPublishAfterLosingEverything(t *testing.T) {
	f := newFixture(t)
	mounter, socket := f.mounter(t)
	p, n := f.plugin(t, socket)
	ctx := context.Background()
	before := filepath.Join(t.TempDir(), "volume")
	if err := publish(ctx, n, "default/data", before); err != nil {
		t.Fatal(err)
	}
	sup, _ := f.supervisor(t)
	p.kill()
	mounter.kill()
	syscall.Kill(sup, syscall.SIGKILL)
	waitFor(t, 10*time.Second, "the supervisor gone", func() bool { return syscall.Kill(sup, 0) != nil })
	syscall.Unmount(before, syscall.MNT_DETACH)
	syscall.Unmount(filepath.Join(f.state, "datasets", "default_data", "mnt"), syscall.MNT_DETACH)
	os.Remove(before)

	_, socket = f.mounter(t)
	_, n = f.plugin(t, socket)
	if err := unpublish(ctx, n, "default/data", before); err != nil {
		t.Fatalf("unpublishing a target lost with the node: %v", err)
	}
	after := filepath.Join(t.TempDir(), "volume")
	if err := publish(ctx, n, "default/data", after); err != nil {
		t.Fatal(err)
	}
	checkFiles(t, after, f.files)
	if again, _ := f.supervisor(t); again == sup {
		t.Error("no new mount was made")
	}
	if err := unpublish(ctx, n, "default/data", after); err != nil {
		t.Fatal(err)
	}
}
