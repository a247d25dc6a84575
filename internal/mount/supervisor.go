package mount

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/granary-cache/granary/internal/mountinfo"
)

// SuperviseOptions configure the supervisor of a mount.
type SuperviseOptions struct {
	AllowOther bool
	// Server returns the command of a serving process (granary itself in
	// server mode); the supervisor adds the descriptors and environment.
	Server func() *exec.Cmd
	Log    *slog.Logger
	// Started, if set, is called after each server answered INIT.
	Started func(generation int)
}

// maxRestarts within restartWindow make the supervisor give up: a server
// that dies at once every time will not do better the next time.
const (
	maxRestarts   = 5
	restartWindow = time.Minute
)

// Supervise mounts mountpoint and keeps a server process serving it until
// ctx ends or the file system is unmounted. It holds the /dev/fuse
// connection itself, answers the kernel's INIT once through the first
// server, and when a server dies restarts another on the same connection:
// readers see at most the requests in flight fail (the kernel is asked to
// send them again), and the mount never shows "Transport endpoint is not
// connected". A stale mount left by a crash is detached first.
func Supervise(ctx context.Context, mountpoint string, o SuperviseOptions) error {
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if err := CleanStale(mountpoint); err != nil {
		return err
	}
	if st, err := os.Stat(mountpoint); err != nil || !st.IsDir() {
		return fmt.Errorf("mount point %s: not a directory", mountpoint)
	}
	dev, err := os.OpenFile("/dev/fuse", os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("open /dev/fuse: %w", err)
	}
	defer dev.Close()
	// default_permissions: the kernel checks the mode bits of every access,
	// which matters once other users may read the mount (allow_other).
	data := fmt.Sprintf("fd=%d,rootmode=40000,user_id=%d,group_id=%d,max_read=1048576,default_permissions", dev.Fd(), os.Getuid(), os.Getgid())
	if o.AllowOther {
		data += ",allow_other"
	}
	if err := syscall.Mount("granary", mountpoint, "fuse.granary", syscall.MS_NOSUID|syscall.MS_NODEV|syscall.MS_RDONLY, data); err != nil {
		return fmt.Errorf("mount %s: %w (granary mount needs root and /dev/fuse)", mountpoint, err)
	}
	unmounted := false
	defer func() {
		if !unmounted {
			syscall.Unmount(mountpoint, syscall.MNT_DETACH)
		}
	}()
	init := make([]byte, 1<<20+8192)
	n, err := syscall.Read(int(dev.Fd()), init)
	if err != nil {
		return fmt.Errorf("read the kernel's INIT: %w", err)
	}
	init = init[:n]
	stateFD, err := unix.MemfdCreate("granary-mount-state", unix.MFD_CLOEXEC)
	if err != nil {
		return fmt.Errorf("create the mount state: %w", err)
	}
	state := os.NewFile(uintptr(stateFD), "granary-mount-state")
	defer state.Close()

	var restarts []time.Time
	for generation := 1; ; generation++ {
		cmd, err := startServer(dev, state, init, generation, o)
		if err != nil {
			return err
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		var werr error
		select {
		case werr = <-exited:
		case <-ctx.Done():
			cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-exited:
			case <-time.After(10 * time.Second):
				cmd.Process.Kill()
				<-exited
			}
			return nil // the server unmounted (or the deferred detach does)
		}
		if werr == nil && !Mounted(mountpoint) {
			unmounted = true // unmounted from outside; the server is done
			return nil
		}
		if werr == nil {
			werr = errors.New("the server stopped while the file system was still mounted")
		}
		o.Log.Warn("mount server died; starting another on the same connection", "mountpoint", mountpoint, "err", werr, "generation", generation)
		now := time.Now()
		restarts = append(restarts, now)
		for len(restarts) > 0 && now.Sub(restarts[0]) > restartWindow {
			restarts = restarts[1:]
		}
		if len(restarts) > maxRestarts {
			return fmt.Errorf("mount server died %d times within %s; giving up (last: %v)", len(restarts), restartWindow, werr)
		}
		// Requests the dead server had read are waiting for answers that
		// will never come: ask the kernel to queue them again.
		resendInFlight(dev, o.Log)
	}
}

// startServer starts a server on the connection and replays INIT to it;
// the first server's answer goes to the kernel, later ones are dropped
// (the kernel negotiated once and for all).
func startServer(dev, state *os.File, init []byte, generation int, o SuperviseOptions) (*exec.Cmd, error) {
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	ours := os.NewFile(uintptr(pair[0]), "init-supervisor")
	theirs := os.NewFile(uintptr(pair[1]), "init-server")
	defer ours.Close()
	cmd := o.Server()
	cmd.ExtraFiles = []*os.File{dev, state, theirs} // fds 3, 4, 5: see serve.go
	if cmd.SysProcAttr == nil {
		// A process group of its own: a Ctrl-C at the terminal reaches the
		// supervisor alone, which stops its servers in order (the mounts
		// below a mount point first).
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	}
	if cmd.Env == nil {
		cmd.Env = os.Environ()
	}
	cmd.Env = append(cmd.Env, envGeneration+"="+strconv.Itoa(generation))
	err = cmd.Start()
	theirs.Close()
	if err != nil {
		return nil, fmt.Errorf("start the mount server: %w", err)
	}
	if _, err := ours.Write(init); err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		return nil, fmt.Errorf("send INIT to the mount server: %w", err)
	}
	reply := make([]byte, 4096)
	n, err := ours.Read(reply)
	if err != nil || n < 16 {
		cmd.Process.Kill()
		cmd.Wait()
		return nil, fmt.Errorf("the mount server did not answer INIT: %v", err)
	}
	if generation == 1 {
		if _, err := dev.Write(reply[:n]); err != nil {
			cmd.Process.Kill()
			cmd.Wait()
			return nil, fmt.Errorf("answer the kernel's INIT: %w", err)
		}
	}
	if o.Started != nil {
		o.Started(generation)
	}
	return cmd, nil
}

// Mounted reports whether a granary file system is mounted at mountpoint.
func Mounted(mountpoint string) bool { return slices.Contains(granaryMounts(), mountpoint) }

// granaryMounts lists the mount points of the granary file systems this
// process sees.
func granaryMounts() []string {
	mounts, err := mountinfo.Read()
	if err != nil {
		return nil
	}
	var out []string
	for _, m := range mounts {
		if m.FSType == "fuse.granary" {
			out = append(out, m.Point)
		}
	}
	return out
}

// notifyResend is FUSE_NOTIFY_RESEND: the kernel moves every request that
// was read but not answered back to its queue.
const notifyResend = 7

func resendInFlight(dev *os.File, log *slog.Logger) {
	var msg [16]byte
	binary.LittleEndian.PutUint32(msg[0:], 16)
	binary.LittleEndian.PutUint32(msg[4:], notifyResend) // the notify code travels in the error field
	if _, err := dev.Write(msg[:]); err != nil && !errors.Is(err, syscall.ENOENT) {
		log.Warn("the kernel cannot resend requests in flight (FUSE_NOTIFY_RESEND needs Linux 6.9+); they stay unanswered", "err", err)
	}
}
