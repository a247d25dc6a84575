package operator

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"slices"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/granary-cache/granary/internal/kubetest"
	"github.com/granary-cache/granary/internal/testport"
)

func freePort(t *testing.T) int {
	t.Helper()
	p, err := testport.Port("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func datasetPod(ns, name string, ann map[string]string) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Annotations: ann}, Spec: corev1.PodSpec{
		Containers: []corev1.Container{{Name: "main", Image: "python"}},
		Volumes: []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{
			PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: "imagenet", ReadOnly: true}}}},
	}}
}

// preferredNodes lists a pod's preferred node names with their weights.
func preferredNodes(p *corev1.Pod) []string {
	var out []string
	if p.Spec.Affinity == nil || p.Spec.Affinity.NodeAffinity == nil {
		return nil
	}
	for _, t := range p.Spec.Affinity.NodeAffinity.PreferredDuringSchedulingIgnoredDuringExecution {
		for _, f := range t.Preference.MatchFields {
			out = append(out, fmt.Sprintf("%s=%d", f.Values[0], t.Weight))
		}
	}
	return out
}

func servedCert(t *testing.T, addr string) *x509.Certificate {
	t.Helper()
	conn, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true}) // only to read what is served
	if err != nil {
		t.Fatalf("dial the webhook: %v", err)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0]
}

func webhookBundle(t *testing.T, c *kubetest.Cluster, name string) []byte {
	cfg, err := get(t, c, "", name, &admissionregistrationv1.MutatingWebhookConfiguration{})
	if err != nil || len(cfg.Webhooks) == 0 {
		return nil
	}
	return cfg.Webhooks[0].ClientConfig.CABundle
}

// The pod webhook through the real API server: the operator makes its CA,
// certificate and configuration; pods that mount a Dataset's claim come back
// with a preferred affinity to the nodes holding its cache (and a required
// one when asked); other pods are untouched; a stopped webhook blocks no
// pod; certificates rotate while pods go on being placed.
func TestPodWebhook(t *testing.T) {
	c := startCluster(t, 3)
	const ns, sys = "place", "granary-system"
	createNamespace(t, c, ns)
	createNamespace(t, c, sys)
	port := freePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	wo := WebhookOptions{Host: "127.0.0.1", Port: port, CertDir: t.TempDir(), ServiceNamespace: sys, URL: "https://" + addr,
		CheckEvery: time.Second}
	stop := runOperator(t, c, Options{SkipNameValidation: true, Webhook: wo})

	// Workers on node-1 (100MiB of the dataset) and node-2 (400MiB), none
	// on node-3.
	mustCreate(t, c, s3Secret(ns), nsDataset(ns), nsRuntime(ns),
		hostLease(ns, "train", "w1", "node-1", time.Now(), map[string]int64{"imagenet": 100 << 20}),
		hostLease(ns, "train", "w2", "node-2", time.Now(), map[string]int64{"imagenet": 400 << 20, "other": 1 << 30}))
	c.WaitFor(t, 30*time.Second, "the dataset's claim", func() (bool, error) {
		_, err := get(t, c, ns, "imagenet", &corev1.PersistentVolumeClaim{})
		return err == nil, nil
	})
	firstBundle := webhookBundle(t, c, "granary-pod-placement")

	// Until the API server, the operator's cache and the server are all up,
	// pods go through unplaced: try until one is placed.
	n := 0
	place := func(ann map[string]string) *corev1.Pod {
		t.Helper()
		var pod *corev1.Pod
		c.WaitFor(t, 30*time.Second, "a placed pod", func() (bool, error) {
			n++
			pod = datasetPod(ns, fmt.Sprintf("train-%d", n), ann)
			if err := c.Client.Create(ctx(t), pod); err != nil {
				return false, err
			}
			return pod.Annotations[AnnotationCacheAffinityApplied] != "", nil
		})
		return pod
	}
	pod := place(nil)
	if got, want := preferredNodes(pod), []string{"node-2=100", "node-1=25"}; !slices.Equal(got, want) {
		t.Errorf("preferred %v, want %v", got, want)
	}
	if pod.Spec.Affinity.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution != nil {
		t.Errorf("a required affinity nobody asked for: %+v", pod.Spec.Affinity.NodeAffinity)
	}
	cfg, err := get(t, c, "", "granary-pod-placement", &admissionregistrationv1.MutatingWebhookConfiguration{})
	if err != nil || *cfg.Webhooks[0].FailurePolicy != admissionregistrationv1.Ignore || *cfg.Webhooks[0].ClientConfig.URL != "https://"+addr+WebhookPath {
		t.Fatalf("configuration: %v %+v", err, cfg.Webhooks)
	}
	// Required, by the pod's annotation: the nodes of live workers. (Pods
	// are not scheduled here: without the PV binder the claim stays
	// unbound.)
	req := place(map[string]string{AnnotationCacheAffinity: "required"})
	terms := req.Spec.Affinity.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution
	if terms == nil || len(terms.NodeSelectorTerms) != 1 ||
		!slices.Equal(terms.NodeSelectorTerms[0].MatchExpressions[0].Values, []string{"node-1", "node-2"}) {
		t.Fatalf("required %+v", terms)
	}
	// The user's own required term is kept, the cache's ANDed into it.
	user := datasetPod(ns, "user-affinity", map[string]string{AnnotationCacheAffinity: "required"})
	user.Spec.Affinity = &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{RequiredDuringSchedulingIgnoredDuringExecution: &corev1.NodeSelector{
		NodeSelectorTerms: []corev1.NodeSelectorTerm{{MatchExpressions: []corev1.NodeSelectorRequirement{{Key: "kubernetes.io/os", Operator: corev1.NodeSelectorOpExists}}}}}}}
	mustCreate(t, c, user)
	if exprs := user.Spec.Affinity.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution.NodeSelectorTerms[0].MatchExpressions; len(exprs) != 2 ||
		exprs[0].Key != "kubernetes.io/os" || exprs[1].Key != corev1.LabelHostname {
		t.Errorf("merged required term %+v", exprs)
	}

	// A pod without a dataset's claim is untouched.
	plain := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "plain", Namespace: ns}, Spec: corev1.PodSpec{
		Containers: []corev1.Container{{Name: "main", Image: "python"}}}}
	mustCreate(t, c, plain)
	if plain.Spec.Affinity != nil || plain.Annotations[AnnotationCacheAffinityApplied] != "" {
		t.Errorf("a plain pod was changed: %+v %v", plain.Spec.Affinity, plain.Annotations)
	}

	// The operator stops: pods are still admitted (failurePolicy Ignore).
	stop()
	down := datasetPod(ns, "while-down", nil)
	mustCreate(t, c, down)
	if down.Annotations[AnnotationCacheAffinityApplied] != "" {
		t.Error("placed by a stopped webhook?")
	}

	// Rotation: another operator, with short-lived certificates (a new
	// Secret, so a new CA); the caBundle changes, the served certificate
	// changes, and pods go on being placed.
	wo.SecretName, wo.CAValidity, wo.CertValidity = "rotating-certs", 24*time.Second, 9*time.Second
	runOperator(t, c, Options{SkipNameValidation: true, Webhook: wo})
	c.WaitFor(t, 30*time.Second, "the new CA in the caBundle", func() (bool, error) {
		b := webhookBundle(t, c, "granary-pod-placement")
		return len(b) > 0 && !bytes.Equal(b, firstBundle), nil
	})
	place(nil)
	first := servedCert(t, addr)
	firstCA := webhookBundle(t, c, "granary-pod-placement")
	servedSerials := map[string]bool{first.SerialNumber.String(): true}
	deadline := time.Now().Add(45 * time.Second)
	placed, unplaced := 0, 0
	for time.Now().Before(deadline) && (len(servedSerials) < 3 || countCerts(webhookBundle(t, c, "granary-pod-placement")) < 2) {
		servedSerials[servedCert(t, addr).SerialNumber.String()] = true
		n++
		p := datasetPod(ns, fmt.Sprintf("rot-%d", n), nil)
		mustCreate(t, c, p)
		if p.Annotations[AnnotationCacheAffinityApplied] != "" {
			placed++
		} else {
			unplaced++
		}
		time.Sleep(time.Second)
	}
	bundle := webhookBundle(t, c, "granary-pod-placement")
	if len(servedSerials) < 3 {
		t.Errorf("served certificates: %d, want the serving certificate renewed at least twice", len(servedSerials))
	}
	if countCerts(bundle) < 2 || !bytes.Contains(bundle, firstCA) {
		t.Errorf("the CA was not renewed with the old one kept: %d certificates", countCerts(bundle))
	}
	if unplaced > 0 {
		t.Errorf("during rotation %d pods were placed, %d not", placed, unplaced)
	}
	// The served certificate verifies against the bundle.
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(bundle)
	if _, err := servedCert(t, addr).Verify(x509.VerifyOptions{DNSName: "127.0.0.1", Roots: pool}); err != nil {
		t.Errorf("the served certificate does not verify against the caBundle: %v", err)
	}
	t.Logf("%d certificates served, %d pods placed during rotation", len(servedSerials), placed)
}
