package kubetest

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/granary-cache/granary/internal/netnstest"
)

// Options say what Start starts.
type Options struct {
	// CRDDirs are directories (or files) of CustomResourceDefinition YAML
	// to install; each must exist.
	CRDDirs []string
	// Nodes is the number of kwok nodes Start creates: node-1 ... node-N.
	Nodes int
	// NodeLabels are extra labels of those nodes.
	NodeLabels map[string]string
	// NodeCapacity is the capacity (and allocatable) of the nodes AddNode
	// makes: by default 16 CPUs, 64Gi of memory, 500Gi of ephemeral
	// storage and 110 pods.
	NodeCapacity corev1.ResourceList
	// Scheme is the controller-runtime client's scheme: by default
	// client-go's with apiextensions/v1.
	Scheme *runtime.Scheme
	// Controllers are kube-controller-manager's --controllers; by default
	// DefaultControllers.
	Controllers []string
	// HostPaths are the paths that hostPath volumes reach on this machine
	// itself rather than under the node's root (NodeRoot): /dev, /sys and
	// /proc by default.
	HostPaths []string
	// VolumeResync is how often running pods' configMap, secret,
	// downwardAPI and projected volumes are brought up to date, and their
	// pods checked for deletion: every second by default.
	VolumeResync time.Duration
	// Verbosity is the -v of the components' logs (2 by default).
	Verbosity int
}

// DefaultControllers are the kube-controller-manager controllers Start
// runs: the workload controllers, garbage collection, namespaces, service
// accounts and their root CA, aggregated cluster roles, nodes (and taint
// eviction), endpoints, disruption budgets and the PV and PVC protection
// finalizers. Not the PV binder: kwok binds claims.
var DefaultControllers = []string{
	"daemonset-controller", "statefulset-controller", "deployment-controller", "replicaset-controller",
	"job-controller", "cronjob-controller", "ttl-after-finished-controller", "garbage-collector-controller",
	"serviceaccount-controller", "root-ca-certificate-publisher-controller", "namespace-controller",
	"clusterrole-aggregation-controller", "node-lifecycle-controller", "taint-eviction-controller",
	"pod-garbage-collector-controller", "endpoints-controller", "endpointslice-controller", "disruption-controller",
	"persistentvolume-protection-controller", "persistentvolumeclaim-protection-controller",
}

// Cluster is a running control plane with kwok nodes.
type Cluster struct {
	Config     *rest.Config // admin (system:masters)
	Kubeconfig string       // admin kubeconfig file, for kubectl, helm, granary
	Client     client.Client
	Clientset  kubernetes.Interface
	Scheme     *runtime.Scheme
	// Host is the API server's URL: https://127.0.0.1:PORT.
	Host string
	// CAFile holds the CA of the API server's certificate (also what pods
	// get as ca.crt).
	CAFile string
	// Dir holds everything of the cluster: logs, node roots, pods.
	Dir string

	bin               binaries
	env               *envtest.Environment
	apiserverHostPort string
	capacity          corev1.ResourceList
	hostPaths         []string
	resync            time.Duration
	block             int               // of loopback addresses
	logs              map[string]string // component -> log file

	mu        sync.Mutex
	nodeCount int
	nodeRoots map[string]string
	nodesBase bool
	pods      map[types.UID]*podState
}

// Required reports whether tests must fail rather than skip when binaries
// are missing ($GRANARY_REQUIRE_SERVERS, as test/lib.sh sets it).
func Required() bool { return os.Getenv("GRANARY_REQUIRE_SERVERS") != "" }

// Start starts a control plane for a test and stops it when the test ends:
// etcd and kube-apiserver (envtest, RBAC on, ServiceAccount admission on),
// the CRDs of o.CRDDirs, kube-controller-manager, kube-scheduler and kwok,
// then o.Nodes nodes. It skips the test when a binary is missing, unless
// Required.
func Start(t testing.TB, o Options) *Cluster {
	t.Helper()
	bin, err := findBinaries()
	if err != nil {
		if Required() {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	began := time.Now()
	c := &Cluster{
		Dir: t.TempDir(), bin: bin, logs: map[string]string{},
		nodeRoots: map[string]string{}, pods: map[types.UID]*podState{},
		hostPaths: o.HostPaths, resync: o.VolumeResync, capacity: o.NodeCapacity, Scheme: o.Scheme,
	}
	if c.hostPaths == nil {
		c.hostPaths = []string{"/dev", "/sys", "/proc"}
	}
	if c.resync == 0 {
		c.resync = time.Second
	}
	if c.capacity == nil {
		c.capacity = defaultCapacity()
	}
	if c.Scheme == nil {
		c.Scheme = runtime.NewScheme()
		if err := clientgoscheme.AddToScheme(c.Scheme); err != nil {
			t.Fatal(err)
		}
		if err := apiextensionsv1.AddToScheme(c.Scheme); err != nil {
			t.Fatal(err)
		}
	}
	if o.Verbosity == 0 {
		o.Verbosity = 2
	}
	block, release, err := reserveBlock()
	if err != nil {
		t.Fatal(err)
	}
	c.block = block
	t.Cleanup(release)
	t.Cleanup(func() {
		if t.Failed() {
			c.dumpLogs(t)
		}
	})
	if err := c.startAPIServer(t, o); err != nil {
		t.Fatal(err)
	}
	// Stopped after everything that watches it (cleanups run last first).
	t.Cleanup(func() {
		if err := c.env.Stop(); err != nil {
			t.Errorf("stop envtest: %v", err)
		}
	})
	t.Cleanup(func() {
		if err := c.unmountAll(); err != nil {
			t.Errorf("unmount: %v", err)
		}
	})
	if err := c.startComponents(t, o); err != nil {
		t.Fatal(err)
	}
	// The controller manager runs once the default namespace has its
	// service account and root CA.
	c.WaitFor(t, 60*time.Second, "controller-manager: default service account and kube-root-ca.crt", func() (bool, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if _, err := c.Clientset.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{}); err != nil {
			return false, err
		}
		_, err := c.Clientset.CoreV1().ConfigMaps("default").Get(ctx, "kube-root-ca.crt", metav1.GetOptions{})
		return err == nil, err
	})
	if err := c.createStorageClass(); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= o.Nodes; i++ {
		c.AddNode(t, fmt.Sprintf("node-%d", i), o.NodeLabels)
	}
	t.Logf("kubetest: cluster at %s with %d nodes started in %v", c.Host, o.Nodes, time.Since(began).Round(time.Millisecond))
	return c
}

func (c *Cluster) startAPIServer(t testing.TB, o Options) error {
	// envtest takes its binaries from a directory: links to ours.
	assets := filepath.Join(c.Dir, "assets")
	if err := os.MkdirAll(assets, 0o755); err != nil {
		return err
	}
	for name, target := range map[string]string{"kube-apiserver": c.bin.apiserver, "etcd": c.bin.etcd} {
		if err := os.Symlink(target, filepath.Join(assets, name)); err != nil {
			return err
		}
	}
	apiLog, err := c.logFile("kube-apiserver")
	if err != nil {
		return err
	}
	etcdLog, err := c.logFile("etcd")
	if err != nil {
		return err
	}
	t.Cleanup(func() { apiLog.Close(); etcdLog.Close() })
	env := &envtest.Environment{
		BinaryAssetsDirectory:    assets,
		CRDDirectoryPaths:        o.CRDDirs,
		ErrorIfCRDPathMissing:    true,
		Scheme:                   c.Scheme,
		ControlPlaneStartTimeout: 90 * time.Second,
		ControlPlaneStopTimeout:  60 * time.Second,
	}
	env.DownloadBinaryAssets = false
	api := env.ControlPlane.GetAPIServer()
	api.Out, api.Err = apiLog, apiLog
	// envtest turns the ServiceAccount admission plugin off; the
	// controller manager makes the service accounts it needs, so pods get
	// their kube-api-access volume as in a real cluster.
	api.Configure().Disable("disable-admission-plugins")
	api.Configure().Set("v", "1")
	etcd := env.ControlPlane.Etcd
	if etcd == nil {
		etcd = &envtest.Etcd{}
		env.ControlPlane.Etcd = etcd
	}
	etcd.Out, etcd.Err = etcdLog, etcdLog
	cfg, err := env.Start()
	if err != nil {
		// envtest stops what it started when Start fails part way only in
		// some cases: stop explicitly.
		env.Stop()
		return fmt.Errorf("start envtest (kube-apiserver %s, etcd %s): %w", c.bin.apiserver, c.bin.etcd, err)
	}
	c.env = env
	c.Config = cfg
	u, err := url.Parse(cfg.Host)
	if err != nil {
		return err
	}
	if u.Scheme == "" { // a bare HOST:PORT
		u, err = url.Parse("https://" + cfg.Host)
		if err != nil {
			return err
		}
	}
	c.Host = "https://" + u.Host
	c.apiserverHostPort = u.Host
	c.CAFile = filepath.Join(c.Dir, "ca.crt")
	if err := os.WriteFile(c.CAFile, api.SecureServing.CA, 0o644); err != nil {
		return err
	}
	c.Kubeconfig = filepath.Join(c.Dir, "kubeconfig")
	if err := os.WriteFile(c.Kubeconfig, env.KubeConfig, 0o600); err != nil {
		return err
	}
	if c.Clientset, err = kubernetes.NewForConfig(cfg); err != nil {
		return err
	}
	if c.Client, err = client.New(cfg, client.Options{Scheme: c.Scheme}); err != nil {
		return err
	}
	return nil
}

// startComponents starts kube-controller-manager, kube-scheduler and kwok,
// each stopped by PID when the test ends, before the API server.
func (c *Cluster) startComponents(t testing.TB, o Options) error {
	controllers := o.Controllers
	if controllers == nil {
		controllers = DefaultControllers
	}
	v := fmt.Sprintf("-v=%d", o.Verbosity)
	fallbackCIDR, fallbackIP := fallbackAddresses(c.block)
	stages, err := kwokStages(c.bin.stages)
	if err != nil {
		return err
	}
	stagesFile := filepath.Join(c.Dir, "kwok-stages.yaml")
	if err := os.WriteFile(stagesFile, []byte(stages), 0o644); err != nil {
		return err
	}
	cmds := []struct {
		name string
		args []string
	}{
		{c.bin.kcm, []string{
			"--kubeconfig=" + c.Kubeconfig,
			"--authentication-kubeconfig=" + c.Kubeconfig,
			"--authorization-kubeconfig=" + c.Kubeconfig,
			"--controllers=" + strings.Join(controllers, ","),
			"--leader-elect=false",
			"--secure-port=0",
			"--root-ca-file=" + c.CAFile,
			"--use-service-account-credentials=false",
			// Mirror the kwok nodes' leases quickly, and never evict.
			"--node-monitor-period=1s",
			v,
		}},
		{c.bin.scheduler, []string{
			"--kubeconfig=" + c.Kubeconfig,
			"--authentication-kubeconfig=" + c.Kubeconfig,
			"--authorization-kubeconfig=" + c.Kubeconfig,
			"--leader-elect=false",
			"--secure-port=0",
			v,
		}},
		{c.bin.kwok, []string{
			"--kubeconfig=" + c.Kubeconfig,
			"--manage-all-nodes=true",
			"--config=" + stagesFile,
			// Node Leases are the heartbeat the node-lifecycle controller
			// reads: without them (kwok holds none when its config file has
			// only stages) the nodes turn NotReady after its grace period.
			"--node-lease-duration-seconds=40",
			// Nodes that AddNode did not make share this pool of pod IPs
			// (AddNode gives each node a podCIDR of its own).
			"--cidr=" + fallbackCIDR,
			"--node-ip=" + fallbackIP,
			// No server (it would serve logs and exec of the fake kubelets
			// on a fixed port, which parallel tests would fight over).
			"--server-address=",
			"--node-port=0",
		}},
	}
	for _, cmd := range cmds {
		name := filepath.Base(cmd.name)
		f, err := c.logFile(name)
		if err != nil {
			return err
		}
		ec := exec.Command(cmd.name, cmd.args...)
		ec.Stdout, ec.Stderr = f, f
		p, err := netnstest.Spawn(ec)
		if err != nil {
			f.Close()
			return err
		}
		t.Cleanup(func() {
			select {
			case <-p.Done():
				t.Errorf("%s exited before the test ended", name)
			default:
			}
			p.Stop()
			f.Close()
		})
	}
	return nil
}

// StorageClass is the name of the default storage class: kwok binds its
// claims to hostPath volumes, which RunPod maps to directories of the
// cluster (see the package documentation).
const StorageClass = "kwok-volume"

func (c *Cluster) createStorageClass() error {
	bind := storagev1.VolumeBindingImmediate
	reclaim := corev1.PersistentVolumeReclaimDelete
	sc := &storagev1.StorageClass{
		ObjectMeta: metav1.ObjectMeta{
			Name:        StorageClass,
			Annotations: map[string]string{"storageclass.kubernetes.io/is-default-class": "true"},
		},
		Provisioner:       "kwok.x-k8s.io/volume",
		ReclaimPolicy:     &reclaim,
		VolumeBindingMode: &bind,
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := c.Clientset.StorageV1().StorageClasses().Create(ctx, sc, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("storage class %s: %w", StorageClass, err)
	}
	return nil
}

func (c *Cluster) logFile(name string) (*os.File, error) {
	dir := filepath.Join(c.Dir, "logs")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	p := filepath.Join(dir, name+".log")
	c.logs[name] = p
	return os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
}

// dumpLogs shows the end of each component's log.
func (c *Cluster) dumpLogs(t testing.TB) {
	for _, name := range sortedKeys(c.logs) {
		b, err := os.ReadFile(c.logs[name])
		if err != nil {
			continue
		}
		t.Logf("=== %s log (last lines of %s):\n%s", name, c.logs[name], tail(string(b), 60))
	}
}

// WaitFor polls cond every 100 ms until it returns true, and fails the test
// when it has not within timeout, with the last error cond returned.
func (c *Cluster) WaitFor(t testing.TB, timeout time.Duration, what string, cond func() (bool, error)) {
	t.Helper()
	if err := poll(timeout, cond); err != nil {
		t.Fatalf("waiting for %s: %v", what, err)
	}
}

func poll(timeout time.Duration, cond func() (bool, error)) error {
	deadline := time.Now().Add(timeout)
	var last error
	for {
		ok, err := cond()
		if ok {
			return nil
		}
		if err != nil {
			last = err
		}
		if time.Now().After(deadline) {
			if last != nil {
				return fmt.Errorf("not within %v: last error: %w", timeout, last)
			}
			return fmt.Errorf("not within %v", timeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Kubectl runs kubectl with the admin kubeconfig and returns its stdout;
// the error includes its stderr. It is bounded by 2 minutes.
func (c *Cluster) Kubectl(t testing.TB, args ...string) (string, error) {
	t.Helper()
	if c.bin.kubectl == "" {
		err := errors.New("kubectl not found (GRANARY_KUBE_BIN)")
		if Required() {
			t.Fatal(err)
		}
		return "", err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, c.bin.kubectl, append([]string{"--kubeconfig=" + c.Kubeconfig}, args...)...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, stderr.String())
	}
	return string(out), nil
}

// Bin returns the path of a tool of GRANARY_KUBE_BIN (e.g. "helm"), or ""
// when it is missing.
func (c *Cluster) Bin(name string) string {
	if c.bin.dir != "" {
		p := filepath.Join(c.bin.dir, name)
		if _, err := os.Stat(p); err == nil {
			return p
		}
		return ""
	}
	p, _ := exec.LookPath(name)
	return p
}

// binaries are the programs a cluster runs.
type binaries struct {
	dir                                      string
	apiserver, kcm, scheduler, kwok, kubectl string
	etcd                                     string
	stages                                   string // kwok's stage directory
}

// findBinaries finds the programs in $GRANARY_KUBE_BIN (else $PATH), etcd
// in $GRANARY_ETCD (else $PATH), kwok's stages in $GRANARY_KWOK_STAGES.
func findBinaries() (binaries, error) {
	var b binaries
	var missing []string
	b.dir = os.Getenv("GRANARY_KUBE_BIN")
	find := func(name string, required bool) string {
		if b.dir != "" {
			p := filepath.Join(b.dir, name)
			if st, err := os.Stat(p); err == nil && !st.IsDir() {
				return p
			}
		} else if p, err := exec.LookPath(name); err == nil {
			return p
		}
		if required {
			missing = append(missing, name)
		}
		return ""
	}
	b.apiserver = find("kube-apiserver", true)
	b.kcm = find("kube-controller-manager", true)
	b.scheduler = find("kube-scheduler", true)
	b.kwok = find("kwok", true)
	b.kubectl = find("kubectl", false)
	if b.etcd = os.Getenv("GRANARY_ETCD"); b.etcd == "" {
		if p, err := exec.LookPath("etcd"); err == nil {
			b.etcd = p
		} else {
			missing = append(missing, "etcd")
		}
	}
	b.stages = os.Getenv("GRANARY_KWOK_STAGES")
	if st, err := os.Stat(b.stages); b.stages == "" || err != nil || !st.IsDir() {
		missing = append(missing, "kwok stages ($GRANARY_KWOK_STAGES)")
	}
	if len(missing) > 0 {
		return b, fmt.Errorf("kubetest: missing %s: run test/run.sh, or `source test/lib.sh; install_test_deps` "+
			"(it builds them into .cache/bin and exports GRANARY_KUBE_BIN, GRANARY_ETCD and GRANARY_KWOK_STAGES)",
			strings.Join(missing, ", "))
	}
	return b, nil
}

func defaultCapacity() corev1.ResourceList {
	return corev1.ResourceList{
		corev1.ResourceCPU:              mustQuantity("16"),
		corev1.ResourceMemory:           mustQuantity("64Gi"),
		corev1.ResourceEphemeralStorage: mustQuantity("500Gi"),
		corev1.ResourcePods:             mustQuantity("110"),
	}
}
