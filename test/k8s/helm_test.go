// Package k8s tests granary's Kubernetes packaging against a real control
// plane (internal/kubetest: kube-apiserver, controller manager, scheduler,
// kwok nodes): the Helm chart charts/granary installed by the real helm, the
// validation of its CRDs, every manifest of examples/k8s, Fluid's CRDs beside
// granary's, and the operator running from the chart's pod spec with the
// chart's ServiceAccount and rules.
package k8s

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	"github.com/granary-cache/granary/api/v1alpha1"
	"github.com/granary-cache/granary/internal/kubetest"
	"github.com/granary-cache/granary/internal/testport"
)

const (
	// repoRoot is the repository, from this package's directory.
	repoRoot       = "../.."
	chartRelease   = "granary"
	chartNamespace = "granary-system"
	// The names the chart gives a release called granary.
	operatorName = "granary-operator"
	metricsName  = "granary-metrics"
)

var granaryCRDs = []string{"datasets.granary.io", "cacheruntimes.granary.io", "dataloads.granary.io"}

// kubeTool finds a program of $GRANARY_KUBE_BIN (else $PATH); without it the
// test skips, or fails when servers are required (test/run.sh).
func kubeTool(t *testing.T, name string) string {
	t.Helper()
	if dir := os.Getenv("GRANARY_KUBE_BIN"); dir != "" {
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			return p
		}
	} else if p, err := exec.LookPath(name); err == nil {
		return p
	}
	err := fmt.Errorf("%s not found in $GRANARY_KUBE_BIN or $PATH: run test/run.sh, or `source test/lib.sh; install_test_deps`", name)
	if kubetest.Required() {
		t.Fatal(err)
	}
	t.Skip(err)
	return ""
}

// runTool runs a program, bounded by timeout, and returns its stdout; the
// error holds its stderr.
func runTool(timeout time.Duration, env []string, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%s %s: %w\nstdout:\n%s\nstderr:\n%s", filepath.Base(name), strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String(), nil
}

// helmRunner runs helm against the test's cluster, with its own home (no
// repositories, caches or plugins of the machine's user).
type helmRunner struct {
	bin, kubeconfig string
	env             []string
}

func newHelm(t *testing.T, bin, kubeconfig string) *helmRunner {
	home := t.TempDir()
	return &helmRunner{bin: bin, kubeconfig: kubeconfig, env: []string{
		"HOME=" + home,
		"HELM_CACHE_HOME=" + filepath.Join(home, "cache"),
		"HELM_CONFIG_HOME=" + filepath.Join(home, "config"),
		"HELM_DATA_HOME=" + filepath.Join(home, "data"),
		"KUBECONFIG=" + kubeconfig,
	}}
}

func (h *helmRunner) run(args ...string) (string, error) {
	return runTool(3*time.Minute, h.env, h.bin, append(args, "--kubeconfig", h.kubeconfig)...)
}

func chartScheme(t *testing.T) *runtime.Scheme {
	s := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{clientgoscheme.AddToScheme, apiextensionsv1.AddToScheme, v1alpha1.AddToScheme} {
		if err := add(s); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

// chartAppVersion is Chart.yaml's appVersion: the default image tag.
func chartAppVersion(t *testing.T) string {
	b, err := os.ReadFile(filepath.Join(repoRoot, "charts/granary/Chart.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var chart struct {
		AppVersion string `json:"appVersion"`
	}
	if err := yaml.Unmarshal(b, &chart); err != nil {
		t.Fatal(err)
	}
	if chart.AppVersion == "" {
		t.Fatal("Chart.yaml has no appVersion")
	}
	return chart.AppVersion
}

// testCtx bounds a subtest's calls to the API server.
func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// TestChart installs the chart with helm into a real API server and checks
// what it made, then the CRDs' validation, the examples, Fluid's CRDs beside
// ours, and the operator running as the chart runs it.
func TestChart(t *testing.T) {
	helmBin := kubeTool(t, "helm")
	kubeTool(t, "kubectl")
	// The operator's binary builds while the cluster starts and the chart
	// is checked.
	image := buildOperatorRootfs(t)
	c := kubetest.Start(t, kubetest.Options{Nodes: 2, Scheme: chartScheme(t)})
	h := newHelm(t, helmBin, c.Kubeconfig)
	chart := filepath.Join(repoRoot, "charts/granary")

	out, err := h.run("install", chartRelease, chart, "--namespace", chartNamespace, "--create-namespace", "--wait=false")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("helm install:\n%s", out)

	t.Run("CRDsEstablished", func(t *testing.T) {
		for _, name := range granaryCRDs {
			waitEstablished(t, c, name)
		}
	})
	t.Run("OperatorDeployment", func(t *testing.T) { checkDeployment(t, c) })
	t.Run("ClusterRoleIsGenerated", func(t *testing.T) { checkClusterRole(t, c) })
	t.Run("ServiceAccountMayLead", func(t *testing.T) { checkAccess(t, c) })
	t.Run("ExamplesAccepted", func(t *testing.T) { checkExamples(t, c, "default") })
	t.Run("InvalidSpecsRefused", func(t *testing.T) { checkInvalid(t, c) })
	t.Run("FluidCRDsBeside", func(t *testing.T) { checkFluid(t, c) })
	t.Run("OperatorRuns", func(t *testing.T) { checkOperatorRuns(t, c, h, chart, image) })
}

func waitEstablished(t *testing.T, c *kubetest.Cluster, name string) *apiextensionsv1.CustomResourceDefinition {
	t.Helper()
	ctx := testCtx(t)
	var crd apiextensionsv1.CustomResourceDefinition
	c.WaitFor(t, 60*time.Second, "CRD "+name+" Established", func() (bool, error) {
		if err := c.Client.Get(ctx, types.NamespacedName{Name: name}, &crd); err != nil {
			return false, err
		}
		for _, cond := range crd.Status.Conditions {
			if cond.Type == apiextensionsv1.Established && cond.Status == apiextensionsv1.ConditionTrue {
				return true, nil
			}
		}
		return false, fmt.Errorf("conditions %+v", crd.Status.Conditions)
	})
	return &crd
}

// checkDeployment checks the operator's Deployment, ServiceAccount and
// metrics Service as the default values make them, and that its pods start
// (kwok runs them).
func checkDeployment(t *testing.T, c *kubetest.Cluster) {
	ctx := testCtx(t)
	var d appsv1.Deployment
	if err := c.Client.Get(ctx, types.NamespacedName{Namespace: chartNamespace, Name: operatorName}, &d); err != nil {
		t.Fatal(err)
	}
	if d.Spec.Replicas == nil || *d.Spec.Replicas != 2 {
		t.Errorf("replicas %v, want 2", d.Spec.Replicas)
	}
	spec := d.Spec.Template.Spec
	if spec.ServiceAccountName != operatorName {
		t.Errorf("serviceAccountName %q, want %q", spec.ServiceAccountName, operatorName)
	}
	if len(spec.Containers) != 1 {
		t.Fatalf("%d containers, want 1", len(spec.Containers))
	}
	ct := spec.Containers[0]
	tag := chartAppVersion(t)
	image := "ghcr.io/granary-cache/granary:" + tag
	if ct.Image != image {
		t.Errorf("image %q, want %q", ct.Image, image)
	}
	wantArgs := []string{
		"operator",
		"--worker-image=" + image,
		"--worker-image-cephfs=" + image + "-cephfs",
		"--image-pull-policy=IfNotPresent",
		"--metrics-addr=:8080",
		"--health-addr=:8081",
		"--leader-elect=true",
		"--leader-election-namespace=" + chartNamespace,
		"--leader-election-id=granary-operator",
		"--webhook-port=9443",
		"--webhook-cert-dir=/var/run/granary/webhook-certs",
		"--webhook-service=granary-webhook",
		"--webhook-config=granary-webhook",
		"--log-level=info",
	}
	if !slices.Equal(ct.Args, wantArgs) {
		t.Errorf("args\n%q\nwant\n%q", ct.Args, wantArgs)
	}
	if len(ct.Command) != 0 {
		t.Errorf("command %q: the image's entrypoint (/usr/bin/granary) should run", ct.Command)
	}
	for _, p := range []struct {
		name  string
		probe *corev1.Probe
		path  string
	}{{"liveness", ct.LivenessProbe, "/healthz"}, {"readiness", ct.ReadinessProbe, "/readyz"}} {
		if p.probe == nil || p.probe.HTTPGet == nil || p.probe.HTTPGet.Path != p.path || p.probe.HTTPGet.Port.String() != "health" {
			t.Errorf("%s probe %+v, want GET %s on port health", p.name, p.probe, p.path)
		}
	}
	ports := map[string]int32{}
	for _, p := range ct.Ports {
		ports[p.Name] = p.ContainerPort
	}
	if ports["http-metrics"] != 8080 || ports["health"] != 8081 {
		t.Errorf("container ports %v, want http-metrics 8080, health 8081", ports)
	}
	sc := ct.SecurityContext
	if sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
		sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Errorf("container securityContext %+v: want a read-only root and no privilege escalation", sc)
	}
	if psc := spec.SecurityContext; psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || psc.RunAsUser == nil || *psc.RunAsUser == 0 {
		t.Errorf("pod securityContext %+v: want runAsNonRoot with a non-zero runAsUser", psc)
	}
	if ct.Resources.Limits.Memory().IsZero() {
		t.Errorf("no memory limit: %+v", ct.Resources)
	}
	for k, v := range map[string]string{
		"app.kubernetes.io/name": "granary", "app.kubernetes.io/instance": chartRelease,
		"app.kubernetes.io/component": "operator", "app.kubernetes.io/managed-by": "Helm",
		"app.kubernetes.io/version": tag,
	} {
		if got := d.Labels[k]; got != v {
			t.Errorf("label %s=%q, want %q", k, got, v)
		}
	}

	var sa corev1.ServiceAccount
	if err := c.Client.Get(ctx, types.NamespacedName{Namespace: chartNamespace, Name: operatorName}, &sa); err != nil {
		t.Errorf("ServiceAccount: %v", err)
	}
	var svc corev1.Service
	if err := c.Client.Get(ctx, types.NamespacedName{Namespace: chartNamespace, Name: metricsName}, &svc); err != nil {
		t.Errorf("metrics Service: %v", err)
	} else if len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].Name != "http-metrics" || svc.Spec.Ports[0].Port != 8080 ||
		svc.Spec.Ports[0].TargetPort.String() != "http-metrics" {
		t.Errorf("metrics Service ports %+v, want http-metrics 8080 -> http-metrics", svc.Spec.Ports)
	} else if !reflect.DeepEqual(svc.Spec.Selector, d.Spec.Selector.MatchLabels) {
		t.Errorf("metrics Service selects %v, the Deployment's pods are %v", svc.Spec.Selector, d.Spec.Selector.MatchLabels)
	}

	// The pods pass admission (service account, security context) and get
	// scheduled; kwok reports them ready.
	c.WaitFor(t, 90*time.Second, "the operator Deployment's 2 replicas ready", func() (bool, error) {
		if err := c.Client.Get(ctx, client.ObjectKeyFromObject(&d), &d); err != nil {
			return false, err
		}
		return d.Status.ReadyReplicas == 2, fmt.Errorf("status %+v", d.Status)
	})
}

// checkClusterRole compares the installed ClusterRole with
// files/operator-rules.yaml, which controller-gen writes from the operator's
// markers, and checks its binding.
func checkClusterRole(t *testing.T, c *kubetest.Cluster) {
	ctx := testCtx(t)
	b, err := os.ReadFile(filepath.Join(repoRoot, "charts/granary/files/operator-rules.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var generated rbacv1.ClusterRole
	if err := yaml.Unmarshal(b, &generated); err != nil {
		t.Fatal(err)
	}
	if len(generated.Rules) == 0 {
		t.Fatal("files/operator-rules.yaml has no rules")
	}
	var cr rbacv1.ClusterRole
	if err := c.Client.Get(ctx, types.NamespacedName{Name: operatorName}, &cr); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(cr.Rules, generated.Rules) {
		t.Errorf("ClusterRole rules:\n%+v\nfiles/operator-rules.yaml:\n%+v", cr.Rules, generated.Rules)
	}
	var crb rbacv1.ClusterRoleBinding
	if err := c.Client.Get(ctx, types.NamespacedName{Name: operatorName}, &crb); err != nil {
		t.Fatal(err)
	}
	want := []rbacv1.Subject{{Kind: "ServiceAccount", Name: operatorName, Namespace: chartNamespace}}
	if crb.RoleRef.Kind != "ClusterRole" || crb.RoleRef.Name != operatorName || !reflect.DeepEqual(crb.Subjects, want) {
		t.Errorf("ClusterRoleBinding roleRef %+v subjects %+v, want ClusterRole %s for %+v", crb.RoleRef, crb.Subjects, operatorName, want)
	}
}

// checkAccess asks the API server's authorizer what the operator's
// ServiceAccount may do: what leader election needs in the release's
// namespace, and a sample of what its controllers do anywhere.
func checkAccess(t *testing.T, c *kubetest.Cluster) {
	ctx := testCtx(t)
	user := "system:serviceaccount:" + chartNamespace + ":" + operatorName
	for _, a := range []authorizationv1.ResourceAttributes{
		{Namespace: chartNamespace, Verb: "get", Group: "coordination.k8s.io", Resource: "leases"},
		{Namespace: chartNamespace, Verb: "create", Group: "coordination.k8s.io", Resource: "leases"},
		{Namespace: chartNamespace, Verb: "update", Group: "coordination.k8s.io", Resource: "leases"},
		{Namespace: chartNamespace, Verb: "create", Group: "", Resource: "events"},
		{Namespace: chartNamespace, Verb: "create", Group: "events.k8s.io", Resource: "events"},
		{Verb: "watch", Group: "granary.io", Resource: "datasets"},
		{Namespace: "team-a", Verb: "update", Group: "granary.io", Resource: "cacheruntimes", Subresource: "status"},
		{Verb: "create", Group: "", Resource: "persistentvolumes"},
		{Namespace: "team-a", Verb: "create", Group: "apps", Resource: "daemonsets"},
		{Namespace: "team-a", Verb: "create", Group: "batch", Resource: "jobs"},
		{Namespace: "team-a", Verb: "create", Group: "rbac.authorization.k8s.io", Resource: "roles"},
	} {
		sar := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
			User: user, Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + chartNamespace, "system:authenticated"},
			ResourceAttributes: &a,
		}}
		if err := c.Client.Create(ctx, sar); err != nil {
			t.Fatal(err)
		}
		if !sar.Status.Allowed {
			t.Errorf("%s may not %s %s/%s %s in %q: %s", user, a.Verb, a.Group, a.Resource, a.Subresource, a.Namespace, sar.Status.Reason)
		}
	}
	// And no more than that: it does not own the cluster.
	sar := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
		User: user, ResourceAttributes: &authorizationv1.ResourceAttributes{Verb: "delete", Group: "", Resource: "nodes"},
	}}
	if err := c.Client.Create(ctx, sar); err != nil {
		t.Fatal(err)
	}
	if sar.Status.Allowed {
		t.Errorf("%s may delete nodes", user)
	}
}

// exampleFiles are examples/k8s's manifests; the test fails if one the
// README names went missing.
func exampleFiles(t *testing.T) []string {
	files, err := filepath.Glob(filepath.Join(repoRoot, "examples/k8s/*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, f := range files {
		names = append(names, filepath.Base(f))
	}
	for _, want := range []string{"s3.yaml", "rgw.yaml", "cephfs.yaml", "dataload.yaml", "training-pod.yaml"} {
		if !slices.Contains(names, want) {
			t.Errorf("examples/k8s/%s is missing (have %v)", want, names)
		}
	}
	return files
}

// checkExamples has the API server validate every example, against the
// installed CRDs (schemas and CEL rules) and its own kinds, without storing
// them.
func checkExamples(t *testing.T, c *kubetest.Cluster, ns string) {
	for _, f := range exampleFiles(t) {
		out, err := c.Kubectl(t, "apply", "--dry-run=server", "-n", ns, "-f", f)
		if err != nil {
			t.Errorf("%s: %v", filepath.Base(f), err)
			continue
		}
		lines := strings.Split(strings.TrimSpace(out), "\n")
		for _, l := range lines {
			if !strings.HasSuffix(l, "(server dry run)") {
				t.Errorf("%s: unexpected output line %q", filepath.Base(f), l)
			}
		}
		t.Logf("%s: %d objects accepted", filepath.Base(f), len(lines))
	}
}

func int32p(v int32) *int32 { return &v }

// checkInvalid has the API server refuse specs the CRDs' schemas and CEL
// rules forbid, each with a message naming the field.
func checkInvalid(t *testing.T, c *kubetest.Cluster) {
	ctx := testCtx(t)
	meta := func(name string) metav1.ObjectMeta { return metav1.ObjectMeta{Name: name, Namespace: "default"} }
	withTier := func(tier v1alpha1.TierSpec) *v1alpha1.CacheRuntime {
		return &v1alpha1.CacheRuntime{ObjectMeta: meta("bad-runtime"),
			Spec: v1alpha1.CacheRuntimeSpec{Datasets: []string{"imagenet"}, Tiers: []v1alpha1.TierSpec{tier}}}
	}
	for _, tc := range []struct {
		name  string
		obj   client.Object
		field string // where the message says the error is
		msg   string
	}{
		{"ftp UFS", &v1alpha1.Dataset{ObjectMeta: meta("bad-ufs"), Spec: v1alpha1.DatasetSpec{UFS: "ftp://x"}},
			"spec.ufs", "ufs must start with s3://, cephfs:// or file:///"},
		{"negative quota", withTier(v1alpha1.TierSpec{Name: "MEM", Medium: "Memory", Quota: resource.MustParse("-1Gi")}),
			"spec.tiers[0].quota", "quota must be positive"},
		{"low above high", withTier(v1alpha1.TierSpec{Name: "MEM", Medium: "Memory", Quota: resource.MustParse("1Gi"),
			High: int32p(60), Low: int32p(80)}),
			"spec.tiers[0]", "low must be below high"},
		{"HostPath without path", withTier(v1alpha1.TierSpec{Name: "SSD", Medium: "HostPath", Quota: resource.MustParse("1Gi")}),
			"spec.tiers[0]", "a HostPath tier needs a path"},
		{"watermark above 100", withTier(v1alpha1.TierSpec{Name: "MEM", Medium: "Memory", Quota: resource.MustParse("1Gi"), High: int32p(120)}),
			"spec.tiers[0].high", "should be less than or equal to 100"},
		{"unknown medium", withTier(v1alpha1.TierSpec{Name: "MEM", Medium: "Disk", Quota: resource.MustParse("1Gi")}),
			"spec.tiers[0].medium", "Unsupported value"},
		{"no tiers", &v1alpha1.CacheRuntime{ObjectMeta: meta("bad-runtime"), Spec: v1alpha1.CacheRuntimeSpec{Datasets: []string{"imagenet"}}},
			"spec.tiers", "Required value"},
		{"metadataSync", &v1alpha1.Dataset{ObjectMeta: meta("bad-sync"), Spec: v1alpha1.DatasetSpec{UFS: "s3://b", MetadataSync: "sometimes"}},
			"spec.metadataSync", "should match"},
		{"Cron without schedule", &v1alpha1.DataLoad{ObjectMeta: meta("bad-load"), Spec: v1alpha1.DataLoadSpec{Dataset: "imagenet", Policy: "Cron"}},
			"spec", "a Cron DataLoad needs a schedule"},
	} {
		err := c.Client.Create(ctx, tc.obj, client.DryRunAll)
		switch {
		case err == nil:
			t.Errorf("%s: accepted", tc.name)
		case !apierrors.IsInvalid(err):
			t.Errorf("%s: %v, want Invalid", tc.name, err)
		case !strings.Contains(err.Error(), tc.field+": ") || !strings.Contains(err.Error(), tc.msg):
			t.Errorf("%s: %q does not say %q about %s", tc.name, err, tc.msg, tc.field)
		default:
			t.Logf("%s: refused: %v", tc.name, err)
		}
	}
}

// fluidCRDs is where the project's neighbour keeps Fluid's CRDs
// (../shared/fluid/README.md: a fixture, never copied into the project).
const fluidCRDs = "../shared/fluid/crds"

// checkFluid installs Fluid's CRDs (data.fluid.io, with kinds of the same
// names as ours) beside granary's and checks both serve, each in its group.
func checkFluid(t *testing.T, c *kubetest.Cluster) {
	dir := filepath.Join(repoRoot, fluidCRDs)
	files, _ := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if len(files) == 0 {
		err := fmt.Errorf("no Fluid CRDs in %s (they sit beside the project: ../shared/fluid/crds)", dir)
		if os.Getenv("CI") == "true" {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	before := map[string]int64{}
	for _, name := range granaryCRDs {
		before[name] = waitEstablished(t, c, name).Generation
	}
	// Server-side: the largest of Fluid's CRDs does not fit in the
	// last-applied annotation of a client-side apply.
	if _, err := c.Kubectl(t, "apply", "--server-side", "--field-manager=fluid-test", "-f", dir); err != nil {
		t.Fatal(err)
	}
	var fluid []string
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var crd apiextensionsv1.CustomResourceDefinition
		if err := yaml.Unmarshal(b, &crd); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		if crd.Spec.Group == "granary.io" {
			t.Fatalf("%s: Fluid's CRD %s is in granary's group", f, crd.Name)
		}
		waitEstablished(t, c, crd.Name)
		fluid = append(fluid, crd.Name)
	}
	t.Logf("Fluid's CRDs: %v", fluid)
	for _, name := range granaryCRDs {
		crd := waitEstablished(t, c, name)
		if crd.Generation != before[name] {
			t.Errorf("%s changed (generation %d -> %d) when Fluid's CRDs were installed", name, before[name], crd.Generation)
		}
	}
	for group, want := range map[string][]string{
		"granary.io":    {"cacheruntimes.granary.io", "dataloads.granary.io", "datasets.granary.io"},
		"data.fluid.io": {"cacheruntimes.data.fluid.io", "dataloads.data.fluid.io", "datasets.data.fluid.io"},
	} {
		out, err := c.Kubectl(t, "api-resources", "--api-group="+group, "-o", "name")
		if err != nil {
			t.Fatal(err)
		}
		got := strings.Fields(out)
		for _, w := range want {
			if !slices.Contains(got, w) {
				t.Errorf("api-resources of %s: %v, missing %s", group, got, w)
			}
		}
	}

	// A Dataset of each group, of the same name, side by side.
	ns := "coexist"
	if _, err := c.Kubectl(t, "create", "namespace", ns); err != nil {
		t.Fatal(err)
	}
	manifest := filepath.Join(t.TempDir(), "both.yaml")
	if err := os.WriteFile(manifest, []byte(`apiVersion: granary.io/v1alpha1
kind: Dataset
metadata: {name: imagenet}
spec: {ufs: "s3://training-data/imagenet"}
---
apiVersion: data.fluid.io/v1alpha1
kind: Dataset
metadata: {name: imagenet}
spec:
  mounts: [{mountPoint: "s3://training-data/imagenet", name: imagenet}]
`), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Kubectl(t, "apply", "-n", ns, "-f", manifest); err != nil {
		t.Fatal(err)
	}
	for _, res := range []string{"datasets.granary.io", "datasets.data.fluid.io"} {
		out, err := c.Kubectl(t, "get", res, "-n", ns, "-o", "jsonpath={.items[*].apiVersion}")
		if err != nil {
			t.Fatal(err)
		}
		group := strings.TrimPrefix(res, "datasets.")
		if got := strings.Fields(out); len(got) != 1 || !strings.HasPrefix(got[0], group+"/") {
			t.Errorf("kubectl get %s: %q, want one of group %s", res, out, group)
		}
	}
	// What the plain name means with both installed: kubectl picks one
	// group, so the README tells users to name the group.
	if out, err := c.Kubectl(t, "get", "dataset", "-n", ns, "-o", "jsonpath={.items[*].apiVersion}"); err == nil {
		t.Logf("with Fluid installed, `kubectl get dataset` lists %q", out)
	}
	// Granary's examples still validate as granary's.
	checkExamples(t, c, ns)
	if _, err := c.Kubectl(t, "delete", "namespace", ns, "--wait=false"); err != nil {
		t.Error(err)
	}
}

// freePort is a TCP port nothing listens on now (the operator's process
// shares this machine's network).
func freePort(t *testing.T) int {
	p, err := testport.Port("")
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// rootfsBuild is the static granary binary being built, in the background,
// into a directory that stands for the image: /usr/bin/granary, root and
// nobody, /tmp.
type rootfsBuild struct {
	dir  string
	done chan struct{}
	err  error
}

// buildOperatorRootfs starts the build; the test waits for it to end.
func buildOperatorRootfs(t *testing.T) *rootfsBuild {
	b := &rootfsBuild{dir: filepath.Join(t.TempDir(), "rootfs"), done: make(chan struct{})}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	t.Cleanup(func() {
		cancel()
		<-b.done
	})
	go func() {
		defer close(b.done)
		b.err = b.build(ctx)
	}()
	return b
}

func (b *rootfsBuild) build(ctx context.Context) error {
	for _, d := range []string{"usr/bin", "etc", "tmp"} {
		if err := os.MkdirAll(filepath.Join(b.dir, d), 0o755); err != nil {
			return err
		}
	}
	files := map[string]string{
		"etc/passwd": "root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n",
		"etc/group":  "root:x:0:\nnobody:x:65534:\n",
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(b.dir, name), []byte(content), 0o644); err != nil {
			return err
		}
	}
	bin, err := filepath.Abs(filepath.Join(b.dir, "usr/bin/granary"))
	if err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/granary")
	cmd.Dir = repoRoot
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build ./cmd/granary: %v\n%s", err, out)
	}
	return nil
}

// wait returns the directory once the build is done.
func (b *rootfsBuild) wait(t *testing.T) string {
	<-b.done
	if b.err != nil {
		t.Fatal(b.err)
	}
	return b.dir
}

// checkOperatorRuns upgrades the release to one replica on free ports, runs
// that replica's container (the real granary binary, as the chart's pod
// spec says: its service account token, non-root, read-only root) and
// checks that it leads, serves /readyz, and does its work for the S3
// example and the DataLoads with nothing but the chart's rules.
func checkOperatorRuns(t *testing.T, c *kubetest.Cluster, h *helmRunner, chart string, image *rootfsBuild) {
	rootfs := image.wait(t)
	ctx := testCtx(t)
	metricsPort, healthPort := freePort(t), freePort(t)
	for metricsPort == healthPort {
		healthPort = freePort(t)
	}
	out, err := h.run("upgrade", chartRelease, chart, "--namespace", chartNamespace, "--wait=false",
		"--set", "operator.replicas=1",
		"--set", "operator.metricsPort="+strconv.Itoa(metricsPort),
		"--set", "operator.healthPort="+strconv.Itoa(healthPort),
		"--set", "operator.logLevel=debug")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("helm upgrade:\n%s", out)

	// The new replica: its args have the new health port.
	var pod corev1.Pod
	want := "--health-addr=:" + strconv.Itoa(healthPort)
	c.WaitFor(t, 90*time.Second, "the upgraded operator pod running", func() (bool, error) {
		var pods corev1.PodList
		if err := c.Client.List(ctx, &pods, client.InNamespace(chartNamespace),
			client.MatchingLabels{"app.kubernetes.io/instance": chartRelease, "app.kubernetes.io/component": "operator"}); err != nil {
			return false, err
		}
		for _, p := range pods.Items {
			if p.DeletionTimestamp == nil && p.Status.Phase == corev1.PodRunning && p.Status.PodIP != "" &&
				slices.Contains(p.Spec.Containers[0].Args, want) {
				pod = p
				return true, nil
			}
		}
		return false, fmt.Errorf("%d pods, none running with %s", len(pods.Items), want)
	})
	proc := kubetest.RunPod(t, c, &pod, kubetest.RunOptions{Rootfs: rootfs, Entrypoint: []string{"/usr/bin/granary"}})

	// It leads: the Lease in the release's namespace names it.
	c.WaitFor(t, 60*time.Second, "the operator holding the leader Lease", func() (bool, error) {
		select {
		case <-proc.Done():
			return false, fmt.Errorf("the operator exited: %v\n%s", proc.Wait(), proc.Log())
		default:
		}
		var lease coordinationv1.Lease
		if err := c.Client.Get(ctx, types.NamespacedName{Namespace: chartNamespace, Name: "granary-operator"}, &lease); err != nil {
			return false, err
		}
		holder := ""
		if lease.Spec.HolderIdentity != nil {
			holder = *lease.Spec.HolderIdentity
		}
		return strings.HasPrefix(holder, pod.Name+"_"), fmt.Errorf("holder %q", holder)
	})
	// Its probes' endpoints answer on the pod's IP.
	hc := &http.Client{Timeout: 3 * time.Second}
	for _, path := range []string{"/healthz", "/readyz"} {
		url := fmt.Sprintf("http://%s/%s", net.JoinHostPort(pod.Status.PodIP, strconv.Itoa(healthPort)), strings.TrimPrefix(path, "/"))
		c.WaitFor(t, 30*time.Second, "GET "+url, func() (bool, error) {
			resp, err := hc.Get(url)
			if err != nil {
				return false, err
			}
			resp.Body.Close()
			return resp.StatusCode == http.StatusOK, fmt.Errorf("status %s", resp.Status)
		})
	}

	// The S3 example for real, in a namespace of its own: the operator
	// makes the workers' DaemonSet, the Dataset's volume and claim, and
	// writes the status of both CRs.
	ns := "team-a"
	if _, err := c.Kubectl(t, "create", "namespace", ns); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"s3.yaml", "dataload.yaml"} {
		if _, err := c.Kubectl(t, "apply", "-n", ns, "-f", filepath.Join(repoRoot, "examples/k8s", f)); err != nil {
			t.Fatal(err)
		}
	}
	alive := func() error {
		select {
		case <-proc.Done():
			return fmt.Errorf("the operator exited: %v", proc.Wait())
		default:
			return nil
		}
	}
	for _, o := range []struct {
		what string
		obj  client.Object
		key  types.NamespacedName
	}{
		{"the workers' DaemonSet", &appsv1.DaemonSet{}, types.NamespacedName{Namespace: ns, Name: "imagenet-worker"}},
		{"the Dataset's claim", &corev1.PersistentVolumeClaim{}, types.NamespacedName{Namespace: ns, Name: "imagenet"}},
		{"the Dataset's volume", &corev1.PersistentVolume{}, types.NamespacedName{Name: ns + "-imagenet"}},
	} {
		c.WaitFor(t, 60*time.Second, o.what, func() (bool, error) {
			if err := alive(); err != nil {
				return false, err
			}
			err := c.Client.Get(ctx, o.key, o.obj)
			return err == nil, err
		})
	}
	c.WaitFor(t, 60*time.Second, "the statuses of the Dataset, CacheRuntime and DataLoads", func() (bool, error) {
		if err := alive(); err != nil {
			return false, err
		}
		var ds v1alpha1.Dataset
		var rt v1alpha1.CacheRuntime
		var dls v1alpha1.DataLoadList
		if err := c.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: "imagenet"}, &ds); err != nil {
			return false, err
		}
		if err := c.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: "imagenet"}, &rt); err != nil {
			return false, err
		}
		if err := c.Client.List(ctx, &dls, client.InNamespace(ns)); err != nil {
			return false, err
		}
		phases := []string{ds.Status.Phase, rt.Status.Phase}
		for _, dl := range dls.Items {
			phases = append(phases, dl.Status.Phase)
		}
		return len(dls.Items) == 2 && !slices.Contains(phases, ""), fmt.Errorf("phases (dataset, runtime, loads) %q", phases)
	})
	// What the examples' README shows.
	out, err = c.Kubectl(t, "get", "datasets.granary.io", "-n", ns)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("kubectl get datasets.granary.io:\n%s", out)
	header := strings.Fields(strings.SplitN(out, "\n", 2)[0])
	wantHeader := strings.Fields("NAME UFS TOTAL SIZE CACHED CACHE CAPACITY CACHED PERCENTAGE PHASE AGE")
	if !slices.Equal(header, wantHeader) {
		t.Errorf("kubectl get datasets.granary.io header %q, want %q", header, wantHeader)
	}
	for _, res := range []string{"cacheruntimes.granary.io", "dataloads.granary.io"} {
		if out, err := c.Kubectl(t, "get", res, "-n", ns); err != nil {
			t.Error(err)
		} else {
			t.Logf("kubectl get %s:\n%s", res, out)
		}
	}
	// The short names and the category the README gives.
	for res, want := range map[string][]string{
		"gds":     {"dataset.granary.io/imagenet"},
		"gcr":     {"cacheruntime.granary.io/imagenet"},
		"gdl":     {"dataload.granary.io/imagenet-nightly-metadata", "dataload.granary.io/imagenet-warmup"},
		"granary": {"cacheruntime.granary.io/imagenet", "dataload.granary.io/imagenet-nightly-metadata", "dataload.granary.io/imagenet-warmup", "dataset.granary.io/imagenet"},
	} {
		out, err := c.Kubectl(t, "get", res, "-n", ns, "-o", "name")
		if err != nil {
			t.Error(err)
			continue
		}
		got := strings.Fields(out)
		sort.Strings(got)
		if !slices.Equal(got, want) {
			t.Errorf("kubectl get %s: %q, want %q", res, got, want)
		}
	}
	if err := alive(); err != nil {
		t.Fatalf("%v\n%s", err, proc.Log())
	}
	if errs := operatorErrors(proc.Log()); len(errs) > 0 {
		t.Errorf("the operator logged permission errors:\n%s", strings.Join(errs, "\n"))
	}
}

// operatorErrors are the lines of the operator's log where the API server
// refused it for want of permissions.
func operatorErrors(log string) []string {
	var out []string
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, "forbidden") || strings.Contains(l, "is attempting to grant RBAC permissions") {
			out = append(out, l)
		}
	}
	sort.Strings(out)
	return slices.Compact(out)
}
