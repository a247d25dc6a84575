package kubetest

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"golang.org/x/sys/unix"
)

// Pod and node addresses are on the loopback network 127.0.0.0/8, which
// Linux routes entirely to lo: a process can bind any of them, so each pod
// run by RunPod binds its own pod IP, and pods reach each other by pod IP
// as on a flat pod network. kwok takes a pod's IP from its node's podCIDR
// (pools keyed by CIDR, handing out .1, .2, ...), so giving each node a
// CIDR of its own keeps pod IPs unique across the cluster.
//
// Clusters running at once on the machine (tests of several packages, or
// parallel tests) each hold an address block of their own, under a lock
// file: block b (0..maxBlocks-1) gives
//   - node n (1..maxNodes) podCIDR 127.(100 + 16b + n/256).(n%256).0/24
//     and InternalIP 127.(40 + b).(n/256).(n%256);
//   - nodes not made by AddNode pod IPs from 127.(60 + b).0.0/16 and the
//     node IP 127.(70 + b).0.1 (kwok's --cidr and --node-ip).
const (
	maxBlocks = 9
	maxNodes  = 16*256 - 1
)

// nodeAddresses returns the pod CIDR and node IP of the n-th node of
// address block b.
func nodeAddresses(b, n int) (podCIDR, nodeIP string, err error) {
	if n < 1 || n > maxNodes {
		return "", "", fmt.Errorf("node number %d out of range 1..%d", n, maxNodes)
	}
	if b < 0 || b >= maxBlocks {
		return "", "", fmt.Errorf("address block %d out of range 0..%d", b, maxBlocks-1)
	}
	cidr := netip.PrefixFrom(netip.AddrFrom4([4]byte{127, byte(100 + 16*b + n/256), byte(n % 256), 0}), 24)
	ip := netip.AddrFrom4([4]byte{127, byte(40 + b), byte(n / 256), byte(n % 256)})
	return cidr.String(), ip.String(), nil
}

// fallbackAddresses returns kwok's --cidr and --node-ip for block b.
func fallbackAddresses(b int) (cidr, nodeIP string) {
	return fmt.Sprintf("127.%d.0.0/16", 60+b), fmt.Sprintf("127.%d.0.1", 70+b)
}

// reserveBlock takes a free address block, under a lock file of /run/lock
// held until release (or the process's end).
func reserveBlock() (block int, release func(), err error) {
	dir := "/run/lock"
	if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		dir = os.TempDir()
	}
	for b := range maxBlocks {
		name := filepath.Join(dir, fmt.Sprintf("granary-kubetest-%d.lock", b))
		f, err := os.OpenFile(name, os.O_CREATE|os.O_RDWR, 0o666)
		if err != nil {
			return 0, nil, err
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			f.Close()
			continue
		}
		return b, func() { f.Close() }, nil
	}
	return 0, nil, fmt.Errorf("kubetest: all %d address blocks are in use (%s/granary-kubetest-*.lock): too many clusters at once", maxBlocks, dir)
}

// AddNode creates a kwok node (annotation kwok.x-k8s.io/node: fake) with
// the usual well-known labels plus labels, its own pod CIDR and loopback
// InternalIP, and waits until it is Ready and schedulable (the node
// lifecycle controller has removed the not-ready taint).
func (c *Cluster) AddNode(t testing.TB, name string, labels map[string]string) *corev1.Node {
	t.Helper()
	c.mu.Lock()
	c.nodeCount++
	n := c.nodeCount
	c.mu.Unlock()
	cidr, ip, err := nodeAddresses(c.block, n)
	if err != nil {
		t.Fatal(err)
	}
	l := map[string]string{
		"kubernetes.io/hostname": name,
		"kubernetes.io/os":       "linux",
		"kubernetes.io/arch":     "amd64",
		"type":                   "kwok",
	}
	maps.Copy(l, labels)
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name:        name,
			Labels:      l,
			Annotations: map[string]string{"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
		},
		Spec: corev1.NodeSpec{PodCIDR: cidr, PodCIDRs: []string{cidr}},
		// Status is taken on create; kwok keeps these addresses and
		// resources and fills in the rest.
		Status: corev1.NodeStatus{
			Capacity:    c.capacity.DeepCopy(),
			Allocatable: c.capacity.DeepCopy(),
			Addresses: []corev1.NodeAddress{
				{Type: corev1.NodeInternalIP, Address: ip},
				{Type: corev1.NodeHostName, Address: name},
			},
		},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := c.Clientset.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create node %s: %v", name, err)
	}
	var got *corev1.Node
	c.WaitFor(t, 60*time.Second, "node "+name+" Ready and schedulable", func() (bool, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		nd, err := c.Clientset.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		got = nd
		if !nodeReady(nd) {
			return false, fmt.Errorf("not Ready: %v", nd.Status.Conditions)
		}
		for _, taint := range nd.Spec.Taints {
			if taint.Effect == corev1.TaintEffectNoSchedule || taint.Effect == corev1.TaintEffectNoExecute {
				return false, fmt.Errorf("tainted: %v", nd.Spec.Taints)
			}
		}
		return true, nil
	})
	return got
}

func nodeReady(n *corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// NodeRoot returns the directory that stands for the root file system of
// node name: hostPath volumes of pods on that node are mapped under it, so
// pods on one node share them and a pod run again finds its data. It is
// made on first use; as root, it is a mount point shared with the pods'
// mount namespaces, so that a Bidirectional mount a pod makes under a
// hostPath shows on the node (and in HostToContainer mounts of other pods),
// as on a real node.
func (c *Cluster) NodeRoot(name string) string {
	p, err := c.nodeRoot(name)
	if err != nil {
		panic(fmt.Sprintf("kubetest: node root of %s: %v", name, err))
	}
	return p
}

func (c *Cluster) nodeRoot(name string) (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if p, ok := c.nodeRoots[name]; ok {
		return p, nil
	}
	base := filepath.Join(c.Dir, "nodes")
	p := filepath.Join(base, name)
	if err := os.MkdirAll(p, 0o755); err != nil {
		return "", err
	}
	if os.Geteuid() == 0 {
		if !c.nodesBase {
			// A private mount above the node roots: nothing mounted under
			// it propagates to the rest of the machine.
			if err := bindSelf(base, unix.MS_PRIVATE); err != nil {
				return "", err
			}
			c.nodesBase = true
		}
		if err := bindSelf(p, unix.MS_SHARED); err != nil {
			return "", err
		}
	}
	c.nodeRoots[name] = p
	return p, nil
}

// bindSelf bind-mounts dir on itself and sets its propagation.
func bindSelf(dir string, propagation uintptr) error {
	if err := unix.Mount(dir, dir, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind %s: %w", dir, err)
	}
	if err := unix.Mount("", dir, "", propagation, ""); err != nil {
		return fmt.Errorf("propagation of %s: %w", dir, err)
	}
	return nil
}

// nodeMounts returns the node roots that are mount points.
func (c *Cluster) nodeMounts() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if os.Geteuid() != 0 {
		return nil
	}
	return slices.Sorted(maps.Values(c.nodeRoots))
}

// unmountAll unmounts everything mounted under the cluster's directory
// (node roots, what pods propagated to them, memory emptyDirs), deepest
// first, lazily: a dead FUSE mount must not block the cleanup.
func (c *Cluster) unmountAll() error {
	if os.Geteuid() != 0 {
		return nil
	}
	var last error
	for range 3 { // what is unmounted may uncover more
		b, err := os.ReadFile("/proc/self/mountinfo")
		if err != nil {
			return err
		}
		var points []string
		for _, m := range parseMountinfo(string(b)) {
			if underAny(m.Point, []string{c.Dir}) {
				points = append(points, m.Point)
			}
		}
		if len(points) == 0 {
			return nil
		}
		slices.SortFunc(points, func(a, b string) int { return strings.Count(b, "/") - strings.Count(a, "/") })
		for _, p := range points {
			if err := unix.Unmount(p, unix.MNT_DETACH); err != nil && err != unix.EINVAL && err != unix.ENOENT {
				last = fmt.Errorf("unmount %s: %w", p, err)
			}
		}
	}
	return last
}

// claimDir maps a persistentVolumeClaim volume to a directory: the claim
// must be bound; a hostPath volume (kwok's provisioner makes those) is a
// directory of the cluster, shared by every node like network storage; a
// local volume is under its node's root.
func (c *Cluster) claimDir(pod *corev1.Pod, claim, nodeName string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pvc, err := c.Clientset.CoreV1().PersistentVolumeClaims(pod.Namespace).Get(ctx, claim, metav1.GetOptions{})
	if err != nil {
		return "", fmt.Errorf("claim %s: %w", claim, err)
	}
	if pvc.Spec.VolumeName == "" || pvc.Status.Phase != corev1.ClaimBound {
		return "", fmt.Errorf("claim %s is not bound (phase %s)", claim, pvc.Status.Phase)
	}
	pv, err := c.Clientset.CoreV1().PersistentVolumes().Get(ctx, pvc.Spec.VolumeName, metav1.GetOptions{})
	if err != nil {
		return "", fmt.Errorf("volume %s of claim %s: %w", pvc.Spec.VolumeName, claim, err)
	}
	var dir string
	switch {
	case pv.Spec.HostPath != nil:
		dir = filepath.Join(c.Dir, "volumes", pv.Name)
	case pv.Spec.Local != nil:
		root, err := c.nodeRoot(nodeName)
		if err != nil {
			return "", err
		}
		dir = hostPathSource(root, pv.Spec.Local.Path, nil)
	default:
		return "", fmt.Errorf("volume %s of claim %s: only hostPath and local volumes are supported", pv.Name, claim)
	}
	return dir, os.MkdirAll(dir, 0o777)
}

func mustQuantity(s string) resource.Quantity { return resource.MustParse(s) }
