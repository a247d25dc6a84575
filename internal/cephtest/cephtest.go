// Package cephtest gives tests the Ceph cluster that test/ceph/start.sh
// started (test/run.sh starts one and sets $GRANARY_CEPH_DIR).
package cephtest

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Dir returns the cluster's directory. Without one a test skips, unless
// $GRANARY_REQUIRE_SERVERS is set (as in CI), where it fails.
func Dir(t testing.TB) string {
	t.Helper()
	dir := os.Getenv("GRANARY_CEPH_DIR")
	if dir == "" {
		if os.Getenv("GRANARY_REQUIRE_SERVERS") != "" {
			t.Fatal("GRANARY_CEPH_DIR is not set: test/run.sh starts a Ceph cluster")
		}
		t.Skip("no Ceph cluster: run test/ceph/start.sh DIR and set GRANARY_CEPH_DIR")
	}
	return dir
}

// Conf is the cluster's ceph.conf.
func Conf(dir string) string { return filepath.Join(dir, "ceph.conf") }

// FuseMount mounts the cluster's CephFS with ceph-fuse (CephFS's own
// client) for the length of the test and returns the mount point.
func FuseMount(t testing.TB, dir string) string {
	t.Helper()
	mnt := t.TempDir()
	if out, err := exec.Command("ceph-fuse", "-c", Conf(dir), "-n", "client.admin", mnt).CombinedOutput(); err != nil {
		t.Fatalf("ceph-fuse: %v: %s", err, out)
	}
	t.Cleanup(func() { syscall.Unmount(mnt, syscall.MNT_DETACH) })
	return mnt
}

// Unmount unmounts a ceph-fuse mount and waits for its process to end.
// ceph-fuse flushes what it wrote (sizes, mtimes) to the MDS after the
// kernel lets go of the mount: until it exits, another client may still
// list a file it wrote as empty.
func Unmount(t testing.TB, mnt string) {
	t.Helper()
	pids := fusePIDs(mnt)
	if err := syscall.Unmount(mnt, 0); err != nil {
		t.Fatalf("unmount %s: %v", mnt, err)
	}
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		alive := 0
		for _, pid := range pids {
			if syscall.Kill(pid, 0) == nil {
				alive++
			}
		}
		if alive == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("ceph-fuse of %s still running 60 s after the unmount", mnt)
		}
	}
}

// fusePIDs finds the ceph-fuse processes serving mnt.
func fusePIDs(mnt string) []int {
	var pids []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmd, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(strings.TrimRight(string(cmd), "\x00"), "\x00")
		if len(args) > 0 && filepath.Base(args[0]) == "ceph-fuse" && slices.Contains(args, mnt) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// S3 returns radosgw's endpoint and keys (S3_ENDPOINT, AWS_ACCESS_KEY_ID,
// AWS_SECRET_ACCESS_KEY).
func S3(t testing.TB, dir string) map[string]string {
	t.Helper()
	f, err := os.Open(filepath.Join(dir, "s3.env"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	env := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), "="); ok {
			env[k] = v
		}
	}
	return env
}

// PauseMDS stops the MDS (SIGSTOP) until the returned function is called
// (SIGCONT), which the test's cleanup also does. A paused MDS answers
// nothing, the way an overloaded or partitioned one does, and comes back
// without a replay.
func PauseMDS(t testing.TB, dir string) (resume func()) {
	t.Helper()
	pid := daemonPID(t, dir, "mds.a")
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatalf("stop the MDS: %v", err)
	}
	var once sync.Once
	resume = func() {
		once.Do(func() {
			if err := syscall.Kill(pid, syscall.SIGCONT); err != nil {
				t.Errorf("resume the MDS: %v", err)
			}
		})
	}
	t.Cleanup(resume)
	return resume
}

// daemonPID reads a daemon's PID from the pids file start.sh writes.
func daemonPID(t testing.TB, dir, name string) int {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, "pids"))
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(data)) {
		if n, pid, ok := strings.Cut(strings.TrimSpace(line), " "); ok && n == name {
			if p, err := strconv.Atoi(pid); err == nil {
				return p
			}
		}
	}
	t.Fatalf("no PID for %s in %s/pids", name, dir)
	return 0
}
