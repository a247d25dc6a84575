package csi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/granary-cache/granary/internal/mountinfo"
)

// Dataset mounts: one FUSE mount per dataset and node, at a staging
// directory, shared by every pod of the node that uses the dataset (each
// pod's target is a recursive bind mount of it: a directory of the dataset
// may have a FUSE connection of its own, mounted below the staging
// directory).
//
// The mount is held by a `granary mount` supervisor, a process of its own
// session that owns the /dev/fuse connection and restarts its serving
// process when that dies: the plugin may restart or be upgraded, and a
// serving process may be killed, without a pod's mount breaking. The
// supervisor's PID is kept beside the staging directory, so a restarted
// plugin finds the mounts it made and goes on counting their users.
//
//	STATE/datasets/KEY/config.yaml   the granary configuration of the mount
//	STATE/datasets/KEY/mnt           the staging mount point
//	STATE/datasets/KEY/pid           the supervisor's PID
//	STATE/datasets/KEY/ready         the mount points it serves, once all are up
//	STATE/datasets/KEY/log           its output
//	STATE/volumes/VOLUME/TARGETHASH  one file per published target (its path)

// Mounter keeps the dataset mounts of a node: a Spawner in the plugin's
// own process, or a RemoteMounter, which asks a mounter process (`granary
// csi mounter`, a pod of its own on Kubernetes, so that its supervisors
// outlive a restart or an upgrade of the plugin's pod).
type Mounter interface {
	// Ensure mounts the dataset of key with config, unless it is mounted,
	// and returns its staging directory.
	Ensure(ctx context.Context, key, dataset, config string, opts []string) (string, error)
	// Release stops the dataset mount of key.
	Release(key string) error
}

// Spawner starts the supervisor of a dataset mount.
type Spawner struct {
	// StateDir holds the dataset mounts (see above).
	StateDir string
	// Binary is the granary executable the supervisors run.
	Binary string
	// Env is added to the supervisors' environment (e.g. KUBECONFIG).
	Env []string
	Log *slog.Logger
}

// datasetDir is where a dataset mount keeps its files.
func datasetDir(state, key string) string { return filepath.Join(state, "datasets", key) }

// stagingPath is the staging mount point of a dataset.
func stagingPath(state, key string) string { return filepath.Join(datasetDir(state, key), "mnt") }

// mounted reports whether path is a mount point (of anything).
func mounted(path string) (bool, error) {
	var st, parent unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		if errors.Is(err, unix.ENOTCONN) || errors.Is(err, unix.ECONNABORTED) {
			return true, nil // a FUSE mount whose server is gone
		}
		if errors.Is(err, os.ErrNotExist) {
			return false, nil
		}
		return false, err
	}
	if err := unix.Lstat(filepath.Dir(path), &parent); err != nil {
		return false, err
	}
	if st.Dev != parent.Dev {
		return true, nil
	}
	// A bind mount of a directory of the same file system keeps the
	// device: ask the mount table.
	return inMountInfo(path)
}

// inMountInfo reports whether path is a mount point in this process's
// mount table.
func inMountInfo(path string) (bool, error) {
	mps, err := mountsAt(path)
	return slices.Contains(mps, path), err
}

// mountsAt lists the mount points of this process's mount table that are
// path or lie below it, the outermost first (by depth: the table's own
// order is not always the order the mounts were made in).
func mountsAt(path string) ([]string, error) {
	mounts, err := mountinfo.Read()
	if err != nil {
		return nil, err
	}
	var out []string
	for _, m := range mountinfo.Below(mounts, path) {
		out = append(out, m.Point)
	}
	slices.SortStableFunc(out, func(a, b string) int { return strings.Count(a, "/") - strings.Count(b, "/") })
	return out, nil
}

// alive reports whether the supervisor whose PID is in dir/pid runs.
func alive(dir string) (int, bool) {
	b, err := os.ReadFile(filepath.Join(dir, "pid"))
	if err != nil {
		return 0, false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, false
	}
	if err := syscall.Kill(pid, 0); err != nil {
		return pid, false
	}
	// The PID may have been reused: it must be a granary mount of this dir.
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || !strings.Contains(string(cmdline), filepath.Join(dir, "mnt")) {
		return pid, false
	}
	return pid, true
}

// datasetLocks serialize the work on one dataset mount.
type datasetLocks struct {
	mu    sync.Mutex
	locks map[string]*sync.Mutex
}

func (l *datasetLocks) lock(key string) func() {
	l.mu.Lock()
	if l.locks == nil {
		l.locks = map[string]*sync.Mutex{}
	}
	m := l.locks[key]
	if m == nil {
		m = &sync.Mutex{}
		l.locks[key] = m
	}
	l.mu.Unlock()
	m.Lock()
	return m.Unlock
}

// readyWait is how long Ensure waits for the ready file of a mount whose
// supervisor runs already: longer than the mount waits for its
// connections (settleTimeout in the cli).
const readyWait = 25 * time.Second

// Ensure makes the dataset mount of key at its staging directory, with
// config as its configuration, unless a live supervisor already serves it.
// It waits until the mount answers.
func (s *Spawner) Ensure(ctx context.Context, key, dataset, config string, opts []string) (string, error) {
	dir := datasetDir(s.StateDir, key)
	mnt := stagingPath(s.StateDir, key)
	ready := filepath.Join(dir, "ready")
	if _, ok := alive(dir); ok {
		if m, err := mounted(mnt); err == nil && m {
			// A supervisor still starting (the plugin restarted meanwhile)
			// is given the time its connections take; one of a granary
			// older than the ready file never writes it.
			for deadline := time.Now().Add(readyWait); ; {
				if _, err := os.Stat(ready); err == nil || time.Now().After(deadline) || ctx.Err() != nil {
					return mnt, nil
				}
				time.Sleep(50 * time.Millisecond)
			}
		}
	}
	if err := os.MkdirAll(mnt, 0o755); err != nil {
		return "", fmt.Errorf("staging directory: %w", err)
	}
	cfgPath := filepath.Join(dir, "config.yaml")
	if err := writeFileAtomic(cfgPath, []byte(config), 0o600); err != nil {
		return "", fmt.Errorf("configuration of %s: %w", key, err)
	}
	logf, err := os.OpenFile(filepath.Join(dir, "log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return "", err
	}
	defer logf.Close()
	os.Remove(ready)
	args := []string{"mount", "--config", cfgPath, "--dataset", dataset, "--allow-other", "--ready-file", ready}
	args = append(args, opts...)
	args = append(args, mnt)
	cmd := exec.Command(s.Binary, args...)
	cmd.Env = append(os.Environ(), s.Env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// A session of its own: the supervisor outlives the plugin.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return "", fmt.Errorf("start the mount of %s: %w", key, err)
	}
	pid := cmd.Process.Pid
	if err := writeFileAtomic(filepath.Join(dir, "pid"), []byte(strconv.Itoa(pid)+"\n"), 0o644); err != nil {
		cmd.Process.Kill()
		return "", err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }() // reaps it if it ends while the plugin runs
	deadline := time.Now().Add(30 * time.Second)
	for {
		// Ready: the dataset's connection answers, and so does each
		// directory of it that got a connection of its own (open_mode
		// auto), so that a pod's bind mount takes them all.
		if up, err := os.ReadFile(ready); err == nil {
			if _, err := os.ReadDir(mnt); err == nil {
				s.log().Info("dataset mounted", "key", key, "pid", pid, "staging", mnt,
					"connections", strings.Count(string(up), "\n"))
				return mnt, nil
			}
		}
		select {
		case err := <-exited:
			tail, _ := os.ReadFile(filepath.Join(dir, "log"))
			return "", fmt.Errorf("the mount of %s exited (%v): %s", key, err, lastLines(string(tail), 5))
		case <-ctx.Done():
			syscall.Kill(pid, syscall.SIGTERM)
			return "", ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			syscall.Kill(pid, syscall.SIGTERM)
			return "", fmt.Errorf("the mount of %s did not answer within 30s", key)
		}
	}
}

// Release stops the dataset mount of key: its supervisor unmounts and
// exits; a mount left behind is detached.
func (s *Spawner) Release(key string) error {
	dir := datasetDir(s.StateDir, key)
	mnt := stagingPath(s.StateDir, key)
	if pid, ok := alive(dir); ok {
		syscall.Kill(pid, syscall.SIGTERM)
		for range 100 {
			if syscall.Kill(pid, 0) != nil {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		if syscall.Kill(pid, 0) == nil {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	if m, _ := mounted(mnt); m {
		if err := unix.Unmount(mnt, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("unmount %s: %w", mnt, err)
		}
	}
	os.Remove(filepath.Join(dir, "pid"))
	s.log().Info("dataset unmounted", "key", key)
	return nil
}

func (s *Spawner) log() *slog.Logger {
	if s.Log == nil {
		return slog.Default()
	}
	return s.Log
}

func writeFileAtomic(path string, b []byte, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, mode); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}
