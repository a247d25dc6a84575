package kubetest

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// report is what testdata/podcheck prints.
type report struct {
	Args     []string
	Env      map[string]string
	Hostname string
	PID      int
	UID, GID int
	Cwd      string
	Files    map[string]struct{ Mode, Content string }
	Mounts   map[string]string
	CapBnd   string
	CapEff   string
	Listen   string
	API      map[string]int
	Writes   map[string]string
	Mode     string
	Errors   []string
}

// buildRootfs builds testdata/podcheck (static) into a root file system
// directory: /usr/bin/podcheck and an empty /etc.
func buildRootfs(t *testing.T) string {
	t.Helper()
	root := filepath.Join(t.TempDir(), "rootfs")
	for _, d := range []string{"usr/bin", "etc"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", filepath.Join(root, "usr/bin/podcheck"), "./testdata/podcheck")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build podcheck: %v\n%s", err, out)
	}
	return root
}

// waitProc waits (boundedly) for a container to exit and returns its report.
func waitProc(t *testing.T, p *Proc, timeout time.Duration) report {
	t.Helper()
	select {
	case <-p.Done():
	case <-time.After(timeout):
		t.Fatalf("%s/%s did not exit within %v; log:\n%s", p.Pod.Name, p.Container, timeout, p.Log())
	}
	if err := p.Wait(); err != nil {
		t.Errorf("%s/%s: %v; log:\n%s", p.Pod.Name, p.Container, err, p.Log())
	}
	var r report
	for _, line := range strings.Split(p.Log(), "\n") {
		if js, ok := strings.CutPrefix(line, "REPORT "); ok {
			if err := json.Unmarshal([]byte(js), &r); err != nil {
				t.Fatalf("%s: report: %v", p.Pod.Name, err)
			}
			return r
		}
	}
	t.Fatalf("%s/%s printed no report:\n%s", p.Pod.Name, p.Container, p.Log())
	return r
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestClusterRunPod(t *testing.T) {
	if os.Geteuid() != 0 {
		if Required() {
			t.Fatal("RunPod needs root")
		}
		t.Skip("RunPod needs root")
	}
	if _, err := findBinaries(); err != nil && !Required() {
		t.Skip(err)
	}
	rootfs := buildRootfs(t)
	began := time.Now()
	c := Start(t, Options{Nodes: 3, NodeLabels: map[string]string{"granary.dev/test": "yes"}, CRDDirs: []string{"testdata/crds"}})
	t.Logf("Start took %v", time.Since(began))
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	if out, err := c.Kubectl(t, "get", "nodes", "-o", "name"); err != nil || out != "node/node-1\nnode/node-2\nnode/node-3\n" {
		t.Errorf("kubectl get nodes: %q, %v", out, err)
	}
	const ns = "kt"
	// The CRD is installed, and validates.
	widget := func(size int64) *unstructured.Unstructured {
		u := &unstructured.Unstructured{Object: map[string]any{"spec": map[string]any{"size": size}}}
		u.SetAPIVersion("kubetest.granary.dev/v1")
		u.SetKind("Widget")
		u.SetNamespace("default")
		u.SetName(fmt.Sprintf("w%d", size))
		return u
	}
	must(t, c.Client.Create(ctx, widget(3)))
	if err := c.Client.Create(ctx, widget(0)); err == nil || !strings.Contains(err.Error(), "spec.size") {
		t.Errorf("a Widget of size 0 (minimum 1): %v", err)
	}
	objs := []client.Object{
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}},
		&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "checker", Namespace: ns}},
		&rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: "cm-reader", Namespace: ns},
			Rules: []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"configmaps"}, Verbs: []string{"get"}}}},
		&rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "cm-reader", Namespace: ns},
			RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: "cm-reader"},
			Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Name: "checker", Namespace: ns}}},
		&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "cfg", Namespace: ns}, Data: map[string]string{"A": "alpha", "B": "beta"}},
		&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "target", Namespace: ns}, Data: map[string]string{"x": "y"}},
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "sec", Namespace: ns}, Data: map[string][]byte{"PASSWORD": []byte("s3cret")}},
	}
	for _, o := range objs {
		must(t, c.Client.Create(ctx, o))
	}
	must(t, c.Client.Create(ctx, checkerDaemonSet(ns)))

	// The DaemonSet runs a pod on each node, each with its own loopback IP
	// from its node's podCIDR.
	var pods []corev1.Pod
	c.WaitFor(t, 60*time.Second, "3 running checker pods with IPs", func() (bool, error) {
		var l corev1.PodList
		if err := c.Client.List(ctx, &l, client.InNamespace(ns), client.MatchingLabels{"app": "checker"}); err != nil {
			return false, err
		}
		pods = nil
		for _, p := range l.Items {
			if p.Status.Phase == corev1.PodRunning && p.Status.PodIP != "" && p.DeletionTimestamp == nil {
				pods = append(pods, p)
			}
		}
		return len(pods) == 3, fmt.Errorf("%d of 3", len(pods))
	})
	ips := map[string]bool{}
	nodes := map[string]bool{}
	loopback := netip.MustParsePrefix("127.0.0.0/8")
	for _, p := range pods {
		var node corev1.Node
		must(t, c.Client.Get(ctx, client.ObjectKey{Name: p.Spec.NodeName}, &node))
		ip := netip.MustParseAddr(p.Status.PodIP)
		cidr := netip.MustParsePrefix(node.Spec.PodCIDR)
		if !loopback.Contains(ip) || !cidr.Contains(ip) || ips[p.Status.PodIP] || nodes[p.Spec.NodeName] {
			t.Errorf("pod %s on %s: IP %s (node podCIDR %s), seen IPs %v, nodes %v", p.Name, p.Spec.NodeName, ip, cidr, ips, nodes)
		}
		ips[p.Status.PodIP], nodes[p.Spec.NodeName] = true, true
		if p.Status.HostIP != node.Status.Addresses[0].Address {
			t.Errorf("pod %s hostIP %s, node's %v", p.Name, p.Status.HostIP, node.Status.Addresses)
		}
		if !slices.ContainsFunc(p.Spec.Volumes, func(v corev1.Volume) bool { return strings.HasPrefix(v.Name, "kube-api-access-") }) {
			t.Errorf("pod %s has no kube-api-access volume (ServiceAccount admission)", p.Name)
		}
	}
	if t.Failed() {
		t.FailNow()
	}

	// Run the main container of every pod at once.
	began = time.Now()
	var procs []*Proc
	for i := range pods {
		procs = append(procs, RunPod(t, c, &pods[i], RunOptions{Rootfs: rootfs}))
	}
	for i, p := range procs {
		r := waitProc(t, p, 60*time.Second)
		checkMainReport(t, c, &pods[i], r)
	}
	t.Logf("3 pods ran in %v", time.Since(began))

	// The Bidirectional mount of the main container shows on its node
	// (and stays when the container is gone, as on a real node) ...
	pod0 := &pods[0]
	shared := filepath.Join(c.NodeRoot(pod0.Spec.NodeName), "var/lib/kubetest-shared/mnt/hello")
	if b, err := os.ReadFile(shared); err != nil || string(b) != "from "+pod0.Name {
		t.Errorf("node's view of the Bidirectional mount: %q, %v", b, err)
	}
	// ... and in the HostToContainer mount of the unprivileged sidecar,
	// which runs as user 1000 with only NET_BIND_SERVICE and cannot mount.
	side := waitProc(t, RunPod(t, c, pod0, RunOptions{Rootfs: rootfs, Container: "side"}), 60*time.Second)
	if f := side.Files["/shared/mnt/hello"]; f.Content != "from "+pod0.Name {
		t.Errorf("sidecar sees /shared/mnt/hello = %q; files %v", f.Content, side.Files)
	}
	if side.UID != 1000 || side.CapBnd != "0000000000000400" || side.CapEff != "0000000000000000" || side.PID != 1 {
		t.Errorf("sidecar: uid %d, CapBnd %s, CapEff %s, pid %d", side.UID, side.CapBnd, side.CapEff, side.PID)
	}

	// The main container again (a restart): it finds the emptyDir and
	// hostPath data of its first run, and sees an update of its config map.
	mode := filepath.Join(c.NodeRoot(pod0.Spec.NodeName), "var/lib/kubetest/mode")
	must(t, os.WriteFile(mode, []byte("wait:/etc/cfg/A=updated"), 0o644))
	again := RunPod(t, c, pod0, RunOptions{Rootfs: rootfs})
	var cfg corev1.ConfigMap
	must(t, c.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: "cfg"}, &cfg))
	cfg.Data["A"] = "updated"
	must(t, c.Client.Update(ctx, &cfg))
	r := waitProc(t, again, 60*time.Second)
	if r.Mode != "wait:/etc/cfg/A=updated: seen" {
		t.Errorf("config map update: mode %q", r.Mode)
	}
	if f := r.Files["/scratch/seen"]; f.Content != pod0.Name {
		t.Errorf("emptyDir after a restart: /scratch/seen = %q", f.Content)
	}
	if f := r.Files["/data/host/"+pod0.Name]; f.Content != "ran on "+pod0.Spec.NodeName {
		t.Errorf("hostPath after a restart: %q", f.Content)
	}
	if again.TerminationMessage() != "0 errors" {
		t.Errorf("termination message %q", again.TerminationMessage())
	}

	// Deleting a pod stops its container: SIGTERM, which PID 1 handles.
	pod1 := &pods[1]
	must(t, os.WriteFile(filepath.Join(c.NodeRoot(pod1.Spec.NodeName), "var/lib/kubetest/mode"), []byte("sleep"), 0o644))
	sleeper := RunPod(t, c, pod1, RunOptions{Rootfs: rootfs})
	c.WaitFor(t, 30*time.Second, "sleeper asleep", func() (bool, error) {
		return strings.Contains(sleeper.Log(), "sleeping until SIGTERM"), nil
	})
	// kubectl exec, as it were: in the container's namespaces and root.
	out, err := sleeper.Exec(ctx, "/usr/bin/podcheck", "-ls", "/etc/cfg")
	if err != nil || !strings.Contains(out, `"Hostname":"`+pod1.Name+`"`) || !strings.Contains(out, `"/etc/cfg/B":{"Mode":"644","Content":"beta"}`) {
		t.Errorf("exec in %s: %v\n%s", pod1.Name, err, out)
	}
	must(t, c.Clientset.CoreV1().Pods(ns).Delete(ctx, pod1.Name, metav1.DeleteOptions{}))
	if r := waitProc(t, sleeper, 20*time.Second); r.Mode != "sleep: got SIGTERM" {
		t.Errorf("deleted pod's container: mode %q", r.Mode)
	}

	testStatefulSetClaim(t, c, rootfs)
}

// testStatefulSetClaim runs a StatefulSet pod whose claim kwok binds: its
// volume is a directory of the cluster, found again by the pod that
// replaces it.
func testStatefulSetClaim(t *testing.T, c *Cluster, rootfs string) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const ns = "kt"
	labels := map[string]string{"app": "st"}
	st := &appsv1.StatefulSet{
		ObjectMeta: metav1.ObjectMeta{Name: "st", Namespace: ns},
		Spec: appsv1.StatefulSetSpec{
			Replicas: ptr(int32(1)),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					AutomountServiceAccountToken: ptr(false),
					Containers: []corev1.Container{{
						Name: "main", Image: "podcheck:test",
						Command:      []string{"/usr/bin/podcheck", "-ls", "/data", "-write", "/data/uid=$(POD_UID)"},
						Env:          []corev1.EnvVar{{Name: "POD_UID", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.uid"}}}},
						VolumeMounts: []corev1.VolumeMount{{Name: "data", MountPath: "/data"}},
					}},
				},
			},
			VolumeClaimTemplates: []corev1.PersistentVolumeClaim{{
				ObjectMeta: metav1.ObjectMeta{Name: "data"},
				Spec: corev1.PersistentVolumeClaimSpec{
					AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
					Resources:   corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")}},
				},
			}},
		},
	}
	must(t, c.Client.Create(ctx, st))
	run := func(notUID string) (*corev1.Pod, report) {
		var pod corev1.Pod
		c.WaitFor(t, 60*time.Second, "pod st-0 running", func() (bool, error) {
			if err := c.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: "st-0"}, &pod); err != nil {
				return false, err
			}
			return pod.Status.PodIP != "" && pod.DeletionTimestamp == nil && string(pod.UID) != notUID, nil
		})
		return &pod, waitProc(t, RunPod(t, c, &pod, RunOptions{Rootfs: rootfs}), 60*time.Second)
	}
	first, r := run("")
	if len(r.Files) != 0 {
		t.Errorf("new claim holds %v", r.Files)
	}
	if _, ok := r.Env["KUBERNETES_SERVICE_HOST"]; !ok {
		t.Error("no KUBERNETES_SERVICE_HOST")
	}
	must(t, c.Client.Delete(ctx, first))
	_, r = run(string(first.UID))
	if got := r.Files["/data/uid"].Content; got != string(first.UID) {
		t.Errorf("replacement pod finds /data/uid = %q, want the first pod's %s", got, first.UID)
	}
}

// capBnd returns the capability bounding set of the test process.
func capBnd(t *testing.T) string {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "CapBnd:"); ok {
			return strings.TrimSpace(v)
		}
	}
	t.Fatal("no CapBnd in /proc/self/status")
	return ""
}

// checkMainReport checks what the main container of a checker pod saw.
func checkMainReport(t *testing.T, c *Cluster, pod *corev1.Pod, r report) {
	t.Helper()
	var node corev1.Node
	if err := c.Client.Get(context.Background(), client.ObjectKey{Name: pod.Spec.NodeName}, &node); err != nil {
		t.Fatal(err)
	}
	if len(r.Errors) > 0 {
		t.Errorf("%s: podcheck errors: %q", pod.Name, r.Errors)
	}
	wantEnv := map[string]string{
		"POD_NAME":                pod.Name,
		"POD_NAMESPACE":           pod.Namespace,
		"POD_UID":                 string(pod.UID),
		"POD_IP":                  pod.Status.PodIP,
		"HOST_IP":                 node.Status.Addresses[0].Address,
		"NODE_NAME":               pod.Spec.NodeName,
		"SA_NAME":                 "checker",
		"APP":                     "checker",
		"NOTE":                    "hello",
		"CPU_LIMIT_M":             "500",
		"MEM_REQUEST_MI":          "64",
		"CM_A":                    "alpha",
		"SEC_PW":                  "s3cret",
		"COMPOSED":                pod.Name + "@" + pod.Spec.NodeName,
		"ESCAPED":                 "$(POD_NAME)",
		"CFG_A":                   "alpha",
		"CFG_B":                   "beta",
		"PASSWORD":                "s3cret",
		"HOSTNAME":                pod.Name,
		"PATH":                    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"KUBERNETES_SERVICE_HOST": "127.0.0.1",
	}
	for k, v := range wantEnv {
		if r.Env[k] != v {
			t.Errorf("%s: env %s = %q, want %q", pod.Name, k, r.Env[k], v)
		}
	}
	if _, ok := r.Env["OPTIONAL"]; ok {
		t.Errorf("%s: OPTIONAL set from a missing key", pod.Name)
	}
	if want := "/data/host/" + pod.Name + "=ran on " + pod.Spec.NodeName; !slices.Contains(r.Args, want) {
		t.Errorf("%s: args %q lack %q", pod.Name, r.Args, want)
	}
	if r.Hostname != pod.Name || r.PID != 1 || r.UID != 0 || r.Cwd != "/work" {
		t.Errorf("%s: hostname %q pid %d uid %d cwd %q", pod.Name, r.Hostname, r.PID, r.UID, r.Cwd)
	}
	files := map[string]string{ // path -> mode:content ("" content: any)
		"/etc/cfg/A":               "644:alpha",
		"/etc/cfg/B":               "644:beta",
		"/etc/a.txt":               "644:alpha",
		"/etc/sec/PASSWORD":        "400:s3cret",
		"/etc/podinfo/name":        "644:" + pod.Name,
		"/etc/podinfo/labels":      "644:",
		"/etc/podinfo/cpu":         "644:500",
		"/etc/proj/token":          "600:",
		"/etc/proj/b":              "600:beta",
		"/etc/proj/ns":             "600:kt",
		saMountPath + "/token":     "644:",
		saMountPath + "/ca.crt":    "644:",
		saMountPath + "/namespace": "644:kt",
	}
	for p, want := range files {
		f, ok := r.Files[p]
		mode, content, _ := strings.Cut(want, ":")
		if !ok || f.Mode != mode || (content != "" && f.Content != content) || f.Content == "" {
			t.Errorf("%s: file %s = %+v (present %v), want mode %s content %q", pod.Name, p, f, ok, mode, content)
		}
	}
	if l := r.Files["/etc/podinfo/labels"].Content; !strings.Contains(l, `app="checker"`) {
		t.Errorf("%s: labels file %q", pod.Name, l)
	}
	if ca, _ := os.ReadFile(c.CAFile); r.Files[saMountPath+"/ca.crt"].Content != string(ca) {
		t.Errorf("%s: ca.crt is not the API server's CA", pod.Name)
	}
	if m := r.Mounts["/cache/mem"]; !strings.HasPrefix(m, "tmpfs ") || !strings.Contains(m, "size=16384k") {
		t.Errorf("%s: /cache/mem mount %q, want a tmpfs of 16Mi", pod.Name, m)
	}
	for p, fstype := range map[string]string{"/tmp": "tmpfs", "/proc": "proc", "/": "overlay", "/dev": "tmpfs", "/dev/shm": "tmpfs"} {
		if !strings.HasPrefix(r.Mounts[p], fstype+" ") {
			t.Errorf("%s: %s mount %q, want %s", pod.Name, p, r.Mounts[p], fstype)
		}
	}
	readOnly := func(p string) bool {
		f := strings.Fields(r.Mounts[p])
		return len(f) > 1 && strings.HasPrefix(f[1], "ro")
	}
	if !readOnly("/etc/cfg") || !readOnly("/data/ro") || readOnly("/data/host") {
		t.Errorf("%s: read-only mounts: /etc/cfg %q, /data/ro %q", pod.Name, r.Mounts["/etc/cfg"], r.Mounts["/data/ro"])
	}
	if r.Listen != "ok" {
		t.Errorf("%s: could not bind its pod IP", pod.Name)
	}
	cm := "/api/v1/namespaces/kt/configmaps/target"
	secrets := "/api/v1/namespaces/kt/secrets"
	if r.API[cm] != 200 || r.API[secrets] != 403 {
		t.Errorf("%s: API: GET config map %d (want 200), list secrets %d (want 403)", pod.Name, r.API[cm], r.API[secrets])
	}
	if own := capBnd(t); r.CapBnd != own {
		t.Errorf("%s: privileged container's bounding set %s, want the test's %s", pod.Name, r.CapBnd, own)
	}
	// Written on the node, seen from the test.
	b, err := os.ReadFile(filepath.Join(c.NodeRoot(pod.Spec.NodeName), "var/lib/kubetest", pod.Name))
	if err != nil || string(b) != "ran on "+pod.Spec.NodeName {
		t.Errorf("%s: hostPath file on the node: %q, %v", pod.Name, b, err)
	}
}

// checkerDaemonSet runs podcheck with every kind of env and volume.
func checkerDaemonSet(ns string) *appsv1.DaemonSet {
	labels := map[string]string{"app": "checker"}
	field := func(p string) *corev1.EnvVarSource {
		return &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: p}}
	}
	ref := func(name string) corev1.LocalObjectReference { return corev1.LocalObjectReference{Name: name} }
	mode := func(m int32) *int32 { return &m }
	dirOrCreate := corev1.HostPathDirectoryOrCreate
	bidi, h2c := corev1.MountPropagationBidirectional, corev1.MountPropagationHostToContainer
	mem := resource.MustParse("16Mi")
	return &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Name: "checker", Namespace: ns},
		Spec: appsv1.DaemonSetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels, Annotations: map[string]string{"note": "hello"}},
				Spec: corev1.PodSpec{
					ServiceAccountName:            "checker",
					TerminationGracePeriodSeconds: ptr(int64(5)),
					Containers: []corev1.Container{{
						Name:       "main",
						Image:      "podcheck:test",
						Command:    []string{"/usr/bin/podcheck"},
						WorkingDir: "/work",
						Args: []string{
							"-listen", "-api", ns + "/target", "-mode-file", "/data/host/mode",
							"-ls", "/etc/cfg", "-ls", "/etc/a.txt", "-ls", "/etc/sec", "-ls", "/etc/podinfo", "-ls", "/etc/proj",
							"-ls", saMountPath, "-ls", "/data/host", "-ls", "/scratch",
							"-write", "/data/host/$(POD_NAME)=ran on $(NODE_NAME)", "-write", "/scratch/seen=$(POD_NAME)",
							"-write", "/cache/mem/x=1",
							"-write-fails", "/etc/cfg/new", "-write-fails", "/data/ro/x",
							"-mount-tmpfs", "/shared/mnt",
						},
						Env: []corev1.EnvVar{
							{Name: "POD_NAME", ValueFrom: field("metadata.name")},
							{Name: "POD_NAMESPACE", ValueFrom: field("metadata.namespace")},
							{Name: "POD_UID", ValueFrom: field("metadata.uid")},
							{Name: "POD_IP", ValueFrom: field("status.podIP")},
							{Name: "HOST_IP", ValueFrom: field("status.hostIP")},
							{Name: "NODE_NAME", ValueFrom: field("spec.nodeName")},
							{Name: "SA_NAME", ValueFrom: field("spec.serviceAccountName")},
							{Name: "APP", ValueFrom: field("metadata.labels['app']")},
							{Name: "NOTE", ValueFrom: field("metadata.annotations['note']")},
							{Name: "CPU_LIMIT_M", ValueFrom: &corev1.EnvVarSource{ResourceFieldRef: &corev1.ResourceFieldSelector{Resource: "limits.cpu", Divisor: resource.MustParse("1m")}}},
							{Name: "MEM_REQUEST_MI", ValueFrom: &corev1.EnvVarSource{ResourceFieldRef: &corev1.ResourceFieldSelector{Resource: "requests.memory", Divisor: resource.MustParse("1Mi")}}},
							{Name: "CM_A", ValueFrom: &corev1.EnvVarSource{ConfigMapKeyRef: &corev1.ConfigMapKeySelector{LocalObjectReference: ref("cfg"), Key: "A"}}},
							{Name: "SEC_PW", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: ref("sec"), Key: "PASSWORD"}}},
							{Name: "OPTIONAL", ValueFrom: &corev1.EnvVarSource{ConfigMapKeyRef: &corev1.ConfigMapKeySelector{LocalObjectReference: ref("cfg"), Key: "nope", Optional: ptr(true)}}},
							{Name: "COMPOSED", Value: "$(POD_NAME)@$(NODE_NAME)"},
							{Name: "ESCAPED", Value: "$$(POD_NAME)"},
						},
						EnvFrom: []corev1.EnvFromSource{
							{Prefix: "CFG_", ConfigMapRef: &corev1.ConfigMapEnvSource{LocalObjectReference: ref("cfg")}},
							{SecretRef: &corev1.SecretEnvSource{LocalObjectReference: ref("sec")}},
						},
						Resources: corev1.ResourceRequirements{
							Limits:   corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("500m"), corev1.ResourceMemory: resource.MustParse("128Mi")},
							Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("250m"), corev1.ResourceMemory: resource.MustParse("64Mi")},
						},
						SecurityContext: &corev1.SecurityContext{Privileged: ptr(true)},
						VolumeMounts: []corev1.VolumeMount{
							{Name: "cfg", MountPath: "/etc/cfg"},
							{Name: "cfg", MountPath: "/etc/a.txt", SubPath: "A"},
							{Name: "sec", MountPath: "/etc/sec"},
							{Name: "podinfo", MountPath: "/etc/podinfo"},
							{Name: "proj", MountPath: "/etc/proj"},
							{Name: "scratch", MountPath: "/scratch"},
							{Name: "mem", MountPath: "/cache/mem"},
							{Name: "host", MountPath: "/data/host"},
							{Name: "host", MountPath: "/data/ro", SubPath: "ro", ReadOnly: true},
							{Name: "shared", MountPath: "/shared", MountPropagation: &bidi},
						},
					}, {
						Name:    "side",
						Image:   "podcheck:test",
						Command: []string{"/usr/bin/podcheck", "-ls", "/shared", "-mount-fails", "/tmp/m"},
						SecurityContext: &corev1.SecurityContext{
							RunAsUser:    ptr(int64(1000)),
							Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}, Add: []corev1.Capability{"NET_BIND_SERVICE"}},
						},
						VolumeMounts: []corev1.VolumeMount{{Name: "shared", MountPath: "/shared", MountPropagation: &h2c}},
					}},
					Volumes: []corev1.Volume{
						{Name: "cfg", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: ref("cfg")}}},
						{Name: "sec", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "sec", DefaultMode: mode(0o400)}}},
						{Name: "podinfo", VolumeSource: corev1.VolumeSource{DownwardAPI: &corev1.DownwardAPIVolumeSource{Items: []corev1.DownwardAPIVolumeFile{
							{Path: "name", FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}},
							{Path: "labels", FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.labels"}},
							{Path: "cpu", ResourceFieldRef: &corev1.ResourceFieldSelector{ContainerName: "main", Resource: "limits.cpu", Divisor: resource.MustParse("1m")}},
						}}}},
						{Name: "proj", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{DefaultMode: mode(0o600), Sources: []corev1.VolumeProjection{
							{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Path: "token", Audience: "granary", ExpirationSeconds: ptr(int64(600))}},
							{ConfigMap: &corev1.ConfigMapProjection{LocalObjectReference: ref("cfg"), Items: []corev1.KeyToPath{{Key: "B", Path: "b"}}}},
							{DownwardAPI: &corev1.DownwardAPIProjection{Items: []corev1.DownwardAPIVolumeFile{{Path: "ns", FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.namespace"}}}}},
						}}}},
						{Name: "scratch", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
						{Name: "mem", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{Medium: corev1.StorageMediumMemory, SizeLimit: &mem}}},
						{Name: "host", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/var/lib/kubetest", Type: &dirOrCreate}}},
						{Name: "shared", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/var/lib/kubetest-shared", Type: &dirOrCreate}}},
					},
				},
			},
		},
	}
}
