package netnstest

import (
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// stopGrace is how long Stop waits after SIGTERM before it kills.
var stopGrace = 10 * time.Second

// killWait bounds the wait for a process to die of SIGKILL (one blocked in
// the kernel, on a hung FUSE mount say, may take its time).
const killWait = 30 * time.Second

// Proc is a running process, in a process group of its own, its output
// captured.
//
// Its PID stays its own until Stop, Kill or Wait: the process is left a
// zombie when it exits, so that signals to it and to its process group can
// never reach another process that got the PID again. Done tells the exit.
type Proc struct {
	Cmd *exec.Cmd

	name   string
	log    logBuffer
	exited chan struct{} // closed when the process has exited (and not been reaped)

	reapOnce sync.Once
	reaped   chan struct{}
	err      error // of Cmd.Wait, once reaped

	stopOnce sync.Once
	stopErr  error
}

// Start starts cmd — in its own process group, killed if the test process
// dies (Pdeathsig), its stdout and stderr captured in Log (and still
// written where cmd says if it says) — and stops it when the test ends; the
// log is shown then if the test failed. The test fails if it does not start.
func Start(t testing.TB, cmd *exec.Cmd) *Proc {
	t.Helper()
	p, err := Spawn(cmd)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		err := p.Stop()
		select {
		case <-p.exited:
		default:
			t.Errorf("%s did not die of SIGKILL within %v", p, killWait)
		}
		if t.Failed() {
			t.Logf("%s stopped: %v; its log:\n%s", p, err, p.Log())
		}
	})
	return p
}

// Spawn is Start without a test: the caller must Stop or Kill the process.
func Spawn(cmd *exec.Cmd) (*Proc, error) {
	p := &Proc{Cmd: cmd, name: progName(cmd), exited: make(chan struct{}), reaped: make(chan struct{})}
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	// A group of its own: signals of the terminal do not reach it, and
	// Stop and Kill reach the children it leaves behind.
	cmd.SysProcAttr.Setsid = false
	cmd.SysProcAttr.Setpgid, cmd.SysProcAttr.Pgid = true, 0
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	cmd.Stdout = tee(cmd.Stdout, &p.log)
	cmd.Stderr = tee(cmd.Stderr, &p.log)
	if cmd.WaitDelay == 0 {
		// Children still holding its stdout must not hold up Wait.
		cmd.WaitDelay = 5 * time.Second
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", p.name, err)
	}
	pid := cmd.Process.Pid
	go func() {
		defer close(p.exited)
		var info unix.Siginfo
		for {
			// WNOWAIT: wait for the exit but leave the zombie, and its PID.
			err := unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
			if err != unix.EINTR {
				return
			}
		}
	}()
	return p, nil
}

func tee(w io.Writer, log *logBuffer) io.Writer {
	if w == nil {
		return log
	}
	return io.MultiWriter(w, log)
}

// progName is the name of the program cmd runs, behind nsenter if need be.
func progName(cmd *exec.Cmd) string {
	args := cmd.Args
	if len(args) > 0 && filepath.Base(args[0]) == "nsenter" {
		for i, a := range args {
			if a == "--" && i+1 < len(args) {
				return filepath.Base(args[i+1])
			}
		}
	}
	if len(args) > 0 {
		return filepath.Base(args[0])
	}
	return filepath.Base(cmd.Path)
}

// PID is the process's ID, and that of its process group.
func (p *Proc) PID() int { return p.Cmd.Process.Pid }

// Done is closed when the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.exited }

// Log returns what the process wrote to stdout and stderr so far.
func (p *Proc) Log() string { return p.log.String() }

// Wait waits for the process to exit by itself and returns Cmd.Wait's
// error. Stop and Kill may not be needed after it, but do no harm.
func (p *Proc) Wait() error {
	<-p.exited
	return p.reap()
}

// Stop sends SIGTERM to the process (by PID) and waits up to 10 s for it to
// exit, then kills it. Either way it kills what is left of its process group
// afterwards. It returns nil only if the process exited with status 0 (on
// the SIGTERM, or before Stop); a second Stop returns what the first did.
func (p *Proc) Stop() error {
	p.stopOnce.Do(func() { p.stopErr = p.stop() })
	return p.stopErr
}

func (p *Proc) stop() error {
	select {
	case <-p.exited:
		if err := p.finish(); err != nil {
			return fmt.Errorf("%s exited before Stop: %w", p, err)
		}
		return nil
	default:
	}
	p.Cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
		if err := p.finish(); err != nil {
			return fmt.Errorf("%s on SIGTERM: %w", p, err)
		}
		return nil
	case <-time.After(stopGrace):
		p.Kill()
		return fmt.Errorf("%s did not exit within %v of SIGTERM: killed", p, stopGrace)
	}
}

// Kill sends SIGKILL to the process and its group and waits (boundedly) for
// it to die.
func (p *Proc) Kill() {
	select {
	case <-p.exited:
	default:
		p.killGroup()
		select {
		case <-p.exited:
		case <-time.After(killWait):
			return // Start's cleanup reports it
		}
	}
	p.finish()
}

// finish kills what is left of the exited process's group, then reaps it.
func (p *Proc) finish() error {
	p.killGroup()
	return p.reap()
}

// killGroup sends SIGKILL to the process group, which is the process's PID:
// safe as long as the process is not reaped.
func (p *Proc) killGroup() {
	select {
	case <-p.reaped:
		return
	default:
	}
	syscall.Kill(-p.PID(), syscall.SIGKILL)
}

func (p *Proc) reap() error {
	p.reapOnce.Do(func() {
		p.err = p.Cmd.Wait()
		close(p.reaped)
	})
	<-p.reaped
	return p.err
}

func (p *Proc) String() string { return p.name + " (pid " + strconv.Itoa(p.PID()) + ")" }

// logBuffer collects a process's output, safe for concurrent writes. It
// keeps the last logKeep bytes once it has more than logMax.
type logBuffer struct {
	mu      sync.Mutex
	b       []byte
	dropped int64
}

const (
	logMax  = 16 << 20
	logKeep = 8 << 20
)

func (l *logBuffer) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.b = append(l.b, b...)
	if len(l.b) > logMax {
		cut := len(l.b) - logKeep
		l.dropped += int64(cut)
		l.b = append(l.b[:0], l.b[cut:]...)
	}
	return len(b), nil
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.dropped > 0 {
		return fmt.Sprintf("[... %d bytes dropped ...]\n%s", l.dropped, l.b)
	}
	return string(l.b)
}
