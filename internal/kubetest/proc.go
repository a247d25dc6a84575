package kubetest

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"

	"golang.org/x/sys/unix"

	"github.com/granary-cache/granary/internal/netnstest"
)

// Proc is a container's process started by RunPod.
type Proc struct {
	Pod       *corev1.Pod // the pod as it was when the container started
	Container string
	// Argv and Env are what the container runs with.
	Argv []string
	Env  []string

	proc      *netnstest.Proc
	grace     time.Duration
	logFile   string
	logF      *os.File // closed once the process is reaped
	termLog   string
	stopOnce  sync.Once
	stopErr   error
	stopFollw chan struct{}
}

// Done is closed when the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.proc.Done() }

// Wait waits for the process to exit by itself and returns its exit error.
func (p *Proc) Wait() error {
	<-p.proc.Done()
	return p.Stop()
}

// PID is the process's ID (on this machine; it is PID 1 in its namespace).
func (p *Proc) PID() int { return p.proc.PID() }

// Log returns the container's stdout and stderr so far.
func (p *Proc) Log() string { return p.proc.Log() }

// LogFile is the file the container's output goes to.
func (p *Proc) LogFile() string { return p.logFile }

// TerminationMessage returns what the container wrote to its
// terminationMessagePath.
func (p *Proc) TerminationMessage() string {
	b, _ := os.ReadFile(p.termLog)
	return string(b)
}

// ExitCode is the process's exit status once it has exited and been
// waited for (Wait or Stop), -1 before or when a signal ended it.
func (p *Proc) ExitCode() int {
	if p.proc.Cmd.ProcessState == nil {
		return -1
	}
	return p.proc.Cmd.ProcessState.ExitCode()
}

// Stop stops the container as the kubelet does: SIGTERM, then SIGKILL
// after the grace period. It returns nil only if the process exited with
// status 0; a second Stop returns what the first did.
func (p *Proc) Stop() error {
	p.stopOnce.Do(func() {
		close(p.stopFollw)
		select {
		case <-p.proc.Done():
			p.stopErr = p.proc.Stop()
			p.logF.Close()
			return
		default:
		}
		p.proc.Cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.proc.Done():
			p.stopErr = p.proc.Stop()
		case <-time.After(p.grace):
			p.proc.Kill()
			p.stopErr = fmt.Errorf("container %s did not exit within %v of SIGTERM: killed", p.Container, p.grace)
		}
		p.logF.Close()
	})
	return p.stopErr
}

// Kill kills the container (SIGKILL), as a crash of its node would.
func (p *Proc) Kill() {
	p.stopOnce.Do(func() {
		close(p.stopFollw)
		p.proc.Kill()
		p.stopErr = p.proc.Stop()
		p.logF.Close()
	})
}

// Exec runs a command in the container's namespaces and root (with the
// container's environment), as `kubectl exec` would, and returns its
// combined output.
func (p *Proc) Exec(ctx context.Context, argv ...string) (string, error) {
	pid := strconv.Itoa(p.PID())
	args := append([]string{"--target", pid, "--mount", "--uts", "--ipc", "--pid", "--root", "--wd", "--"}, argv...)
	cmd := exec.CommandContext(ctx, "nsenter", args...)
	cmd.Env = p.Env
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// spawnInit writes spec into dir and starts podInit with it, in new mount,
// PID, UTS and IPC namespaces, its output going to logFile.
// The caller closes the returned file once the process has been waited for.
func spawnInit(spec *initSpec, dir, logFile string) (*netnstest.Proc, *os.File, error) {
	specFile := filepath.Join(dir, "spec.json")
	b, err := json.MarshalIndent(spec, "", "  ")
	if err != nil {
		return nil, nil, err
	}
	if err := os.WriteFile(specFile, b, 0o600); err != nil {
		return nil, nil, err
	}
	self, err := os.Executable()
	if err != nil {
		return nil, nil, err
	}
	lf, err := os.Create(logFile)
	if err != nil {
		return nil, nil, err
	}
	cmd := &exec.Cmd{Path: self, Args: []string{podInitName, specFile}, Stdout: lf, Stderr: lf, Dir: "/"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: unix.CLONE_NEWNS | unix.CLONE_NEWPID | unix.CLONE_NEWUTS | unix.CLONE_NEWIPC}
	p, err := netnstest.Spawn(cmd)
	if err != nil {
		lf.Close()
		return nil, nil, err
	}
	return p, lf, nil
}
