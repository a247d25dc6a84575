// Package netnstest simulates several machines on one host for tests: a
// Linux bridge and one network namespace per host, joined by veth pairs, and
// a process runner (Proc) that starts programs in them and stops them by PID.
//
// Everything is made with the ip command of iproute2 and entered with the
// nsenter of util-linux (test/lib.sh installs both), as root. Only the
// network is separate: a host's processes share the test's mount namespace,
// file systems and PIDs, so a FUSE mount one of them makes is the test's too.
//
// A partition drops packets, it does not refuse them: Cut sets the host's
// port on the bridge down (not eth0 inside the namespace: a link set down
// loses its routes and even its permanent neighbours, and its own
// connections would fail at once with "network is unreachable"), and every host (and the root namespace) has a
// permanent neighbour entry for every other one, so no failed ARP turns the
// partition into a quick "no route to host". Connections to or from a cut
// host hang until their own timeouts, as across a real broken network.
//
// The names of namespaces, bridges and veths start with "grt", the PID of the
// test process and a counter, so test binaries running at once never
// collide; New removes what a crashed run left behind when its PID no longer
// exists. Subnets are chosen under a lock file (/run/lock) that all test
// processes share, and New fails on a /24 already in use.
package netnstest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// prefix starts the name of everything this package makes.
const prefix = "grt"

// eth is the name of a host's interface inside its namespace.
const eth = "eth0"

// upTimeout bounds the wait for links to come up. Carrier changes reach the
// queueing layer through the kernel's linkwatch, which may delay them by up
// to a second; a link is usable once its operstate says UP.
const upTimeout = 10 * time.Second

// Required reports whether tests must fail rather than skip when they cannot
// make namespaces ($GRANARY_REQUIRE_SERVERS, as test/lib.sh sets it).
func Required() bool { return os.Getenv("GRANARY_REQUIRE_SERVERS") != "" }

var (
	supportOnce sync.Once
	supportErr  error
)

// Supported reports whether this process can make network namespaces: nil,
// or an error that wraps syscall.EPERM when only privileges are missing (a
// test may skip on that, unless Required), or another error (missing tools).
// New itself never skips: a test that may skip calls Supported first.
func Supported() error {
	supportOnce.Do(func() { supportErr = probe() })
	return supportErr
}

func probe() error {
	for _, tool := range []string{"ip", "nsenter"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("netnstest: %s not found (apt-get install iproute2 util-linux): %w", tool, err)
		}
	}
	if os.Geteuid() != 0 {
		return fmt.Errorf("netnstest: network namespaces need root: %w", syscall.EPERM)
	}
	ns := tagFor(0) + "-probe" // counter 0: no Net uses it
	if err := ipCmd("", "netns", "add", ns); err != nil {
		return err
	}
	err := ipCmd(ns, "link", "set", "lo", "up")
	if derr := ipCmd("", "netns", "del", ns); err == nil {
		err = derr
	}
	return err
}

// Net is a simulated network: a bridge in the root namespace, with the
// address SUBNET.254, and the hosts on it.
type Net struct {
	Subnet string // the first three bytes of every address: "10.203.0"
	Bridge string // the bridge's name, in the root namespace

	t      testing.TB
	tag    string
	mu     sync.Mutex
	hosts  []*Host
	byName map[string]*Host
}

// Host is one simulated machine: a network namespace with the interface
// eth0 at IP, and the loopback.
type Host struct {
	Name string // as given to New or Add
	NS   string // the namespace's name: /run/netns/NS
	IP   string // SUBNET.N

	net  *Net
	veth string // the root namespace's end of the host's veth: its port on the bridge
	mac  string
}

var netSeq atomic.Uint32

// tagFor starts the names of everything Net number n of this process
// makes: prefix, the PID in 5 base-36 digits (PIDs are below 36⁵), n in
// decimal. A bridge adds "b", a veth "h" and the host's number in base 36,
// a namespace "-" and the host's name.
func tagFor(n uint32) string {
	return fmt.Sprintf("%s%05s%d", prefix, strconv.FormatInt(int64(os.Getpid()), 36), n)
}

// New makes a network with one host per name, with the addresses SUBNET.1,
// SUBNET.2, ... in the order of hosts. subnet is the first three bytes of the
// /24 ("10.203.0"); empty picks a /24 of 10.213.0.0/16 that no interface or
// route of the root namespace uses, which is what tests that may run next to
// other test binaries want. The test fails when the network cannot be made;
// everything made is removed when it ends, in reverse order.
func New(t testing.TB, subnet string, hosts ...string) *Net {
	t.Helper()
	if err := Supported(); err != nil {
		t.Fatal(err)
	}
	n := &Net{t: t, tag: tagFor(netSeq.Add(1)), byName: map[string]*Host{}}
	n.Bridge = n.tag + "b"
	if len(n.tag)+3 > syscall.IFNAMSIZ-1 { // the longest name is TAG+"h"+two digits
		t.Fatalf("netnstest: too many networks in one process: interface names of %s would be too long", n.tag)
	}
	func() {
		// The subnet is chosen and claimed (by the bridge's address) under
		// a lock that other test processes take too.
		unlock, err := lock()
		if err != nil {
			t.Fatal(err)
		}
		defer unlock()
		if gone, err := sweep(); err != nil {
			t.Logf("netnstest: removing leftovers: %v", err)
		} else if len(gone) > 0 {
			t.Logf("netnstest: removed leftovers of crashed runs: %s", strings.Join(gone, " "))
		}
		if subnet == "" {
			subnet, err = freeSubnet()
		} else {
			err = checkSubnet(subnet)
		}
		if err != nil {
			t.Fatal(err)
		}
		n.Subnet = subnet
		if err := ipCmd("", "link", "add", "name", n.Bridge, "address", macOf(254), "type", "bridge"); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { n.cleanup(ipCmd("", "link", "del", n.Bridge)) })
		err = ipBatch("",
			"link set "+n.Bridge+" addrgenmode none",
			"addr add "+subnet+".254/24 dev "+n.Bridge,
			"link set "+n.Bridge+" up")
		if err != nil {
			t.Fatal(err)
		}
	}()
	for _, name := range hosts {
		if _, err := n.add(name); err != nil {
			t.Fatal(err)
		}
	}
	for _, h := range n.hosts {
		if err := h.waitUp(); err != nil {
			t.Fatal(err)
		}
	}
	return n
}

// cleanup reports an error of a cleanup step.
func (n *Net) cleanup(err error) {
	if err != nil && !strings.Contains(err.Error(), "Cannot find device") {
		n.t.Errorf("netnstest cleanup: %v", err)
	}
}

// Host returns the host of that name. It panics if there is none: a
// mistake in the test (and a panic, unlike a Fatal, is right in any
// goroutine).
func (n *Net) Host(name string) *Host {
	n.mu.Lock()
	h := n.byName[name]
	n.mu.Unlock()
	if h == nil {
		panic(fmt.Sprintf("netnstest: no host %q in %s", name, n.Subnet))
	}
	return h
}

// Hosts returns the hosts in the order of their addresses.
func (n *Net) Hosts() []*Host {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]*Host(nil), n.hosts...)
}

// Add adds a host, with the next address, and returns it once it can be
// reached. Like New, it fails the test given to New when it cannot (call it
// from that test's goroutine); the host is removed when that test ends.
func (n *Net) Add(name string) *Host {
	n.t.Helper()
	h, err := n.add(name)
	if err == nil {
		err = h.waitUp()
	}
	if err != nil {
		n.t.Fatal(err)
	}
	return h
}

var hostNameRE = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,40}$`)

func (n *Net) add(name string) (*Host, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if !hostNameRE.MatchString(name) {
		return nil, fmt.Errorf("netnstest: bad host name %q (letters, digits, _ . - only)", name)
	}
	if n.byName[name] != nil {
		return nil, fmt.Errorf("netnstest: two hosts named %q", name)
	}
	i := len(n.hosts) + 1
	if i > 253 {
		return nil, errors.New("netnstest: a /24 holds 253 hosts")
	}
	h := &Host{
		Name: name,
		NS:   n.tag + "-" + name,
		IP:   n.Subnet + "." + strconv.Itoa(i),
		net:  n,
		veth: n.tag + "h" + strconv.FormatInt(int64(i), 36),
		mac:  macOf(i),
	}
	// Each object gets its cleanup as soon as it exists, so that a failure
	// half way removes what was made. The veth goes before the namespace,
	// explicitly: a namespace's interfaces are destroyed asynchronously once
	// it is deleted, and the test checks that nothing is left.
	if err := ipCmd("", "netns", "add", h.NS); err != nil {
		return nil, err
	}
	n.t.Cleanup(func() { n.cleanup(ipCmd("", "netns", "del", h.NS)) })
	if err := ipCmd("", "link", "add", h.veth, "type", "veth", "peer", "name", eth, "netns", h.NS); err != nil {
		return nil, err
	}
	n.t.Cleanup(func() { n.cleanup(ipCmd("", "link", "del", h.veth)) })
	// No IPv6 link-local addresses (addrgenmode none): no duplicate address
	// detection, router solicitations or MLD on these links.
	err := ipBatch("",
		"link set "+h.veth+" addrgenmode none",
		"link set "+h.veth+" master "+n.Bridge,
		"link set "+h.veth+" up",
		neigh(h, n.Bridge))
	if err != nil {
		return nil, err
	}
	lines := []string{
		"link set lo up",
		"link set " + eth + " address " + h.mac,
		"link set " + eth + " addrgenmode none",
		"addr add " + h.IP + "/24 dev " + eth,
		"link set " + eth + " up",
		"neigh replace " + n.Subnet + ".254 lladdr " + macOf(254) + " dev " + eth + " nud permanent",
	}
	for _, o := range n.hosts {
		lines = append(lines, neigh(o, eth))
		if err := ipBatch(o.NS, neigh(h, eth)); err != nil {
			return nil, err
		}
	}
	if err := ipBatch(h.NS, lines...); err != nil {
		return nil, err
	}
	n.hosts = append(n.hosts, h)
	n.byName[name] = h
	return h, nil
}

// neigh is the ip command that makes h's MAC address known on dev.
func neigh(h *Host, dev string) string {
	return "neigh replace " + h.IP + " lladdr " + h.mac + " dev " + dev + " nud permanent"
}

// macOf is the MAC address of SUBNET.i (a locally administered one; each
// bridge is an Ethernet of its own).
func macOf(i int) string { return fmt.Sprintf("02:67:72:74:00:%02x", i) }

// Command returns a command that runs name with args in the host's network
// namespace (and only there: mount namespace, PIDs and the rest stay the
// test's). It runs nsenter, which execs name: the process's PID is the
// program's own. Cmd.Path is nsenter's, the program is looked up in the
// command's $PATH.
func (h *Host) Command(name string, args ...string) *exec.Cmd {
	return exec.Command("nsenter", append([]string{"--net=" + filepath.Join("/run/netns", h.NS), "--", name}, args...)...)
}

// Cut partitions the host from the others and from the root namespace:
// its port on the bridge goes down, so every packet to or from it is
// dropped. Its own eth0 loses the carrier but keeps its address, route and
// neighbours, and processes on it keep running.
func (h *Host) Cut(t testing.TB) {
	t.Helper()
	if err := ipCmd("", "link", "set", "dev", h.veth, "down"); err != nil {
		t.Fatal(err)
	}
}

// Heal ends Cut and returns once packets flow again.
func (h *Host) Heal(t testing.TB) {
	t.Helper()
	err := ipCmd("", "link", "set", "dev", h.veth, "up")
	if err == nil {
		err = h.waitUp()
	}
	if err != nil {
		t.Fatal(err)
	}
}

// Addr returns IP:PORT.
func (h *Host) Addr(port int) string { return net.JoinHostPort(h.IP, strconv.Itoa(port)) }

type ipLink struct {
	Name      string `json:"ifname"`
	Operstate string `json:"operstate"`
	Linkinfo  struct {
		SlaveData struct {
			State string `json:"state"`
		} `json:"info_slave_data"`
	} `json:"linkinfo"`
}

// waitUp waits until the host's links are up at both ends and its bridge
// port forwards, and so does the bridge (for the root namespace).
func (h *Host) waitUp() error {
	deadline := time.Now().Add(upTimeout)
	var state string
	for {
		port, err1 := showLink("", h.veth)
		in, err2 := showLink(h.NS, eth)
		br, err3 := showLink("", h.net.Bridge)
		if err := errors.Join(err1, err2, err3); err != nil {
			return err
		}
		if port.Operstate == "UP" && port.Linkinfo.SlaveData.State == "forwarding" && in.Operstate == "UP" && br.Operstate == "UP" {
			return nil
		}
		state = fmt.Sprintf("port %s %s %s, %s in %s %s, bridge %s", h.veth, port.Operstate, port.Linkinfo.SlaveData.State,
			eth, h.NS, in.Operstate, br.Operstate)
		if time.Now().After(deadline) {
			return fmt.Errorf("netnstest: links of %s not up within %v: %s", h.Name, upTimeout, state)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func showLink(ns, dev string) (ipLink, error) {
	out, err := ipOut(ns, "-j", "-d", "link", "show", "dev", dev)
	if err != nil {
		return ipLink{}, err
	}
	var links []ipLink
	if err := json.Unmarshal(out, &links); err != nil || len(links) != 1 {
		return ipLink{}, fmt.Errorf("netnstest: ip link show %s: %q: %v", dev, out, err)
	}
	return links[0], nil
}

// ipOut runs ip (in namespace ns unless empty) and returns its output. An
// error says what failed and wraps syscall.EPERM for missing privileges.
func ipOut(ns string, args ...string) ([]byte, error) {
	return ipRun(ns, nil, args...)
}

func ipCmd(ns string, args ...string) error {
	_, err := ipRun(ns, nil, args...)
	return err
}

// ipBatch runs several ip commands in one process (ip -batch), stopping at
// the first that fails.
func ipBatch(ns string, lines ...string) error {
	_, err := ipRun(ns, []byte(strings.Join(lines, "\n")+"\n"), "-batch", "-")
	return err
}

func ipRun(ns string, stdin []byte, args ...string) ([]byte, error) {
	if ns != "" {
		args = append([]string{"-n", ns}, args...)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", args...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		msg := strings.TrimSpace(stderr.String())
		what := "ip " + strings.Join(args, " ")
		if stdin != nil {
			what += " <<" + strings.ReplaceAll(strings.TrimSpace(string(stdin)), "\n", "; ")
		}
		if strings.Contains(msg, "Operation not permitted") || strings.Contains(msg, "Permission denied") {
			return out, fmt.Errorf("netnstest: %s: %s: %w", what, msg, syscall.EPERM)
		}
		return out, fmt.Errorf("netnstest: %s: %v: %s", what, err, msg)
	}
	return out, nil
}

// lock takes the lock (shared by all test processes) under which subnets
// are chosen and leftovers removed.
func lock() (unlock func(), err error) {
	dir := "/run/lock"
	if _, err := os.Stat(dir); err != nil {
		dir = os.TempDir()
	}
	name := filepath.Join(dir, "granary-netnstest.lock")
	f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("netnstest: %w", err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil
		}
		if err != syscall.EWOULDBLOCK && err != syscall.EINTR {
			f.Close()
			return nil, fmt.Errorf("netnstest: lock %s: %w", name, err)
		}
		if time.Now().After(deadline) {
			f.Close()
			return nil, fmt.Errorf("netnstest: %s still locked after 60s", name)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// leftoverRE matches the names this package makes; the group is the PID of
// the process that made them, in base 36.
var leftoverRE = regexp.MustCompile(`^` + prefix + `([0-9a-z]{5})[0-9]+(b$|h[0-9a-z]+$|-)`)

// sweep removes the namespaces, bridges and veths of processes that no
// longer exist, and returns their names. It leaves alone everything of a
// live PID, this process's included. (A process of another PID namespace
// sharing this network is taken for dead if its PID is free here.)
func sweep() ([]string, error) {
	dead := func(name string) bool {
		m := leftoverRE.FindStringSubmatch(name)
		if m == nil {
			return false
		}
		pid, err := strconv.ParseInt(m[1], 36, 64)
		if err != nil || pid <= 0 || pid > 1<<30 || int(pid) == os.Getpid() {
			return false
		}
		return syscall.Kill(int(pid), 0) == syscall.ESRCH
	}
	var gone []string
	var errs []error
	out, err := ipOut("", "-j", "link", "show")
	if err != nil {
		return nil, err
	}
	var links []ipLink
	if err := json.Unmarshal(out, &links); err != nil {
		return nil, fmt.Errorf("netnstest: ip -j link show: %w", err)
	}
	for _, l := range links {
		if dead(l.Name) {
			if err := ipCmd("", "link", "del", l.Name); err != nil && !strings.Contains(err.Error(), "Cannot find device") {
				errs = append(errs, err) // deleting one end of a veth deletes the other
			} else {
				gone = append(gone, l.Name)
			}
		}
	}
	entries, err := os.ReadDir("/run/netns")
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return gone, err
	}
	for _, e := range entries {
		if dead(e.Name()) {
			if err := ipCmd("", "netns", "del", e.Name()); err != nil {
				errs = append(errs, err)
			} else {
				gone = append(gone, e.Name())
			}
		}
	}
	return gone, errors.Join(errs...)
}

// checkSubnet fails when subnet is not three bytes of an IPv4 address, or
// when it is in use (see inUse).
func checkSubnet(subnet string) error {
	_, ours, err := net.ParseCIDR(subnet + ".0/24")
	if err != nil || strings.Count(subnet, ".") != 2 {
		return fmt.Errorf("netnstest: bad subnet %q: want the first three bytes of an IPv4 address, like 10.203.0", subnet)
	}
	used, err := inUse()
	if err != nil {
		return err
	}
	return used(ours)
}

// freeSubnet returns the first /24 of 10.213.0.0/16 not in use.
func freeSubnet() (string, error) {
	used, err := inUse()
	if err != nil {
		return "", err
	}
	for x := range 256 {
		s := "10.213." + strconv.Itoa(x)
		if used(&net.IPNet{IP: net.ParseIP(s + ".0").To4(), Mask: net.CIDRMask(24, 32)}) == nil {
			return s, nil
		}
	}
	return "", errors.New("netnstest: every /24 of 10.213.0.0/16 is in use")
}

// inUse returns a function that says why a /24 is in use in the root
// namespace, or nil: an address in it, or a route at least as narrow (the
// bridge of another test, or a real network), would leave the root
// namespace unable to tell which one to reach.
func inUse() (func(*net.IPNet) error, error) {
	out, err := ipOut("", "-4", "-j", "addr", "show")
	if err != nil {
		return nil, err
	}
	var addrs []struct {
		Name string `json:"ifname"`
		Info []struct {
			Local string `json:"local"`
		} `json:"addr_info"`
	}
	if err := json.Unmarshal(out, &addrs); err != nil {
		return nil, fmt.Errorf("netnstest: ip -j addr show: %w", err)
	}
	out, err = ipOut("", "-4", "-j", "route", "show")
	if err != nil {
		return nil, err
	}
	var routes []struct {
		Dst string `json:"dst"`
		Dev string `json:"dev"`
	}
	if err := json.Unmarshal(out, &routes); err != nil {
		return nil, fmt.Errorf("netnstest: ip -j route show: %w", err)
	}
	return func(ours *net.IPNet) error {
		for _, a := range addrs {
			for _, i := range a.Info {
				if ip := net.ParseIP(i.Local); ip != nil && ours.Contains(ip) {
					return fmt.Errorf("netnstest: subnet %s is in use: %s has %s", ours, a.Name, i.Local)
				}
			}
		}
		for _, r := range routes {
			dst := r.Dst
			if !strings.Contains(dst, "/") {
				dst += "/32"
			}
			ip, n, err := net.ParseCIDR(dst)
			if err != nil {
				continue // "default"
			}
			if ones, _ := n.Mask.Size(); ones >= 24 && ours.Contains(ip) {
				return fmt.Errorf("netnstest: subnet %s is in use: route %s dev %s", ours, r.Dst, r.Dev)
			}
		}
		return nil
	}, nil
}
