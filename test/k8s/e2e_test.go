package k8s

import (
	"context"
	"crypto/sha256"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/granary-cache/granary/api/v1alpha1"
	"github.com/granary-cache/granary/internal/granarytest"
	"github.com/granary-cache/granary/internal/kubetest"
	"github.com/granary-cache/granary/internal/operator"
	"github.com/granary-cache/granary/internal/promtest"
	"github.com/granary-cache/granary/internal/s3test"
)

// The end-to-end test: a real control plane (kube-apiserver, controller
// manager, scheduler, kwok nodes), the operator as a process, and every pod
// it makes run for real from the pod spec the operator rendered (command,
// args, env, the ConfigMap's and Secrets' files, volumes): the workers find
// each other through their Leases, a Dataset over a real S3 server becomes
// Ready, a DataLoad's Job loads it with its progress in the DataLoad's
// status, and a mount made from the rendered configuration reads it without
// costing the UFS a request.

var (
	buildOnce sync.Once
	built     string
	buildErr  error
)

// granaryBinary builds the static granary binary once per test binary.
func granaryBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "granary-k8s")
		if err != nil {
			buildErr = err
			return
		}
		built, buildErr = granarytest.Build(dir)
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return built
}

// imageRoot is what granary's image holds: the static binary and CA
// certificates.
func imageRoot(t *testing.T, bin string) string {
	root := t.TempDir()
	for _, d := range []string{"usr/bin", "etc/ssl/certs", "tmp"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	copyFile(t, bin, filepath.Join(root, "usr/bin/granary"), 0o755)
	if _, err := os.Stat("/etc/ssl/certs/ca-certificates.crt"); err == nil {
		copyFile(t, "/etc/ssl/certs/ca-certificates.crt", filepath.Join(root, "etc/ssl/certs/ca-certificates.crt"), 0o644)
	}
	os.WriteFile(filepath.Join(root, "etc/passwd"), []byte("root:x:0:0:root:/root:/sbin/nologin\n"), 0o644)
	return root
}

func copyFile(t *testing.T, from, to string, mode os.FileMode) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, mode); err != nil {
		t.Fatal(err)
	}
}

func freeAddr(t *testing.T) string { return granarytest.FreeAddr(t) }

// startProcess runs a command until the test ends, its output in a file
// shown if the test fails.
func startProcess(t *testing.T, name string, env []string, argv ...string) *exec.Cmd {
	t.Helper()
	logPath := filepath.Join(t.TempDir(), name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); f.Close(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("%s log:\n%s", name, tail(string(b), 60))
		}
	})
	return cmd
}

func tail(s string, lines int) string {
	parts := strings.Split(s, "\n")
	if len(parts) > lines {
		parts = parts[len(parts)-lines:]
	}
	return strings.Join(parts, "\n")
}

// startCluster starts a control plane with 3 cache nodes and granary's CRDs.
func startCluster(t *testing.T) *kubetest.Cluster {
	t.Helper()
	s := operator.Scheme()
	if err := apiextensionsv1.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	return kubetest.Start(t, kubetest.Options{CRDDirs: []string{"../../charts/granary/crds"}, Nodes: 3,
		NodeLabels: map[string]string{"granary.io/cache": "true"}, Scheme: s})
}

const e2eManifest = `apiVersion: v1
kind: Secret
metadata: {name: s3-keys, namespace: ml}
stringData: {id: %q, secret: %q}
---
apiVersion: granary.io/v1alpha1
kind: Dataset
metadata: {name: imagenet, namespace: ml}
spec:
  ufs: s3://train/imagenet
  options: {endpoint: %q, path_style: "true"}
  secretOptions:
    - {name: access_key, valueFrom: {secretKeyRef: {name: s3-keys, key: id}}}
    - {name: secret_key, valueFrom: {secretKeyRef: {name: s3-keys, key: secret}}}
---
apiVersion: granary.io/v1alpha1
kind: CacheRuntime
metadata: {name: train, namespace: ml}
spec:
  datasets: [imagenet]
  blockSize: 1Mi
  leaseDurationSeconds: 6
  worker:
    nodeSelector: {granary.io/cache: "true"}
  tiers:
    - {name: MEM, medium: Memory, quota: 64Mi}
    - {name: SSD, medium: HostPath, path: /mnt/nvme, quota: 256Mi}
`

const e2eLoad = `apiVersion: granary.io/v1alpha1
kind: DataLoad
metadata: {name: warm, namespace: ml}
spec:
  dataset: imagenet
`

func TestDatasetToMountEndToEnd(t *testing.T) {
	bin := granaryBinary(t)
	srv := s3test.Start(t)
	bg := context.Background()
	if err := srv.CreateBucket(bg, "train"); err != nil {
		t.Fatal(err)
	}
	// The dataset: 60 files of 1 KiB to 1.5 MiB in three directories.
	rng := rand.New(rand.NewPCG(7, 11))
	files := map[string][]byte{}
	var total int64
	for i := range 60 {
		data := make([]byte, 1024+rng.IntN(3<<19))
		for j := range data {
			data[j] = byte(rng.Uint32())
		}
		name := fmt.Sprintf("%s/%05d.jpg", []string{"train/a", "train/b", "val"}[i%3], i)
		files[name] = data
		total += int64(len(data))
		if err := srv.Put(bg, "train", "imagenet/"+name, data); err != nil {
			t.Fatal(err)
		}
	}

	c := startCluster(t)
	t.Cleanup(func() {
		if t.Failed() {
			out, err := c.Kubectl(t, "get", "all,cacheruntimes,datasets,dataloads,leases,events", "-n", "ml", "-o", "wide")
			t.Logf("the namespace when the test failed (%v):\n%s", err, out)
		}
	})
	root := imageRoot(t, bin)
	opAddr, opHealth := freeAddr(t), freeAddr(t)
	startProcess(t, "operator", nil, bin, "operator", "--kubeconfig", c.Kubeconfig, "--worker-image", "granary:test",
		"--metrics-addr", opAddr, "--health-addr", opHealth)
	if _, err := c.Kubectl(t, "create", "namespace", "ml"); err != nil {
		t.Fatal(err)
	}
	manifest := filepath.Join(t.TempDir(), "dataset.yaml")
	os.WriteFile(manifest, fmt.Appendf(nil, e2eManifest, s3test.AccessKey, s3test.SecretKey, srv.Endpoint), 0o644)

	// Apply, then act as the kubelets: run each worker pod kwok binds.
	applied := time.Now()
	if out, err := c.Kubectl(t, "apply", "-f", manifest); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	kubelet := newKubelet(t, c, root)
	var ds v1alpha1.Dataset
	c.WaitFor(t, 90*time.Second, "the Dataset Ready with 3 live workers", func() (bool, error) {
		if err := kubelet.runPods(client.MatchingLabels{v1alpha1.LabelRuntime: "train"}); err != nil {
			return false, err
		}
		err := c.Client.Get(bg, types.NamespacedName{Namespace: "ml", Name: "imagenet"}, &ds)
		return err == nil && ds.Status.Phase == v1alpha1.DatasetReady && ds.Status.Workers == 3, err
	})
	t.Logf("FIGURE apply to Ready with 3 workers: %v", time.Since(applied).Round(100*time.Millisecond))
	var rt v1alpha1.CacheRuntime
	c.WaitFor(t, time.Minute, "the CacheRuntime Ready", func() (bool, error) {
		err := c.Client.Get(bg, types.NamespacedName{Namespace: "ml", Name: "train"}, &rt)
		return err == nil && rt.Status.Phase == v1alpha1.RuntimeReady && rt.Status.Members == 3, err
	})
	if want := int64(3 * (64 + 256) << 20); rt.Status.CapacityBytes != want {
		t.Errorf("runtime capacity %d, want %d (3 workers of 64 MiB + 256 MiB)", rt.Status.CapacityBytes, want)
	}
	// The UFS size is measured in the background and reaches the status.
	c.WaitFor(t, time.Minute, "the dataset's UFS size in its status", func() (bool, error) {
		err := c.Client.Get(bg, types.NamespacedName{Namespace: "ml", Name: "imagenet"}, &ds)
		return err == nil && ds.Status.UFSBytes == total && ds.Status.Files == int64(len(files)), err
	})

	// Warm it with a DataLoad: its Job runs `granary load`, which writes
	// its progress into the DataLoad's status.
	loadManifest := filepath.Join(t.TempDir(), "load.yaml")
	os.WriteFile(loadManifest, []byte(e2eLoad), 0o644)
	if out, err := c.Kubectl(t, "apply", "-f", loadManifest); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	var dl v1alpha1.DataLoad
	c.WaitFor(t, 2*time.Minute, "the DataLoad Complete at 100%", func() (bool, error) {
		if err := kubelet.runPods(client.MatchingLabels{v1alpha1.LabelDataLoad: "warm"}); err != nil {
			return false, err
		}
		err := c.Client.Get(bg, types.NamespacedName{Namespace: "ml", Name: "warm"}, &dl)
		return err == nil && dl.Status.Phase == v1alpha1.LoadComplete, err
	})
	st := dl.Status
	if st.Progress != "100.0%" || st.FilesDone != int64(len(files)) || st.FilesTotal != int64(len(files)) || st.BytesTotal != total ||
		st.StartTime == nil || st.CompletionTime == nil || st.FailureCount != 0 {
		t.Errorf("DataLoad status %+v: want 100%% of %d files and %d bytes, with start and completion times", st, len(files), total)
	}
	c.WaitFor(t, time.Minute, "the dataset 100% cached in its status", func() (bool, error) {
		err := c.Client.Get(bg, types.NamespacedName{Namespace: "ml", Name: "imagenet"}, &ds)
		return err == nil && ds.Status.CachedBytes == total && ds.Status.CachedPercentage == "100.0%", err
	})

	// kubectl shows the columns.
	out, err := c.Kubectl(t, "get", "dataset", "-n", "ml")
	if err != nil {
		t.Fatal(err)
	}
	checkColumns(t, out, []string{"NAME", "UFS TOTAL SIZE", "CACHED", "CACHE CAPACITY", "CACHED PERCENTAGE", "PHASE", "AGE"},
		[]string{"imagenet", ds.Status.UFSTotal, ds.Status.Cached, ds.Status.CacheCapacity, "100.0%", "Ready"})
	out, err = c.Kubectl(t, "get", "dataset", "-n", "ml", "-o", "wide")
	if err != nil {
		t.Fatal(err)
	}
	checkColumns(t, out, []string{"NAME", "UFS TOTAL SIZE", "CACHED", "CACHE CAPACITY", "CACHED PERCENTAGE", "PHASE", "FILES", "HIT RATIO", "AGE"},
		[]string{"imagenet", ds.Status.UFSTotal, ds.Status.Cached, ds.Status.CacheCapacity, "100.0%", "Ready", fmt.Sprint(len(files))})
	t.Logf("kubectl get dataset -o wide:\n%s", out)

	// A mount made from the rendered configuration reads every file, and
	// the UFS sees nothing of it.
	workers := kubelet.workerAdmins(t)
	before := sumMetric(t, workers, "granary_ufs_operations_total")
	mnt := mountRendered(t, c, bin)
	for name, want := range files {
		got, err := os.ReadFile(filepath.Join(mnt, "imagenet", name))
		if err != nil {
			t.Fatal(err)
		}
		if sha256.Sum256(got) != sha256.Sum256(want) {
			t.Fatalf("%s: content differs through the mount", name)
		}
	}
	if after := sumMetric(t, workers, "granary_ufs_operations_total"); after != before {
		var by []string
		for _, op := range []string{"stat", "list", "read"} {
			by = append(by, fmt.Sprintf("%s %v", op, sumMetric(t, workers, "granary_ufs_operations_total", `op="`+op+`"`)))
		}
		t.Errorf("reading the warm dataset through the mount cost the UFS %v operations, want 0 (totals now: %s)", after-before, strings.Join(by, ", "))
	}

	// API requests of a steady cluster: the workers' Lease renewals and the
	// operator's own, over 20 s.
	wBefore := sumMetric(t, workers, "granary_membership_requests_total")
	oBefore := scrape(t, "http://"+opAddr+"/metrics", "rest_client_requests_total")
	time.Sleep(20 * time.Second)
	wAfter := sumMetric(t, workers, "granary_membership_requests_total")
	oAfter := scrape(t, "http://"+opAddr+"/metrics", "rest_client_requests_total")
	t.Logf("FIGURE steady API requests per minute: 3 workers %.0f (%.1f each), operator %.0f",
		3*(wAfter-wBefore), (wAfter - wBefore), 3*(oAfter-oBefore))
	if perWorker := 3 * (wAfter - wBefore) / 3; perWorker > 60 {
		t.Errorf("each worker made %.0f requests a minute; its Lease design allows about 30 (a renewal every 2 s at a 6 s lease)", perWorker)
	}
}

// checkColumns checks a kubectl table's header and its first row.
func checkColumns(t *testing.T, out string, header, values []string) {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) < 2 {
		t.Fatalf("kubectl printed %q", out)
	}
	cols := regexp.MustCompile(`\s{2,}`).Split(strings.TrimSpace(lines[0]), -1)
	if strings.Join(cols, "|") != strings.Join(header, "|") {
		t.Errorf("columns %q, want %q", cols, header)
	}
	row := regexp.MustCompile(`\s{2,}`).Split(strings.TrimSpace(lines[1]), -1)
	for i, v := range values {
		if i >= len(row) || row[i] != v {
			t.Errorf("column %s is %q, want %q (row %q)", header[i], at(row, i), v, lines[1])
		}
	}
}

func at(s []string, i int) string {
	if i < len(s) {
		return s[i]
	}
	return ""
}

func scrape(t *testing.T, url, name string) float64 {
	t.Helper()
	v, err := promtest.Scrape(http.DefaultClient, url, name)
	if err != nil {
		t.Fatalf("scrape %s: %v", url, err)
	}
	return v
}

func sumMetric(t *testing.T, admins []string, name string, match ...string) float64 {
	var sum float64
	for _, a := range admins {
		v, err := promtest.Scrape(http.DefaultClient, "http://"+a+"/metrics", name, match...)
		if err != nil {
			t.Fatalf("scrape %s: %v", a, err)
		}
		sum += v
	}
	return sum
}

// mountRendered mounts the datasets with the configuration the operator
// rendered, reaching the workers' Leases with the admin kubeconfig and the
// runtime's token.
func mountRendered(t *testing.T, c *kubetest.Cluster, bin string) string {
	t.Helper()
	var cm corev1.ConfigMap
	var tok corev1.Secret
	bg := context.Background()
	if err := c.Client.Get(bg, types.NamespacedName{Namespace: "ml", Name: "train-config"}, &cm); err != nil {
		t.Fatal(err)
	}
	if err := c.Client.Get(bg, types.NamespacedName{Namespace: "ml", Name: "train-token"}, &tok); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "token")
	os.WriteFile(tokenFile, tok.Data["token"], 0o600)
	os.MkdirAll(filepath.Join(dir, "secrets/s3-keys"), 0o755)
	os.WriteFile(filepath.Join(dir, "secrets/s3-keys/id"), []byte(s3test.AccessKey), 0o600)
	os.WriteFile(filepath.Join(dir, "secrets/s3-keys/secret"), []byte(s3test.SecretKey), 0o600)
	text := cm.Data["granary.yaml"]
	text = strings.ReplaceAll(text, "/etc/granary/token/token", tokenFile)
	text = strings.ReplaceAll(text, "/etc/granary/secrets/", dir+"/secrets/")
	text = strings.Replace(text, "membership:\n", "membership:\n    kubeconfig: "+c.Kubeconfig+"\n", 1)
	cfg := filepath.Join(dir, "granary.yaml")
	os.WriteFile(cfg, []byte(text), 0o600)
	mnt := filepath.Join(dir, "mnt")
	os.MkdirAll(mnt, 0o755)
	startProcess(t, "mount", nil, bin, "mount", "--config", cfg, "--admin", freeAddr(t), "--log-level", "warn", mnt)
	c.WaitFor(t, 30*time.Second, "the mount", func() (bool, error) {
		entries, err := os.ReadDir(filepath.Join(mnt, "imagenet"))
		return err == nil && len(entries) > 0, nil
	})
	t.Cleanup(func() { exec.Command("fusermount3", "-u", "-z", mnt).Run() })
	return mnt
}

// kubelet runs the pods kwok binds, once each.
type kubelet struct {
	t     *testing.T
	c     *kubetest.Cluster
	root  string
	mu    sync.Mutex
	procs map[types.UID]*kubetest.Proc
	pods  map[types.UID]*corev1.Pod
}

func newKubelet(t *testing.T, c *kubetest.Cluster, root string) *kubelet {
	return &kubelet{t: t, c: c, root: root, procs: map[types.UID]*kubetest.Proc{}, pods: map[types.UID]*corev1.Pod{}}
}

// runPods starts the matching pods that have a node and an IP and are not
// running yet.
func (k *kubelet) runPods(sel client.MatchingLabels) error {
	var pods corev1.PodList
	if err := k.c.Client.List(context.Background(), &pods, client.InNamespace("ml"), sel); err != nil {
		return err
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	for i := range pods.Items {
		p := &pods.Items[i]
		if _, ok := k.procs[p.UID]; ok || p.Spec.NodeName == "" || p.Status.PodIP == "" || p.DeletionTimestamp != nil {
			continue
		}
		k.procs[p.UID] = kubetest.RunPod(k.t, k.c, p, kubetest.RunOptions{Rootfs: k.root})
		k.pods[p.UID] = p
	}
	return nil
}

// workerAdmins are the admin addresses of the running workers.
func (k *kubelet) workerAdmins(t *testing.T) []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	var out []string
	for uid, p := range k.pods {
		if p.Labels[v1alpha1.LabelComponent] != "worker" {
			continue
		}
		select {
		case <-k.procs[uid].Done():
			t.Fatalf("worker %s exited:\n%s", p.Name, k.procs[uid].Log())
		default:
		}
		out = append(out, net.JoinHostPort(p.Status.PodIP, "7421"))
	}
	if len(out) != 3 {
		t.Fatalf("%d workers running, want 3", len(out))
	}
	return out
}
