package kubetest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"golang.org/x/sys/unix"
)

// RunOptions say how RunPod runs a container.
type RunOptions struct {
	// Container is the name of the container (or init container) to run;
	// the pod's first container by default.
	Container string
	// Rootfs is the directory that stands for the container's image: the
	// container's root is an overlay with Rootfs as its read-only lower
	// layer (e.g. a directory with the static granary binary in /usr/bin
	// and CA certificates in /etc/ssl/certs). Required.
	Rootfs string
	// Entrypoint, Cmd, Env and WorkingDir are the image's configuration,
	// used as Kubernetes uses an image's: Entrypoint when the container
	// has no command, Cmd when it has neither command nor args, Env
	// overridden by the container's env, WorkingDir when it has none.
	Entrypoint []string
	Cmd        []string
	Env        []string
	WorkingDir string
	// StopGrace bounds how long Stop waits after SIGTERM before SIGKILL:
	// the pod's terminationGracePeriodSeconds, at most StopGrace (10 s by
	// default).
	StopGrace time.Duration
	// Timeout bounds the wait for the pod to have a node and an IP (kwok
	// gives them): 60 s by default.
	Timeout time.Duration
	// KeepOnDelete leaves the process running when the pod is deleted or
	// replaced; by default it is stopped then, as the kubelet would.
	KeepOnDelete bool
}

// RunPod runs a container of a pod (bound to a node and given an IP by
// kwok) as a process of this machine, the way a container runtime would
// run it, and stops it when the test ends. See the package documentation
// for what it does and what it maps. The test fails if the container
// cannot be set up; the process itself may still fail (Wait, Log).
func RunPod(t testing.TB, c *Cluster, pod *corev1.Pod, o RunOptions) *Proc {
	t.Helper()
	p, err := c.startPod(pod, o)
	if errors.Is(err, errNotRoot) && !Required() {
		t.Skip(err)
	}
	if err != nil {
		t.Fatalf("RunPod %s/%s: %v", pod.Namespace, pod.Name, err)
	}
	t.Cleanup(func() {
		err := p.Stop()
		if t.Failed() {
			t.Logf("pod %s/%s container %s stopped (%v); its log:\n%s", p.Pod.Namespace, p.Pod.Name, p.Container, err, tail(p.Log(), 400))
		}
	})
	return p
}

// podState is what the containers of one pod share: its directory, its
// volumes and its service account tokens.
type podState struct {
	mu      sync.Mutex
	dir     string
	runs    int
	emptyOK map[string]bool // emptyDir volumes set up
	tokens  map[string]cachedToken
}

type cachedToken struct {
	token   string
	refresh time.Time
}

func (c *Cluster) podState(pod *corev1.Pod) (*podState, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if s, ok := c.pods[pod.UID]; ok {
		return s, nil
	}
	dir := filepath.Join(c.Dir, "pods", pod.Namespace+"_"+pod.Name+"_"+string(pod.UID))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	s := &podState{dir: dir, emptyOK: map[string]bool{}, tokens: map[string]cachedToken{}}
	c.pods[pod.UID] = s
	return s, nil
}

// apiObjects reads what a pod's env and volumes refer to, as the kubelet
// does (with admin credentials here).
type apiObjects struct {
	c     *Cluster
	pod   *corev1.Pod
	state *podState
}

func (a apiObjects) ConfigMap(name string) (*corev1.ConfigMap, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return a.c.Clientset.CoreV1().ConfigMaps(a.pod.Namespace).Get(ctx, name, metav1.GetOptions{})
}

func (a apiObjects) Secret(name string) (*corev1.Secret, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return a.c.Clientset.CoreV1().Secrets(a.pod.Namespace).Get(ctx, name, metav1.GetOptions{})
}

// Token asks the TokenRequest API for a token of the pod's service account
// bound to the pod, and reuses it until 80% of its lifetime, as the
// kubelet does.
func (a apiObjects) Token(audience string, exp int64) (string, error) {
	key := audience + "/" + strconv.FormatInt(exp, 10)
	if t, ok := a.state.tokens[key]; ok && time.Now().Before(t.refresh) {
		return t.token, nil
	}
	sa := a.pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	req := &authv1.TokenRequest{Spec: authv1.TokenRequestSpec{
		ExpirationSeconds: &exp,
		BoundObjectRef:    &authv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: a.pod.Name, UID: a.pod.UID},
	}}
	if audience != "" {
		req.Spec.Audiences = []string{audience}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := a.c.Clientset.CoreV1().ServiceAccounts(a.pod.Namespace).CreateToken(ctx, sa, req, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("token of service account %s/%s: %w", a.pod.Namespace, sa, err)
	}
	life := time.Until(resp.Status.ExpirationTimestamp.Time)
	a.state.tokens[key] = cachedToken{token: resp.Status.Token, refresh: time.Now().Add(life * 8 / 10)}
	return resp.Status.Token, nil
}

const saMountPath = "/var/run/secrets/kubernetes.io/serviceaccount"

// waitPod gets the pod until it has a node and an IP.
func (c *Cluster) waitPod(pod *corev1.Pod, timeout time.Duration) (*corev1.Pod, error) {
	deadline := time.Now().Add(timeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		cur, err := c.Clientset.CoreV1().Pods(pod.Namespace).Get(ctx, pod.Name, metav1.GetOptions{})
		cancel()
		switch {
		case err != nil && !apierrors.IsNotFound(err):
		case err != nil:
			return nil, err
		case pod.UID != "" && cur.UID != pod.UID:
			return nil, fmt.Errorf("pod was replaced (uid %s, was %s)", cur.UID, pod.UID)
		case cur.DeletionTimestamp != nil:
			return nil, fmt.Errorf("pod is being deleted")
		case cur.Spec.NodeName != "" && cur.Status.PodIP != "":
			return cur, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("no node and pod IP within %v (node %q, phase %s; is kwok running?)", timeout, cur.Spec.NodeName, cur.Status.Phase)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (c *Cluster) startPod(pod *corev1.Pod, o RunOptions) (*Proc, error) {
	if os.Geteuid() != 0 {
		return nil, errNotRoot
	}
	if o.Rootfs == "" {
		return nil, fmt.Errorf("RunOptions.Rootfs is not set")
	}
	if o.Timeout == 0 {
		o.Timeout = 60 * time.Second
	}
	if o.StopGrace == 0 {
		o.StopGrace = 10 * time.Second
	}
	pod, err := c.waitPod(pod, o.Timeout)
	if err != nil {
		return nil, err
	}
	ctr := &pod.Spec.Containers[0]
	if o.Container != "" {
		if ctr = findContainer(pod, o.Container); ctr == nil {
			return nil, fmt.Errorf("no container %q", o.Container)
		}
	}
	if sc := ctr.SecurityContext; sc == nil || !isTrue(sc.Privileged) {
		for _, m := range ctr.VolumeMounts {
			if m.MountPropagation != nil && *m.MountPropagation == corev1.MountPropagationBidirectional {
				return nil, fmt.Errorf("volumeMount %s: Bidirectional mount propagation needs a privileged container", m.Name)
			}
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	node, err := c.Clientset.CoreV1().Nodes().Get(ctx, pod.Spec.NodeName, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("node %s: %w", pod.Spec.NodeName, err)
	}
	state, err := c.podState(pod)
	if err != nil {
		return nil, err
	}
	state.mu.Lock()
	defer state.mu.Unlock()
	objs := apiObjects{c: c, pod: pod, state: state}

	// Environment.
	var services []corev1.Service
	for _, ns := range []string{"default", pod.Namespace} {
		l, err := c.Clientset.CoreV1().Services(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return nil, fmt.Errorf("services: %w", err)
		}
		services = append(services, l.Items...)
		if ns == pod.Namespace {
			break
		}
	}
	svcEnv, err := serviceEnv(pod, services, c.apiserverHostPort)
	if err != nil {
		return nil, err
	}
	kenv, err := containerEnv(pod, ctr, node, svcEnv, objs)
	if err != nil {
		return nil, err
	}
	hostname := podHostname(pod)
	env := &envList{}
	env.Set("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	env.Set("HOSTNAME", hostname)
	for _, kv := range o.Env {
		k, v, _ := strings.Cut(kv, "=")
		env.Set(k, v)
	}
	for _, n := range kenv.names {
		env.Set(n, kenv.vals[n])
	}
	argv, err := processArgv(ctr, o.Entrypoint, o.Cmd, kenv)
	if err != nil {
		return nil, err
	}

	// Volumes.
	volumes := slices.Clone(pod.Spec.Volumes)
	mounts := slices.Clone(ctr.VolumeMounts)
	if needSAVolume(pod, ctr, c.automountSA(pod)) {
		volumes = append(volumes, saVolume("kubetest-api-access"))
		mounts = append(mounts, corev1.VolumeMount{Name: "kubetest-api-access", MountPath: saMountPath, ReadOnly: true})
	}
	sources := map[string]string{}
	var payloadVols []corev1.Volume
	for i := range volumes {
		v := &volumes[i]
		src, isPayload, err := c.setupVolume(pod, node, v, state, objs)
		if err != nil {
			return nil, err
		}
		sources[v.Name] = src
		if isPayload {
			payloadVols = append(payloadVols, *v)
		}
	}

	state.runs++
	runDir := filepath.Join(state.dir, "containers", ctr.Name+"-"+strconv.Itoa(state.runs))
	for _, d := range []string{"upper", "work", "root"} {
		if err := os.MkdirAll(filepath.Join(runDir, d), 0o755); err != nil {
			return nil, err
		}
	}
	spec := initSpec{
		Lower: o.Rootfs, Upper: filepath.Join(runDir, "upper"), Work: filepath.Join(runDir, "work"), Root: filepath.Join(runDir, "root"),
		NodeMounts: c.nodeMounts(),
		Hostname:   hostname,
		ShmSize:    64 << 20,
		Dir:        firstNonEmpty(ctr.WorkingDir, o.WorkingDir, "/"),
		Argv:       argv,
		Env:        env.Strings(),
		TmpfsTmp:   true,
	}
	for _, m := range mounts {
		src, ok := sources[m.Name]
		if !ok {
			return nil, fmt.Errorf("volumeMount %s: no volume of that name", m.Name)
		}
		if src, err = subPathIn(src, &m, kenv); err != nil {
			return nil, err
		}
		// The kubelet mounts API data volumes read-only, whatever the mount says.
		ro := m.ReadOnly || slices.ContainsFunc(payloadVols, func(v corev1.Volume) bool { return v.Name == m.Name })
		spec.Mounts = append(spec.Mounts, mountSpec{Source: src, Target: m.MountPath, ReadOnly: ro, Propagation: propagation(m.MountPropagation)})
		if path.Clean(m.MountPath) == "/tmp" {
			spec.TmpfsTmp = false
		}
	}
	etc, err := writeEtcFiles(state.dir, pod, hostname)
	if err != nil {
		return nil, err
	}
	termLog := filepath.Join(runDir, "termination-log")
	if err := os.WriteFile(termLog, nil, 0o666); err != nil {
		return nil, err
	}
	etc[firstNonEmpty(ctr.TerminationMessagePath, "/dev/termination-log")] = termLog
	for target, src := range etc {
		if !slices.ContainsFunc(spec.Mounts, func(m mountSpec) bool { return path.Clean(m.Target) == target }) {
			spec.Mounts = append(spec.Mounts, mountSpec{Source: src, Target: target, Propagation: "private"})
		}
	}
	sortMounts(spec.Mounts)
	if err := securityContext(pod, ctr, &spec); err != nil {
		return nil, err
	}
	logFile := filepath.Join(runDir, "log")
	np, lf, err := spawnInit(&spec, runDir, logFile)
	if err != nil {
		return nil, err
	}
	grace := o.StopGrace
	if g := pod.Spec.TerminationGracePeriodSeconds; g != nil && time.Duration(*g)*time.Second < grace {
		grace = time.Duration(*g) * time.Second
	}
	p := &Proc{Pod: pod, Container: ctr.Name, Argv: argv, Env: env.Strings(), proc: np, grace: grace,
		logFile: logFile, logF: lf, termLog: termLog, stopFollw: make(chan struct{})}
	go c.follow(p, state, node, payloadVols, !o.KeepOnDelete)
	return p, nil
}

// follow keeps the pod's configMap, secret, downwardAPI and projected
// volumes up to date while the container runs (the kubelet resyncs them),
// and stops the container when the pod is deleted or replaced.
func (c *Cluster) follow(p *Proc, state *podState, node *corev1.Node, vols []corev1.Volume, stopOnDelete bool) {
	tick := time.NewTicker(c.resync)
	defer tick.Stop()
	for {
		select {
		case <-p.stopFollw:
			return
		case <-p.Done():
			return
		case <-tick.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		cur, err := c.Clientset.CoreV1().Pods(p.Pod.Namespace).Get(ctx, p.Pod.Name, metav1.GetOptions{})
		cancel()
		gone := apierrors.IsNotFound(err) || (err == nil && (cur.UID != p.Pod.UID || cur.DeletionTimestamp != nil))
		if gone && stopOnDelete {
			go p.Stop()
			return
		}
		if err != nil || gone {
			continue
		}
		state.mu.Lock()
		objs := apiObjects{c: c, pod: cur, state: state}
		for i := range vols {
			if pl, err := volumePayload(cur, node, &vols[i], objs); err == nil {
				writeAtomic(filepath.Join(state.dir, "volumes", vols[i].Name), pl)
			}
		}
		state.mu.Unlock()
	}
}

// setupVolume makes a volume's directory on this machine and returns it,
// and whether its content comes from the API (and is kept up to date).
func (c *Cluster) setupVolume(pod *corev1.Pod, node *corev1.Node, v *corev1.Volume, state *podState, objs objects) (string, bool, error) {
	dir := filepath.Join(state.dir, "volumes", v.Name)
	switch {
	case v.HostPath != nil:
		root, err := c.nodeRoot(node.Name)
		if err != nil {
			return "", false, err
		}
		src := hostPathSource(root, v.HostPath.Path, c.hostPaths)
		if err := prepareHostPath(src, v.HostPath.Type); err != nil {
			return "", false, fmt.Errorf("volume %q: %w", v.Name, err)
		}
		return src, false, nil
	case v.EmptyDir != nil:
		if state.emptyOK[v.Name] {
			return dir, false, nil
		}
		if err := os.MkdirAll(dir, 0o777); err != nil {
			return "", false, err
		}
		os.Chmod(dir, 0o777) // as the kubelet makes it
		switch v.EmptyDir.Medium {
		case corev1.StorageMediumDefault:
		case corev1.StorageMediumMemory:
			opts := "mode=1777"
			if v.EmptyDir.SizeLimit != nil && !v.EmptyDir.SizeLimit.IsZero() {
				opts += ",size=" + strconv.FormatInt(v.EmptyDir.SizeLimit.Value(), 10)
			}
			if err := unix.Mount("tmpfs", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, opts); err != nil {
				return "", false, fmt.Errorf("volume %q: tmpfs: %w", v.Name, err)
			}
		default:
			return "", false, fmt.Errorf("volume %q: emptyDir medium %q is not supported", v.Name, v.EmptyDir.Medium)
		}
		state.emptyOK[v.Name] = true
		return dir, false, nil
	case v.PersistentVolumeClaim != nil:
		src, err := c.claimDir(pod, v.PersistentVolumeClaim.ClaimName, node.Name)
		if err != nil {
			return "", false, fmt.Errorf("volume %q: %w", v.Name, err)
		}
		return src, false, nil
	}
	pl, err := volumePayload(pod, node, v, objs)
	if err != nil {
		return "", false, err
	}
	if pl == nil {
		return "", false, fmt.Errorf("volume %q: unsupported volume type (supported: configMap, secret, downwardAPI, projected, emptyDir, hostPath, persistentVolumeClaim)", v.Name)
	}
	if _, err := writeAtomic(dir, pl); err != nil {
		return "", false, fmt.Errorf("volume %q: %w", v.Name, err)
	}
	return dir, true, nil
}

// automountSA reports whether the pod's service account token is mounted
// automatically: the pod's automountServiceAccountToken, else its service
// account's, else true.
func (c *Cluster) automountSA(pod *corev1.Pod) bool {
	if pod.Spec.AutomountServiceAccountToken != nil {
		return *pod.Spec.AutomountServiceAccountToken
	}
	name := firstNonEmpty(pod.Spec.ServiceAccountName, "default")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sa, err := c.Clientset.CoreV1().ServiceAccounts(pod.Namespace).Get(ctx, name, metav1.GetOptions{})
	if err == nil && sa.AutomountServiceAccountToken != nil {
		return *sa.AutomountServiceAccountToken
	}
	return true
}
