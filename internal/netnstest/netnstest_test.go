package netnstest

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// helperEnv makes the test binary a helper program instead of the tests:
// "echo ADDR" (a TCP echo server that exits 0 on SIGTERM), "dial ADDR" (one
// round trip with a 1 s dial timeout, its outcome on stdout), "stubborn"
// (ignores SIGTERM), "parent" (starts a child in its group, prints its PID).
const helperEnv = "GRANARY_NETNSTEST_HELPER"

func TestMain(m *testing.M) {
	if h := os.Getenv(helperEnv); h != "" {
		os.Exit(helper(strings.Fields(h)))
	}
	os.Exit(m.Run())
}

func helper(args []string) int {
	switch args[0] {
	case "echo":
		l, err := net.Listen("tcp", args[1])
		if err != nil {
			fmt.Println(err)
			return 1
		}
		term := make(chan os.Signal, 1)
		signal.Notify(term, syscall.SIGTERM)
		go func() { <-term; l.Close() }()
		fmt.Println("listening")
		for {
			c, err := l.Accept()
			if err != nil {
				return 0 // closed on SIGTERM
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					c.Write([]byte(line))
				}
			}()
		}
	case "dial":
		fmt.Println(roundTrip(args[1]))
		return 0
	case "stubborn":
		signal.Ignore(syscall.SIGTERM)
		fmt.Println("ready")
		time.Sleep(time.Minute)
		return 0
	case "parent":
		c := exec.Command("sleep", "60")
		if err := c.Start(); err != nil {
			fmt.Println(err)
			return 1
		}
		fmt.Println("child", c.Process.Pid)
		c.Wait()
		return 0
	}
	return 2
}

// roundTrip dials addr (1 s timeout), sends a line and reads it back: "ok",
// "timeout", "refused", "unreachable" or the error.
func roundTrip(addr string) string {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return classify(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Write([]byte("ping\n")); err != nil {
		return classify(err)
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return classify(err)
	}
	if line != "ping\n" {
		return fmt.Sprintf("echo %q", line)
	}
	return "ok"
}

func classify(err error) string {
	var ne net.Error
	switch {
	case errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return "unreachable"
	}
	return err.Error()
}

// need skips the test when it cannot make namespaces for want of privileges,
// unless servers are required; it fails it for any other reason.
func need(t *testing.T) {
	t.Helper()
	if err := Supported(); err != nil {
		if !Required() && errors.Is(err, syscall.EPERM) {
			t.Skip(err)
		}
		t.Fatal(err)
	}
}

// helperCmd runs this test binary as helper args, in h (nil: the root
// namespace).
func helperCmd(t *testing.T, h *Host, args ...string) *exec.Cmd {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	var cmd *exec.Cmd
	if h != nil {
		cmd = h.Command(exe, "-test.run=^$")
	} else {
		cmd = exec.Command(exe, "-test.run=^$")
	}
	cmd.Env = append(os.Environ(), helperEnv+"="+strings.Join(args, " "))
	return cmd
}

// startEcho starts an echo server on h at port 7000 and waits until it
// listens.
func startEcho(t *testing.T, h *Host) *Proc {
	t.Helper()
	p := Start(t, helperCmd(t, h, "echo", h.Addr(7000)))
	waitLog(t, p, "listening")
	return p
}

func waitLog(t *testing.T, p *Proc, s string) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for !strings.Contains(p.Log(), s) {
		select {
		case <-p.Done():
			t.Fatalf("%s exited: %s", p, p.Log())
		case <-deadline:
			t.Fatalf("%s did not print %q within 10s: %s", p, s, p.Log())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// dialFrom runs the dial helper on h and returns its outcome.
func dialFrom(t *testing.T, h *Host, addr string) string {
	t.Helper()
	cmd := helperCmd(t, h, "dial", addr)
	cmd.WaitDelay = time.Second
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("dial helper on %s: %v: %s", h.Name, err, out)
	}
	return strings.TrimSpace(string(out))
}

func TestNet(t *testing.T) {
	need(t)
	var tag, bridge string
	t.Run("net", func(t *testing.T) {
		n := New(t, "", "h1", "h2", "h3")
		tag, bridge = n.tag, n.Bridge
		h1, h2, h3 := n.Host("h1"), n.Host("h2"), n.Host("h3")
		for i, h := range []*Host{h1, h2, h3} {
			if want := n.Subnet + "." + strconv.Itoa(i+1); h.IP != want {
				t.Errorf("%s has %s, want %s", h.Name, h.IP, want)
			}
		}
		if err := checkSubnet(n.Subnet); err == nil {
			t.Errorf("subnet %s of a running Net is not in use", n.Subnet)
		}

		echo := startEcho(t, h1)
		checkInNetns(t, echo, h1)

		if got := dialFrom(t, h2, h1.Addr(7000)); got != "ok" {
			t.Fatalf("h2 -> h1: %s", got)
		}
		if got := roundTrip(h1.Addr(7000)); got != "ok" {
			t.Fatalf("root -> h1: %s", got)
		}
		if got := dialFrom(t, h3, h1.Addr(7001)); got != "refused" {
			t.Errorf("h3 -> h1, no server: %s, want refused", got)
		}
		// A connection made before the partition: it must hang, then go on
		// when the partition heals.
		c, err := net.DialTimeout("tcp", h1.Addr(7000), time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		r := bufio.NewReader(c)

		h1.Cut(t)
		start := time.Now()
		// Longer than ARP takes to give up (3 s): with a neighbour entry
		// missing, this dial would fail with "no route to host".
		long := make(chan error, 1)
		go func() {
			c, err := net.DialTimeout("tcp", h1.Addr(7000), 4500*time.Millisecond)
			if err == nil {
				c.Close()
			}
			long <- err
		}()
		if got := dialFrom(t, h2, h1.Addr(7000)); got != "timeout" {
			t.Errorf("h2 -> cut h1: %s, want timeout", got)
		}
		if got := dialFrom(t, h1, h3.Addr(7000)); got != "timeout" {
			t.Errorf("cut h1 -> h3: %s, want timeout", got)
		}
		if got := roundTrip(h1.Addr(7000)); got != "timeout" {
			t.Errorf("root -> cut h1: %s, want timeout", got)
		}
		c.Write([]byte("during\n"))
		c.SetReadDeadline(time.Now().Add(time.Second))
		if line, err := r.ReadString('\n'); classifyOr(err) != "timeout" {
			t.Errorf("read across the cut: %q, %v; want a timeout", line, err)
		}
		if err := <-long; classifyOr(err) != "timeout" {
			t.Errorf("4.5 s dial of cut h1: %v, want a timeout", err)
		}
		t.Logf("the checks across the cut took %v", time.Since(start))
		if got := dialFrom(t, h2, h3.Addr(7001)); got != "refused" {
			t.Errorf("h2 -> h3 while h1 is cut: %s, want refused (no server there)", got)
		}

		h1.Heal(t)
		healed := time.Now()
		if got := dialFrom(t, h2, h1.Addr(7000)); got != "ok" {
			t.Errorf("h2 -> healed h1: %s", got)
		}
		c.SetReadDeadline(time.Now().Add(15 * time.Second))
		if line, err := r.ReadString('\n'); err != nil || line != "during\n" {
			t.Errorf("read after the heal: %q, %v", line, err)
		}
		t.Logf("the connection made before the cut resumed %v after the heal (TCP retransmission)", time.Since(healed))

		added := time.Now()
		h4 := n.Add("h4")
		if want := n.Subnet + ".4"; h4.IP != want {
			t.Errorf("h4 has %s, want %s", h4.IP, want)
		}
		t.Logf("Add took %v", time.Since(added))
		startEcho(t, h4)
		if got := dialFrom(t, h2, h4.Addr(7000)); got != "ok" {
			t.Errorf("h2 -> h4: %s", got)
		}
		if got := roundTrip(h4.Addr(7000)); got != "ok" {
			t.Errorf("root -> h4: %s", got)
		}
		startEcho(t, h3)
		if got := dialFrom(t, h4, h3.Addr(7000)); got != "ok" {
			t.Errorf("h4 -> h3: %s", got)
		}
		if got := len(n.Hosts()); got != 4 {
			t.Errorf("%d hosts", got)
		}
		if err := echo.Stop(); err != nil {
			t.Errorf("echo server on SIGTERM: %v", err)
		}
	})
	if tag == "" {
		return
	}
	out, err := exec.Command("ip", "netns", "list").CombinedOutput()
	if err != nil {
		t.Fatal(err, string(out))
	}
	if strings.Contains(string(out), tag) {
		t.Errorf("namespaces left:\n%s", out)
	}
	out, err = exec.Command("ip", "-o", "link", "show").CombinedOutput()
	if err != nil {
		t.Fatal(err, string(out))
	}
	if strings.Contains(string(out), tag) {
		t.Errorf("links left (bridge %s):\n%s", bridge, out)
	}
}

func classifyOr(err error) string {
	if err == nil {
		return "no error"
	}
	return classify(err)
}

// checkInNetns checks that p is the program itself (nsenter exec'd it), in
// h's network namespace and the test's mount namespace.
func checkInNetns(t *testing.T, p *Proc, h *Host) {
	t.Helper()
	pid := strconv.Itoa(p.PID())
	exe, _ := os.Executable()
	if got, err := os.Readlink("/proc/" + pid + "/exe"); err != nil || got != exe {
		t.Errorf("pid %s runs %q (%v), want %s", pid, got, err, exe)
	}
	var st syscall.Stat_t
	if err := syscall.Stat("/run/netns/"+h.NS, &st); err != nil {
		t.Fatal(err)
	}
	if got, want := readlink(t, "/proc/"+pid+"/ns/net"), fmt.Sprintf("net:[%d]", st.Ino); got != want {
		t.Errorf("pid %s is in %s, want %s (%s)", pid, got, want, h.NS)
	}
	if got, want := readlink(t, "/proc/"+pid+"/ns/mnt"), readlink(t, "/proc/self/ns/mnt"); got != want {
		t.Errorf("pid %s is in mount namespace %s, the test in %s", pid, got, want)
	}
}

func readlink(t *testing.T, name string) string {
	t.Helper()
	s, err := os.Readlink(name)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// gone reports whether pid is no process, or a zombie nobody reaped (an
// orphan's, in a container whose init does not reap).
func gone(pid int) bool {
	if syscall.Kill(pid, 0) == syscall.ESRCH {
		return true
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i > 0 && i+2 < len(s) && s[i+2] == 'Z'
}

func waitGone(t *testing.T, pid int) {
	t.Helper()
	for range 500 {
		if gone(pid) {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Errorf("pid %d still alive", pid)
}

func TestProc(t *testing.T) {
	t.Run("stop exits 0", func(t *testing.T) {
		p := Start(t, helperCmd(t, nil, "echo", "127.0.0.1:0"))
		waitLog(t, p, "listening")
		pid := p.PID()
		if err := p.Stop(); err != nil {
			t.Fatalf("Stop: %v", err)
		}
		select {
		case <-p.Done():
		default:
			t.Error("Done not closed after Stop")
		}
		if syscall.Kill(pid, 0) != syscall.ESRCH {
			t.Errorf("pid %d exists after Stop", pid)
		}
		if err := p.Stop(); err != nil {
			t.Errorf("second Stop: %v", err)
		}
	})
	t.Run("stop by signal", func(t *testing.T) {
		p := Start(t, exec.Command("sleep", "60"))
		if err := p.Stop(); err == nil || !strings.Contains(err.Error(), "terminated") {
			t.Errorf("Stop of sleep: %v, want an error (killed by SIGTERM)", err)
		}
	})
	t.Run("stop ignored", func(t *testing.T) {
		defer func(d time.Duration) { stopGrace = d }(stopGrace)
		stopGrace = 500 * time.Millisecond
		p := Start(t, helperCmd(t, nil, "stubborn"))
		waitLog(t, p, "ready")
		start := time.Now()
		err := p.Stop()
		if err == nil || !strings.Contains(err.Error(), "did not exit") {
			t.Errorf("Stop: %v, want did not exit", err)
		}
		if d := time.Since(start); d < stopGrace || d > stopGrace+5*time.Second {
			t.Errorf("Stop took %v", d)
		}
		waitGone(t, p.PID())
	})
	t.Run("exited before", func(t *testing.T) {
		p := Start(t, exec.Command("sh", "-c", "echo out; echo err >&2; exit 3"))
		select {
		case <-p.Done():
		case <-time.After(10 * time.Second):
			t.Fatal("sh did not exit")
		}
		if err := p.Wait(); err == nil || !strings.Contains(err.Error(), "exit status 3") {
			t.Errorf("Wait: %v", err)
		}
		if err := p.Stop(); err == nil || !strings.Contains(err.Error(), "exited before Stop") {
			t.Errorf("Stop: %v", err)
		}
		if log := p.Log(); !strings.Contains(log, "out\n") || !strings.Contains(log, "err\n") {
			t.Errorf("log %q", log)
		}
	})
	t.Run("kill group", func(t *testing.T) {
		p := Start(t, helperCmd(t, nil, "parent"))
		waitLog(t, p, "child ")
		f := strings.Fields(p.Log())
		child, err := strconv.Atoi(f[len(f)-1])
		if err != nil {
			t.Fatalf("log %q", p.Log())
		}
		if pgid, _ := syscall.Getpgid(child); pgid != p.PID() {
			t.Errorf("child's group %d, want %d", pgid, p.PID())
		}
		p.Kill()
		select {
		case <-p.Done():
		default:
			t.Error("Done not closed after Kill")
		}
		waitGone(t, child)
	})
	t.Run("missing", func(t *testing.T) {
		if _, err := Spawn(exec.Command("/nonexistent/program")); err == nil {
			t.Error("no error")
		}
	})
}

func TestSweep(t *testing.T) {
	need(t)
	// A PID that no longer exists, and one that does (not this process).
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	alive := Start(t, exec.Command("sleep", "60"))
	name := func(pid int, rest string) string {
		return fmt.Sprintf("%s%05s%s", prefix, strconv.FormatInt(int64(pid), 36), rest)
	}
	deadNS, deadBr := name(dead.Process.Pid, "7-x"), name(dead.Process.Pid, "7b")
	liveNS, liveBr := name(alive.PID(), "7-x"), name(alive.PID(), "7b")
	for _, ns := range []string{deadNS, liveNS} {
		if err := ipCmd("", "netns", "add", ns); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ipCmd("", "netns", "del", ns) })
	}
	for _, br := range []string{deadBr, liveBr} {
		if err := ipCmd("", "link", "add", "name", br, "type", "bridge"); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ipCmd("", "link", "del", br) })
	}
	unlock, err := lock()
	if err != nil {
		t.Fatal(err)
	}
	removed, err := sweep()
	unlock()
	if err != nil {
		t.Fatal(err)
	}
	has := func(s string) bool {
		for _, r := range removed {
			if r == s {
				return true
			}
		}
		return false
	}
	if !has(deadNS) || !has(deadBr) {
		t.Errorf("removed %q, want %s and %s among them", removed, deadNS, deadBr)
	}
	if has(liveNS) || has(liveBr) {
		t.Errorf("removed %q, those of the live pid %d among them", removed, alive.PID())
	}
	if _, err := os.Stat("/run/netns/" + liveNS); err != nil {
		t.Error(err)
	}
	if _, err := os.Stat("/run/netns/" + deadNS); err == nil {
		t.Errorf("%s still there", deadNS)
	}
}

func TestNames(t *testing.T) {
	for _, tc := range []struct {
		name string
		pid  int64
	}{
		{tagFor(12) + "b", int64(os.Getpid())},
		{tagFor(9999) + "h71", int64(os.Getpid())},
		{tagFor(1) + "-w1", int64(os.Getpid())},
		{"grt2n4n", -1},
		{"grt00zzz", -1},
		{"eth0", -1},
	} {
		m := leftoverRE.FindStringSubmatch(tc.name)
		var pid int64 = -1
		if m != nil {
			pid, _ = strconv.ParseInt(m[1], 36, 64)
		}
		if pid != tc.pid {
			t.Errorf("%s: pid %d, want %d", tc.name, pid, tc.pid)
		}
		if tc.pid > 0 && !strings.HasPrefix(tc.name, tagFor(1)[:8]) {
			t.Errorf("%s", tc.name)
		}
	}
	if n := len(tagFor(9999) + "h71"); n > 15 {
		t.Errorf("interface name of %d bytes", n)
	}
}

// fakeTB records what New does with its test, to see a failure half way.
type fakeTB struct {
	testing.TB
	cleanups []func()
	fatal    string
	errors   []string
}

func (f *fakeTB) Helper()                         {}
func (f *fakeTB) Cleanup(c func())                { f.cleanups = append(f.cleanups, c) }
func (f *fakeTB) Logf(format string, args ...any) {}
func (f *fakeTB) Errorf(format string, args ...any) {
	f.errors = append(f.errors, fmt.Sprintf(format, args...))
}
func (f *fakeTB) Fatal(args ...any)                 { f.fatal = fmt.Sprint(args...); runtime.Goexit() }
func (f *fakeTB) Fatalf(format string, args ...any) { f.Fatal(fmt.Sprintf(format, args...)) }

func TestPartialFailure(t *testing.T) {
	need(t)
	f := &fakeTB{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		New(f, "", "a", "b", "a")
	}()
	<-done
	if !strings.Contains(f.fatal, `two hosts named "a"`) {
		t.Fatalf("New failed with %q", f.fatal)
	}
	if len(f.cleanups) < 5 { // bridge, and namespace and veth of a and b
		t.Errorf("%d cleanups", len(f.cleanups))
	}
	for i := len(f.cleanups) - 1; i >= 0; i-- {
		f.cleanups[i]()
	}
	if len(f.errors) > 0 {
		t.Errorf("cleanup: %q", f.errors)
	}
	out, _ := exec.Command("ip", "-o", "link", "show").CombinedOutput()
	ns, _ := exec.Command("ip", "netns", "list").CombinedOutput()
	self := tagFor(0)[:8] // this process's names
	for _, l := range strings.Split(string(out)+string(ns), "\n") {
		if strings.Contains(l, self) {
			t.Errorf("left: %s", l)
		}
	}

	defer func() {
		if recover() == nil {
			t.Error("Host of an unknown name did not panic")
		}
	}()
	(&Net{byName: map[string]*Host{}}).Host("nope")
}
