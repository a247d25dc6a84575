package kubetest

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
)

func TestParseMountinfo(t *testing.T) {
	in := `26 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
27 26 0:24 /sub /mnt/with\040space ro,nosuid master:3 - tmpfs my\040fs ro,size=4k
bad line
28 26 0:25 / /proc rw - proc proc rw
`
	got := parseMountinfo(in)
	want := []mountInfo{
		{ID: 26, Parent: 1, Root: "/", Point: "/", Optional: []string{"shared:1"}, FSType: "ext4", Source: "/dev/vda"},
		{ID: 27, Parent: 26, Root: "/sub", Point: "/mnt/with space", Optional: []string{"master:3"}, FSType: "tmpfs", Source: "my fs"},
		{ID: 28, Parent: 26, Root: "/", Point: "/proc", Optional: []string{}, FSType: "proc", Source: "proc"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("parseMountinfo:\n got %+v\nwant %+v", got, want)
	}
	if s := unescapeOctal(`a\134b\011c\0`); s != "a\\b\tc\\0" {
		t.Errorf("unescapeOctal = %q", s)
	}
	// This machine's own mountinfo parses, with / in it.
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(parseMountinfo(string(b)), func(m mountInfo) bool { return m.Point == "/" }) {
		t.Error("no / in /proc/self/mountinfo")
	}
}

func TestContainerCaps(t *testing.T) {
	def, err := containerCaps(nil, nil)
	if err != nil || len(def) != len(defaultCaps) || slices.Contains(def, unix.CAP_SYS_ADMIN) {
		t.Errorf("default caps %v, %v", def, err)
	}
	caps, err := containerCaps([]string{"SYS_ADMIN", "CAP_NET_ADMIN"}, []string{"net_raw"})
	if err != nil || !slices.Contains(caps, unix.CAP_SYS_ADMIN) || !slices.Contains(caps, unix.CAP_NET_ADMIN) || slices.Contains(caps, unix.CAP_NET_RAW) {
		t.Errorf("add/drop: %v, %v", caps, err)
	}
	caps, err = containerCaps([]string{"NET_BIND_SERVICE"}, []string{"ALL"})
	if err != nil || !reflect.DeepEqual(caps, []int{unix.CAP_NET_BIND_SERVICE}) {
		t.Errorf("drop ALL add one: %v, %v", caps, err)
	}
	if caps, err = containerCaps(nil, []string{"ALL"}); err != nil || len(caps) != 0 || caps == nil {
		t.Errorf("drop ALL: %v, %v", caps, err)
	}
	if caps, _ = containerCaps([]string{"ALL"}, nil); len(caps) != len(capNumbers) {
		t.Errorf("add ALL: %d caps, want %d", len(caps), len(capNumbers))
	}
	if _, err := containerCaps([]string{"BOGUS"}, nil); err == nil {
		t.Error("unknown capability: no error")
	}
}

func TestLookPath(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "prog"), []byte("#!/bin/sh\n"), 0o755)
	os.WriteFile(filepath.Join(dir, "data"), nil, 0o644)
	env := []string{"A=1", "PATH=/nonexistent:" + dir}
	if p, err := lookPath("prog", env); err != nil || p != filepath.Join(dir, "prog") {
		t.Errorf("lookPath(prog) = %q, %v", p, err)
	}
	if _, err := lookPath("data", env); err == nil {
		t.Error("a file that is not executable was found")
	}
	if p, _ := lookPath("/abs/x", nil); p != "/abs/x" {
		t.Errorf("absolute path changed to %q", p)
	}
}

func TestNodeAddresses(t *testing.T) {
	seen := map[string]string{}
	use := func(what, addr string) {
		if prev, ok := seen[addr]; ok {
			t.Errorf("%s: %s already used by %s", what, addr, prev)
		}
		seen[addr] = what
	}
	for b := range maxBlocks {
		for _, n := range []int{1, 2, 3, 255, 256, 257, maxNodes} {
			cidr, ip, err := nodeAddresses(b, n)
			if err != nil {
				t.Fatal(err)
			}
			p := netip.MustParsePrefix(cidr)
			if !strings.HasPrefix(cidr, "127.") || p.Bits() != 24 || !strings.HasPrefix(ip, "127.") {
				t.Errorf("block %d node %d: %s %s", b, n, cidr, ip)
			}
			use(fmt.Sprintf("block %d node %d pods", b, n), p.Masked().Addr().String())
			use(fmt.Sprintf("block %d node %d IP", b, n), ip)
		}
		cidr, ip := fallbackAddresses(b)
		use(fmt.Sprintf("block %d fallback pods", b), cidr)
		use(fmt.Sprintf("block %d fallback IP", b), ip)
	}
	// No node IP lies in another block's pod CIDRs.
	for addr, what := range seen {
		if !strings.Contains(what, "IP") {
			continue
		}
		a := netip.MustParseAddr(addr)
		for b := range maxBlocks {
			for n := 1; n <= maxNodes; n += 255 {
				cidr, _, _ := nodeAddresses(b, n)
				if netip.MustParsePrefix(cidr).Contains(a) {
					t.Errorf("%s %s is in %s", what, addr, cidr)
				}
			}
		}
	}
	if c, ip, _ := nodeAddresses(0, 1); c != "127.100.1.0/24" || ip != "127.40.0.1" {
		t.Errorf("block 0 node 1: %s %s", c, ip)
	}
	if c, _, _ := nodeAddresses(1, 300); c != "127.117.44.0/24" {
		t.Errorf("block 1 node 300: %s", c)
	}
	for _, n := range []int{0, -1, maxNodes + 1} {
		if _, _, err := nodeAddresses(0, n); err == nil {
			t.Errorf("node %d: no error", n)
		}
	}
	if _, _, err := nodeAddresses(maxBlocks, 1); err == nil {
		t.Error("block out of range: no error")
	}
}

func TestReserveBlock(t *testing.T) {
	a, releaseA, err := reserveBlock()
	if err != nil {
		t.Fatal(err)
	}
	b, releaseB, err := reserveBlock()
	if err != nil {
		t.Fatal(err)
	}
	if a == b {
		t.Errorf("block %d reserved twice", a)
	}
	releaseA()
	c, releaseC, err := reserveBlock()
	if err != nil {
		t.Fatal(err)
	}
	defer releaseC()
	releaseB()
	if c != a {
		t.Logf("released block %d, then got %d (another process holds it?)", a, c)
	}
}

func TestKwokStages(t *testing.T) {
	dir := t.TempDir()
	for i, f := range kwokStageFiles {
		p := filepath.Join(dir, f)
		os.MkdirAll(filepath.Dir(p), 0o755)
		os.WriteFile(p, []byte("apiVersion: kwok.x-k8s.io/v1alpha1\nkind: Stage\nmetadata:\n  name: s"+string(rune('a'+i))+"\n"), 0o644)
	}
	s, err := kwokStages(dir)
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(s, "kind: Stage"); n != len(kwokStageFiles) {
		t.Errorf("%d stages, want %d:\n%s", n, len(kwokStageFiles), s)
	}
	if n := strings.Count(s, "---\n"); n != len(kwokStageFiles)-1 {
		t.Errorf("%d separators", n)
	}
	os.WriteFile(filepath.Join(dir, kwokStageFiles[0]), []byte("kind: Pod\n"), 0o644)
	if _, err := kwokStages(dir); err == nil {
		t.Error("a file that is not a Stage was taken")
	}
	// The real stages, when the module is there.
	if real := os.Getenv("GRANARY_KWOK_STAGES"); real != "" {
		if _, err := kwokStages(real); err != nil {
			t.Errorf("stages of %s: %v", real, err)
		}
	}
}

func TestEtcHosts(t *testing.T) {
	pod := testPod()
	pod.Spec.HostAliases = []corev1.HostAlias{{IP: "127.0.0.5", Hostnames: []string{"a", "b"}}}
	h := etcHosts(pod, "pod-a")
	for _, want := range []string{"127.0.0.1\tlocalhost\n", "127.100.1.3\tpod-a\n", "127.0.0.5\ta\tb\n"} {
		if !strings.Contains(h, want) {
			t.Errorf("/etc/hosts has no %q:\n%s", want, h)
		}
	}
	pod.Spec.Subdomain = "workers"
	if h := etcHosts(pod, "w-0"); !strings.Contains(h, "127.100.1.3\tw-0.workers.ns1.svc.cluster.local\tw-0\n") {
		t.Errorf("subdomain:\n%s", h)
	}
	if h := podHostname(&corev1.Pod{Spec: corev1.PodSpec{HostNetwork: true, NodeName: "node-2"}}); h != "node-2" {
		t.Errorf("hostNetwork hostname %q", h)
	}
	long := strings.Repeat("a", 70)
	if h := podHostname(&corev1.Pod{}); h != "" {
		t.Errorf("empty pod hostname %q", h)
	}
	pod.Name = long
	if h := podHostname(&corev1.Pod{ObjectMeta: pod.ObjectMeta}); len(h) != 63 {
		t.Errorf("hostname of a long name: %d chars", len(h))
	}
}

func TestSortMounts(t *testing.T) {
	ms := []mountSpec{{Target: "/a/b/c"}, {Target: "/x"}, {Target: "/a/b"}, {Target: "/a"}, {Target: "/y"}}
	sortMounts(ms)
	var got []string
	for _, m := range ms {
		got = append(got, m.Target)
	}
	if want := []string{"/x", "/a", "/y", "/a/b", "/a/b/c"}; !reflect.DeepEqual(got, want) {
		t.Errorf("order %v, want %v", got, want)
	}
}

func TestSecurityContext(t *testing.T) {
	pod := testPod()
	pod.Spec.SecurityContext = &corev1.PodSecurityContext{RunAsUser: ptr(int64(1000)), SupplementalGroups: []int64{5}, FSGroup: ptr(int64(7))}
	c := &pod.Spec.Containers[0]
	c.SecurityContext = &corev1.SecurityContext{
		RunAsGroup: ptr(int64(2000)), AllowPrivilegeEscalation: ptr(false), ReadOnlyRootFilesystem: ptr(true),
		Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
	}
	var s initSpec
	if err := securityContext(pod, c, &s); err != nil {
		t.Fatal(err)
	}
	if *s.UID != 1000 || *s.GID != 2000 || !reflect.DeepEqual(s.Groups, []int64{5, 7}) || !s.NoNewPrivs || !s.ReadOnlyRoot || s.Privileged || len(s.Caps) != 0 {
		t.Errorf("spec %+v", s)
	}
	c.SecurityContext = &corev1.SecurityContext{Privileged: ptr(true)}
	s = initSpec{}
	securityContext(pod, c, &s)
	if !s.Privileged || *s.GID != 0 {
		t.Errorf("privileged: %+v", s)
	}
}

func TestNeedSAVolume(t *testing.T) {
	pod := testPod()
	c := &pod.Spec.Containers[0]
	if !needSAVolume(pod, c, true) {
		t.Error("no SA volume without admission's")
	}
	if needSAVolume(pod, c, false) {
		t.Error("SA volume with automount off")
	}
	pod.Spec.Volumes = []corev1.Volume{{Name: "kube-api-access-x1"}}
	if needSAVolume(pod, c, true) {
		t.Error("SA volume besides admission's")
	}
	v := saVolume("x")
	if len(v.Projected.Sources) != 3 {
		t.Errorf("SA volume %+v", v)
	}
}
