package cluster

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/granary-cache/granary/internal/s3test"
)

// mountProc is a `granary mount` process.
type mountProc struct {
	dir, admin string
	cmd        *exec.Cmd
	log        *bytes.Buffer
	done       chan struct{}
}

// needFUSE skips when this machine cannot mount FUSE file systems (unless
// servers are required, as in CI, where it must).
func needFUSE(t testing.TB) {
	if _, err := os.Stat("/dev/fuse"); err != nil || os.Geteuid() != 0 {
		if s3test.Required() {
			t.Fatalf("FUSE tests need /dev/fuse and root: %v", err)
		}
		t.Skip("no /dev/fuse or not root")
	}
}

// mount starts `granary mount` on the cluster and waits until it serves.
// clientConfig writes the configuration of a client of the cluster (a
// mount, the CLI) and returns its path.
func (c *cluster) clientConfig(t testing.TB) string {
	cfg := filepath.Join(c.dir, fmt.Sprintf("client-%d.yaml", time.Now().UnixNano()))
	doc := c.base + "membership:\n  workers:\n"
	for _, p := range c.workers {
		doc += fmt.Sprintf("    - {id: %s, addr: %q, socket: %q}\n", p.id, p.addr, p.socket)
	}
	doc += fmt.Sprintf("worker:\n  block_size: %d\n  page_size: %d\n", c.blockSize, c.pageSize)
	if err := os.WriteFile(cfg, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	return cfg
}

func (c *cluster) mount(t testing.TB, args ...string) *mountProc {
	t.Helper()
	needFUSE(t)
	cfg := c.clientConfig(t)
	m := &mountProc{dir: t.TempDir(), admin: freeAddr(t), log: &bytes.Buffer{}, done: make(chan struct{})}
	m.cmd = exec.Command(granary, append([]string{"mount", "--config", cfg, "--admin", m.admin, "--log-level", "warn"}, append(args, m.dir)...)...)
	m.cmd.Stdout, m.cmd.Stderr = m.log, m.log
	m.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := m.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { m.cmd.Wait(); close(m.done) }()
	t.Cleanup(m.stop)
	for deadline := time.Now().Add(20 * time.Second); ; {
		if resp, err := http.Get("http://" + m.admin + "/v1/status"); err == nil {
			resp.Body.Close()
			return m
		}
		select {
		case <-m.done:
			t.Fatalf("granary mount exited: %s", m.log)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("granary mount did not come up: %s", m.log)
		}
	}
}

// stop ends the mount process (SIGTERM, then SIGKILL after 10 s) and
// makes sure nothing stays mounted.
func (m *mountProc) stop() {
	m.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-m.done:
	case <-time.After(10 * time.Second):
		m.cmd.Process.Kill()
		<-m.done
	}
	syscall.Unmount(m.dir, syscall.MNT_DETACH) // in case the process could not
}

type mountStats struct {
	Mount struct {
		Opens, PassthroughOpens, DirectOpens, SmallDirectReads, DaemonReads, Ioctls int64
		PassthroughSupported, DirectIOSupported                                     bool
	} `json:"mount"`
}

func (m *mountProc) stats(t testing.TB) mountStats {
	resp, err := http.Get("http://" + m.admin + "/v1/status")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var raw struct {
		Mount map[string]any `json:"mount"`
	}
	json.NewDecoder(resp.Body).Decode(&raw)
	var s mountStats
	num := func(k string) int64 { v, _ := raw.Mount[k].(float64); return int64(v) }
	s.Mount.Opens, s.Mount.PassthroughOpens, s.Mount.DaemonReads = num("opens"), num("passthrough_opens"), num("daemon_reads")
	s.Mount.Ioctls, s.Mount.DirectOpens, s.Mount.SmallDirectReads = num("ioctls"), num("direct_opens"), num("small_direct_reads")
	s.Mount.PassthroughSupported, _ = raw.Mount["passthrough_supported"].(bool)
	s.Mount.DirectIOSupported, _ = raw.Mount["direct_io_supported"].(bool)
	return s
}

// readMount reads every file of the tree under root with 16 readers and
// checks its sha256; only files for which keep says so.
func readMount(t *testing.T, root string, tr *tree, keep func(name string, size int) bool) {
	t.Helper()
	work := make(chan string)
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for name := range work {
				got, err := os.ReadFile(filepath.Join(root, name))
				if err != nil {
					t.Errorf("read %s: %v", name, err)
					continue
				}
				if sha256.Sum256(got) != sha256.Sum256(tr.files[name]) {
					t.Errorf("%s: %d bytes with the wrong sha256", name, len(got))
				}
			}
		})
	}
	for name, data := range tr.files {
		if keep == nil || keep(name, len(data)) {
			work <- name
		}
	}
	close(work)
	wg.Wait()
}

func dropCaches(t testing.TB) {
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0); err != nil {
		t.Logf("cannot drop the page cache: %v", err)
	}
}

// TestMount reads file:// and S3 datasets through a real FUSE mount: the
// tree as walked, every file's sha256 with 16 readers, the tools people use
// on it, odd reads, and a warm pass that costs the UFS and (for files read
// by passthrough) the daemon nothing.
func TestMount(t *testing.T) {
	needFUSE(t)
	tr := makeTree(11, 120)
	dir := t.TempDir()
	tr.writeDir(t, dir)
	outside := filepath.Join(t.TempDir(), "secret")
	os.WriteFile(outside, []byte("not in the dataset"), 0o644)
	os.Symlink(outside, filepath.Join(dir, "link-out"))
	// "wide" is the same tree in blocks of 8 MiB: its 5 MiB file is one block.
	// Both in passthrough, whatever open_mode auto would pick for this tree.
	datasets := fmt.Sprintf("  - {name: local, ufs: \"file://%s\", open_mode: passthrough}\n  - {name: wide, ufs: \"file://%s\", block_size: 8MiB, open_mode: passthrough}\n", dir, dir)
	datasets += fmt.Sprintf("  - {name: signalled, ufs: \"file://%s\", open_mode: passthrough}\n", dir)
	if s3srv != nil {
		tr.writeBucket(t, s3srv, "mount")
		datasets += fmt.Sprintf("  - name: s3\n    ufs: s3://mount\n    open_mode: passthrough\n    options: {endpoint: %q, path_style: true, access_key: %q, secret_key: %q}\n",
			s3srv.Endpoint, s3test.AccessKey, s3test.SecretKey)
	}
	c := startCluster(t, clusterOpts{workers: 2, datasets: datasets})
	m := c.mount(t)
	for _, ds := range []string{"local", "s3"} {
		if ds == "s3" && s3srv == nil {
			continue
		}
		t.Run(ds, func(t *testing.T) {
			root := filepath.Join(m.dir, ds)
			var walked []string
			err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
				if err != nil {
					return err
				}
				if !d.IsDir() {
					walked = append(walked, strings.TrimPrefix(p, root+"/"))
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			var want []string
			for n := range tr.files {
				want = append(want, n)
			}
			sort.Strings(want)
			sort.Strings(walked)
			if strings.Join(walked, "\n") != strings.Join(want, "\n") {
				t.Fatalf("walk found %d files, want %d (the link out of the dataset must not show)", len(walked), len(want))
			}
			readMount(t, root, tr, nil)
			checkTools(t, root, tr)
			checkOddReads(t, root, tr)
			checkReadOnly(t, root)

			// Warm: no UFS request at all; single-block files come from their
			// block files by passthrough even with the page cache dropped.
			_, _, read := c.ufsTotals(c.client(false), ds)
			stat, list, _ := c.ufsTotals(c.client(false), ds)
			dropCaches(t)
			before := m.stats(t)
			readMount(t, root, tr, func(_ string, size int) bool { return size > 0 && size <= blockSize })
			after := m.stats(t)
			if before.Mount.PassthroughSupported {
				if after.Mount.DaemonReads != before.Mount.DaemonReads {
					t.Errorf("warm single-block files: %d daemon READs; want 0 (passthrough)", after.Mount.DaemonReads-before.Mount.DaemonReads)
				}
				if after.Mount.PassthroughOpens == before.Mount.PassthroughOpens {
					t.Error("no passthrough opens")
				}
			} else {
				t.Log("the kernel offers no FUSE passthrough: daemon reads not checked")
			}
			readMount(t, root, tr, nil)
			if s2, l2, r2 := c.ufsTotals(c.client(false), ds); s2 != stat || l2 != list || r2 != read {
				t.Errorf("warm passes reached the UFS: stat %d->%d, list %d->%d, read %d->%d", stat, s2, list, l2, read, r2)
			}
		})
	}
	checkInterruptedOpens(t, m, filepath.Join(m.dir, "signalled"), tr)
	// A dataset's own block size decides what is passthrough-eligible.
	dropCaches(t)
	before := m.stats(t)
	readMount(t, filepath.Join(m.dir, "wide"), tr, func(name string, _ int) bool { return name == "big/five-blocks.bin" })
	readMount(t, filepath.Join(m.dir, "wide"), tr, func(name string, _ int) bool { return name == "big/five-blocks.bin" })
	if after := m.stats(t); before.Mount.PassthroughSupported && (after.Mount.DaemonReads != before.Mount.DaemonReads || after.Mount.PassthroughOpens == before.Mount.PassthroughOpens) {
		t.Errorf("a 5 MiB file in 8 MiB blocks: %d daemon reads, %d passthrough opens; want passthrough only",
			after.Mount.DaemonReads-before.Mount.DaemonReads, after.Mount.PassthroughOpens-before.Mount.PassthroughOpens)
	}
	if _, err := os.Stat(filepath.Join(m.dir, "local", "link-out")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a symlink out of the dataset is reachable through the mount: %v", err)
	}
	if _, err := os.Stat(filepath.Join(m.dir, "nope")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("an unknown dataset: %v", err)
	}
	// A miss is cached by the kernel: the second stat asks nobody.
	lookups := func() int64 {
		resp, err := http.Get("http://" + m.admin + "/v1/status")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var st struct {
			Mount struct{ Lookups int64 } `json:"mount"`
		}
		json.NewDecoder(resp.Body).Decode(&st)
		return st.Mount.Lookups
	}
	missing := filepath.Join(m.dir, "local", "edge", "missing")
	if _, err := os.Stat(missing); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("stat of a missing file: %v", err)
	}
	seen := lookups()
	for range 3 {
		os.Stat(missing)
	}
	if n := lookups() - seen; n != 0 {
		t.Errorf("3 more stats of a missing file made %d lookups; want 0 (negative entries cached)", n)
	}
}

// checkTools runs ls -l, stat, find and du on the mount.
func checkTools(t *testing.T, root string, tr *tree) {
	var total int64
	for _, d := range tr.files {
		total += int64(len(d))
	}
	run := func(name string, args ...string) string {
		out, err := exec.Command(name, args...).CombinedOutput()
		if err != nil {
			t.Errorf("%s %v: %v: %s", name, args, err, out)
		}
		return string(out)
	}
	if out := run("ls", "-l", filepath.Join(root, "names")); !strings.Contains(out, "with space ü#%.dat") || !strings.Contains(out, " 3000 ") {
		t.Errorf("ls -l names = %s", out)
	}
	if out := run("stat", "-c", "%s %F", filepath.Join(root, "edge/block+1")); strings.TrimSpace(out) != fmt.Sprintf("%d regular file", blockSize+1) {
		t.Errorf("stat = %q", out)
	}
	if out := run("find", root, "-type", "f"); strings.Count(out, "\n") != len(tr.files) {
		t.Errorf("find counted %d files; want %d", strings.Count(out, "\n"), len(tr.files))
	}
	out := run("du", "-s", "-b", root)
	if n, _ := strconv.ParseInt(strings.Fields(out + " 0")[0], 10, 64); n < total {
		t.Errorf("du -sb = %s; want at least %d bytes of files", out, total)
	}
}

// checkOddReads: pread at odd offsets, past EOF, mmap, the empty file.
func checkOddReads(t *testing.T, root string, tr *tree) {
	name := "big/five-blocks.bin"
	want := tr.files[name]
	f, err := os.Open(filepath.Join(root, name))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, off := range []int64{0, 1, 4095, pageSize - 1, blockSize - 3, 3*blockSize + 7, int64(len(want)) - 5} {
		buf := make([]byte, 10000)
		n, err := f.ReadAt(buf, off)
		if err != nil && err != io.EOF {
			t.Errorf("pread at %d: %v", off, err)
			continue
		}
		if !bytes.Equal(buf[:n], want[off:min(off+10000, int64(len(want)))]) {
			t.Errorf("pread at %d: wrong bytes", off)
		}
	}
	if n, err := f.ReadAt(make([]byte, 10), int64(len(want))+100); n != 0 || err != io.EOF {
		t.Errorf("read past EOF: %d, %v", n, err)
	}
	data, err := syscall.Mmap(int(f.Fd()), 0, len(want), syscall.PROT_READ, syscall.MAP_SHARED)
	if err != nil {
		t.Fatalf("mmap: %v", err)
	}
	if !bytes.Equal(data, want) {
		t.Error("mmap read: wrong bytes")
	}
	syscall.Munmap(data)
	if got, err := os.ReadFile(filepath.Join(root, "edge/empty")); err != nil || len(got) != 0 {
		t.Errorf("the empty file: %d bytes, %v", len(got), err)
	}
}

// checkInterruptedOpens opens cold single-block files while a stream of
// signals the process handles (SIGURG, Go's own preemption signal) hits the
// opening thread, so the kernel interrupts the FUSE OPEN: each must still
// come back as a passthrough open, with no READ for the daemon.
func checkInterruptedOpens(t *testing.T, m *mountProc, root string, tr *tree) {
	var names []string
	for name, data := range tr.files {
		if len(data) > 0 && len(data) <= blockSize && len(names) < 40 {
			names = append(names, name)
		}
	}
	before := m.stats(t)
	if !before.Mount.PassthroughSupported {
		t.Log("the kernel offers no FUSE passthrough: interrupted opens not checked")
		return
	}
	for _, name := range names {
		tid := make(chan int, 1)
		opened := make(chan error, 1)
		go func() {
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			tid <- syscall.Gettid()
			got, err := os.ReadFile(filepath.Join(root, name))
			if err == nil && !bytes.Equal(got, tr.files[name]) {
				err = fmt.Errorf("%d bytes, not the file's", len(got))
			}
			opened <- err
		}()
		thread := <-tid
	signal:
		for range 100000 { // bounded: a cold open takes milliseconds
			select {
			case err := <-opened:
				if err != nil {
					t.Errorf("%s opened under signals: %v", name, err)
				}
				break signal
			default:
				syscall.Tgkill(os.Getpid(), thread, syscall.SIGURG)
				time.Sleep(50 * time.Microsecond)
			}
		}
	}
	after := m.stats(t)
	if reads := after.Mount.DaemonReads - before.Mount.DaemonReads; reads != 0 {
		t.Errorf("%d files opened while signals interrupted their opens: %d daemon READs; want 0 (passthrough)", len(names), reads)
	}
	if opens := after.Mount.PassthroughOpens - before.Mount.PassthroughOpens; opens != int64(len(names)) {
		t.Errorf("%d files opened while signals interrupted their opens: %d passthrough opens", len(names), opens)
	}
}

// checkReadOnly: every way of writing fails with EROFS.
func checkReadOnly(t *testing.T, root string) {
	for what, err := range map[string]error{
		"create":   os.WriteFile(filepath.Join(root, "new.txt"), []byte("x"), 0o644),
		"truncate": os.Truncate(filepath.Join(root, "edge/one"), 0),
		"mkdir":    os.Mkdir(filepath.Join(root, "newdir"), 0o755),
		"remove":   os.Remove(filepath.Join(root, "edge/one")),
		"rename":   os.Rename(filepath.Join(root, "edge/one"), filepath.Join(root, "edge/two")),
	} {
		if !errors.Is(err, syscall.EROFS) {
			t.Errorf("%s: %v; want EROFS", what, err)
		}
	}
	if _, err := os.OpenFile(filepath.Join(root, "edge/one"), os.O_WRONLY, 0); !errors.Is(err, syscall.EROFS) {
		t.Errorf("open for writing: %v; want EROFS", err)
	}
}

// TestMountWithoutPassthrough serves every read through the daemon: reads
// of large files go through the read-ahead windows.
func TestMountWithoutPassthrough(t *testing.T) {
	needFUSE(t)
	tr := makeTree(12, 20)
	dir := t.TempDir()
	tr.writeDir(t, dir)
	c := startCluster(t, clusterOpts{workers: 2, datasets: fmt.Sprintf("  - {name: d, ufs: \"file://%s\"}\n", dir)})
	m := c.mount(t, "--no-passthrough", "--dataset", "d")
	readMount(t, m.dir, tr, nil) // the dataset is at the root
	checkOddReads(t, m.dir, tr)
	if st := m.stats(t); st.Mount.PassthroughOpens != 0 || st.Mount.DaemonReads == 0 {
		t.Errorf("stats %+v; want every read served by the daemon", st.Mount)
	}
}

// serverPid finds the serving child of a mount supervisor.
func (m *mountProc) serverPid(t testing.TB) int {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		// Any thread of the supervisor may have started it.
		tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", m.cmd.Process.Pid))
		for _, task := range tasks {
			b, _ := os.ReadFile(task)
			if f := strings.Fields(string(b)); len(f) > 0 {
				pid, _ := strconv.Atoi(f[0])
				return pid
			}
		}
	}
	t.Fatal("the mount has no serving process")
	return 0
}

// TestMountSurvivesServerKill: kill -9 the serving process while readers
// loop over the tree; the mount stays usable without a remount, the loop
// goes on after at most one error, and every byte read is right.
func TestMountSurvivesServerKill(t *testing.T) {
	needFUSE(t)
	tr := makeTree(13, 60)
	dir := t.TempDir()
	tr.writeDir(t, dir)
	c := startCluster(t, clusterOpts{workers: 2, datasets: fmt.Sprintf("  - {name: d, ufs: \"file://%s\"}\n", dir)})
	// Without passthrough every read goes through the server being killed.
	m := c.mount(t, "--no-passthrough")
	root := filepath.Join(m.dir, "d")
	var mu sync.Mutex
	var failures []error
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for pass := 0; pass < 200; pass++ {
			select {
			case <-stop:
				return
			default:
			}
			dropCaches(t)
			for name, want := range tr.files {
				got, err := os.ReadFile(filepath.Join(root, name))
				if err != nil {
					mu.Lock()
					failures = append(failures, fmt.Errorf("%s: %w", name, err))
					mu.Unlock()
					continue
				}
				if sha256.Sum256(got) != sha256.Sum256(want) {
					t.Errorf("%s: wrong bytes after the kill", name)
				}
			}
		}
	}()
	time.Sleep(300 * time.Millisecond)
	first := m.serverPid(t)
	syscall.Kill(first, syscall.SIGKILL)
	// A new server takes over; reads go on.
	for deadline := time.Now().Add(10 * time.Second); m.serverPid(t) == first && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond)
	close(stop)
	<-done
	mu.Lock()
	defer mu.Unlock()
	if len(failures) > 1 {
		t.Errorf("%d reads failed after the kill; want at most one: %v", len(failures), failures)
	}
	t.Logf("reads failed across the kill: %d %v", len(failures), failures)
	readMount(t, root, tr, nil)
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		resp, err := http.Get("http://" + m.admin + "/v1/status")
		if err == nil {
			var st struct {
				Mount struct{ Generation int } `json:"mount"`
			}
			json.NewDecoder(resp.Body).Decode(&st)
			resp.Body.Close()
			if st.Mount.Generation == 2 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("the second server never reported generation 2")
		}
	}
}

// TestStaleMountCleaned: when the whole mount (supervisor and server) is
// killed, the mount point is left "not connected"; the next mount cleans it.
func TestStaleMountCleaned(t *testing.T) {
	needFUSE(t)
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "f"), []byte("hello"), 0o644)
	c := startCluster(t, clusterOpts{workers: 1, datasets: fmt.Sprintf("  - {name: d, ufs: \"file://%s\"}\n", dir)})
	m := c.mount(t)
	server := m.serverPid(t)
	syscall.Kill(m.cmd.Process.Pid, syscall.SIGKILL)
	syscall.Kill(server, syscall.SIGKILL)
	<-m.done
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, err := os.Stat(m.dir); errors.Is(err, syscall.ENOTCONN) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the mount point never went stale")
		}
	}
	// Mount again on the same directory.
	cfg := m.cmd.Args[3] // mount --config FILE ...
	again := &mountProc{dir: m.dir, admin: freeAddr(t), log: &bytes.Buffer{}, done: make(chan struct{})}
	again.cmd = exec.Command(granary, "mount", "--config", cfg, "--admin", again.admin, again.dir)
	again.cmd.Stdout, again.cmd.Stderr = again.log, again.log
	if err := again.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { again.cmd.Wait(); close(again.done) }()
	defer func() {
		again.cmd.Process.Signal(syscall.SIGTERM)
		<-again.done
	}()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if b, err := os.ReadFile(filepath.Join(m.dir, "d", "f")); err == nil {
			if string(b) != "hello" {
				t.Fatalf("read %q", b)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the stale mount was not replaced: %s", again.log)
		}
	}
}
