package kubetest

import (
	"errors"
	"reflect"
	"strconv"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// fakeObjects serves config maps, secrets and tokens from maps.
type fakeObjects struct {
	cms     map[string]*corev1.ConfigMap
	secrets map[string]*corev1.Secret
	gets    int
	tokens  []string // audience/exp of each Token call
}

func (f *fakeObjects) ConfigMap(name string) (*corev1.ConfigMap, error) {
	f.gets++
	if cm, ok := f.cms[name]; ok {
		return cm, nil
	}
	return nil, apierrors.NewNotFound(schema.GroupResource{Resource: "configmaps"}, name)
}

func (f *fakeObjects) Secret(name string) (*corev1.Secret, error) {
	f.gets++
	if s, ok := f.secrets[name]; ok {
		return s, nil
	}
	return nil, apierrors.NewNotFound(schema.GroupResource{Resource: "secrets"}, name)
}

func (f *fakeObjects) Token(audience string, exp int64) (string, error) {
	f.tokens = append(f.tokens, audience+"/"+strconv.FormatInt(exp, 10))
	return "token-for-" + audience, nil
}

func testPod() *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name: "pod-a", Namespace: "ns1", UID: "uid-1",
			Labels:      map[string]string{"app": "x", "tier": "be"},
			Annotations: map[string]string{"note": `say "hi"`},
		},
		Spec: corev1.PodSpec{
			NodeName: "node-1", ServiceAccountName: "sa1",
			Containers: []corev1.Container{{
				Name: "main",
				Resources: corev1.ResourceRequirements{
					Limits:   corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("1500m"), corev1.ResourceMemory: resource.MustParse("64Mi")},
					Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("250m")},
				},
			}, {Name: "side"}},
		},
		Status: corev1.PodStatus{
			PodIP: "127.100.1.3", PodIPs: []corev1.PodIP{{IP: "127.100.1.3"}},
			HostIP: "127.99.0.1", HostIPs: []corev1.HostIP{{IP: "127.99.0.1"}},
		},
	}
}

func testNode() *corev1.Node {
	return &corev1.Node{Status: corev1.NodeStatus{Allocatable: corev1.ResourceList{
		corev1.ResourceCPU: resource.MustParse("16"), corev1.ResourceMemory: resource.MustParse("64Gi"),
		corev1.ResourceEphemeralStorage: resource.MustParse("100Gi"),
	}}}
}

func testObjects() *fakeObjects {
	return &fakeObjects{
		cms: map[string]*corev1.ConfigMap{
			"cfg": {Data: map[string]string{"A": "from-cm", "B": "b", "log.level": "debug"}},
		},
		secrets: map[string]*corev1.Secret{
			"sec": {Data: map[string][]byte{"PASSWORD": []byte("s3cret"), "A": []byte("from-secret")}},
		},
	}
}

func ptr[T any](v T) *T { return &v }

func TestContainerEnv(t *testing.T) {
	pod := testPod()
	c := &pod.Spec.Containers[0]
	c.EnvFrom = []corev1.EnvFromSource{
		{ConfigMapRef: &corev1.ConfigMapEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "cfg"}}},
		{Prefix: "S_", SecretRef: &corev1.SecretEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "sec"}}},
		{ConfigMapRef: &corev1.ConfigMapEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "nope"}, Optional: ptr(true)}},
	}
	field := func(p string) *corev1.EnvVarSource {
		return &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: p}}
	}
	res := func(r, div, ctr string) *corev1.EnvVarSource {
		s := &corev1.ResourceFieldSelector{Resource: r, ContainerName: ctr}
		if div != "" {
			s.Divisor = resource.MustParse(div)
		}
		return &corev1.EnvVarSource{ResourceFieldRef: s}
	}
	c.Env = []corev1.EnvVar{
		{Name: "PLAIN", Value: "v"},
		{Name: "REF", Value: "$(PLAIN)-$(A)-$(KUBERNETES_SERVICE_HOST)-$(LATER)-$$(PLAIN)"},
		{Name: "A", Value: "overridden"},
		{Name: "EMPTY"},
		{Name: "NAME", ValueFrom: field("metadata.name")},
		{Name: "NS", ValueFrom: field("metadata.namespace")},
		{Name: "UID", ValueFrom: field("metadata.uid")},
		{Name: "APP", ValueFrom: field("metadata.labels['app']")},
		{Name: "NOTE", ValueFrom: field("metadata.annotations['note']")},
		{Name: "LABELS", ValueFrom: field("metadata.labels")},
		{Name: "NODE", ValueFrom: field("spec.nodeName")},
		{Name: "SA", ValueFrom: field("spec.serviceAccountName")},
		{Name: "IP", ValueFrom: field("status.podIP")},
		{Name: "IPS", ValueFrom: field("status.podIPs")},
		{Name: "HOST", ValueFrom: field("status.hostIP")},
		{Name: "CPU", ValueFrom: res("limits.cpu", "", "")},
		{Name: "CPU_M", ValueFrom: res("limits.cpu", "1m", "")},
		{Name: "REQ_CPU_M", ValueFrom: res("requests.cpu", "1m", "")},
		{Name: "MEM_MI", ValueFrom: res("limits.memory", "1Mi", "")},
		{Name: "REQ_MEM", ValueFrom: res("requests.memory", "", "")},
		{Name: "SIDE_CPU", ValueFrom: res("limits.cpu", "", "side")}, // no limit: the node's
		{Name: "CM", ValueFrom: &corev1.EnvVarSource{ConfigMapKeyRef: &corev1.ConfigMapKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "cfg"}, Key: "log.level"}}},
		{Name: "SEC", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "sec"}, Key: "PASSWORD"}}},
		{Name: "OPT_KEY", ValueFrom: &corev1.EnvVarSource{ConfigMapKeyRef: &corev1.ConfigMapKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "cfg"}, Key: "nokey", Optional: ptr(true)}}},
		{Name: "OPT_OBJ", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "nosecret"}, Key: "k", Optional: ptr(true)}}},
		{Name: "LATER", Value: "late"},
	}
	svc, err := serviceEnv(pod, []corev1.Service{
		{ObjectMeta: metav1.ObjectMeta{Name: "kubernetes", Namespace: "default"}, Spec: corev1.ServiceSpec{ClusterIP: "10.0.0.1", Ports: []corev1.ServicePort{{Name: "https", Port: 443}}}},
	}, "127.0.0.1:6443")
	if err != nil {
		t.Fatal(err)
	}
	objs := testObjects()
	env, err := containerEnv(pod, c, testNode(), svc, objs)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"PLAIN":      "v",
		"REF":        "v-from-cm-127.0.0.1-$(LATER)-$(PLAIN)",
		"A":          "overridden",
		"B":          "b",
		"log.level":  "debug",
		"S_PASSWORD": "s3cret",
		"S_A":        "from-secret",
		"EMPTY":      "",
		"NAME":       "pod-a",
		"NS":         "ns1",
		"UID":        "uid-1",
		"APP":        "x",
		"NOTE":       `say "hi"`,
		"LABELS":     "app=\"x\"\ntier=\"be\"",
		"NODE":       "node-1",
		"SA":         "sa1",
		"IP":         "127.100.1.3",
		"IPS":        "127.100.1.3",
		"HOST":       "127.99.0.1",
		"CPU":        "2",
		"CPU_M":      "1500",
		"REQ_CPU_M":  "250",
		"MEM_MI":     "64",
		"REQ_MEM":    "0",
		"SIDE_CPU":   "16",
		"CM":         "debug",
		"SEC":        "s3cret",
		"LATER":      "late",
		// The service variables of the API server.
		"KUBERNETES_SERVICE_HOST":        "127.0.0.1",
		"KUBERNETES_SERVICE_PORT":        "6443",
		"KUBERNETES_SERVICE_PORT_HTTPS":  "6443",
		"KUBERNETES_PORT":                "tcp://127.0.0.1:6443",
		"KUBERNETES_PORT_6443_TCP":       "tcp://127.0.0.1:6443",
		"KUBERNETES_PORT_6443_TCP_PROTO": "tcp",
		"KUBERNETES_PORT_6443_TCP_PORT":  "6443",
		"KUBERNETES_PORT_6443_TCP_ADDR":  "127.0.0.1",
	}
	got := env.Map()
	if !reflect.DeepEqual(got, want) {
		for k, v := range want {
			if g, ok := got[k]; !ok || g != v {
				t.Errorf("%s = %q (set %v), want %q", k, g, ok, v)
			}
		}
		for k, v := range got {
			if _, ok := want[k]; !ok {
				t.Errorf("unexpected %s=%q", k, v)
			}
		}
	}
	// Service variables first, then the container's in order.
	s := env.Strings()
	if !strings.HasPrefix(s[0], "KUBERNETES_SERVICE_HOST=") {
		t.Errorf("first variable %q, want the service host", s[0])
	}
	if cms := objs.gets; cms != 3 { // cfg, sec, nope (cached afterwards), nosecret
		t.Logf("API reads: %d", cms)
	}
}

func TestContainerEnvErrors(t *testing.T) {
	for name, e := range map[string]corev1.EnvVar{
		"missing configMap": {Name: "X", ValueFrom: &corev1.EnvVarSource{ConfigMapKeyRef: &corev1.ConfigMapKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "nope"}, Key: "k"}}},
		"missing key":       {Name: "X", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "sec"}, Key: "nokey"}}},
		"bad field":         {Name: "X", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "spec.bogus"}}},
		"bad resource":      {Name: "X", ValueFrom: &corev1.EnvVarSource{ResourceFieldRef: &corev1.ResourceFieldSelector{Resource: "limits.gpu"}}},
		"bad container":     {Name: "X", ValueFrom: &corev1.EnvVarSource{ResourceFieldRef: &corev1.ResourceFieldSelector{Resource: "limits.cpu", ContainerName: "zz"}}},
	} {
		pod := testPod()
		c := &pod.Spec.Containers[0]
		c.Env = []corev1.EnvVar{e}
		if _, err := containerEnv(pod, c, nil, &envList{}, testObjects()); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	// A non-optional envFrom of a missing object fails, an error other
	// than NotFound fails even when optional.
	pod := testPod()
	c := &pod.Spec.Containers[0]
	c.EnvFrom = []corev1.EnvFromSource{{SecretRef: &corev1.SecretEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "nope"}}}}
	if _, err := containerEnv(pod, c, nil, &envList{}, testObjects()); !apierrors.IsNotFound(errors.Unwrap(err)) {
		t.Errorf("envFrom missing secret: %v", err)
	}
}

func TestServiceEnv(t *testing.T) {
	pod := testPod()
	services := []corev1.Service{
		{ObjectMeta: metav1.ObjectMeta{Name: "kubernetes", Namespace: "default"}, Spec: corev1.ServiceSpec{ClusterIP: "10.0.0.1", Ports: []corev1.ServicePort{{Name: "https", Port: 443}}}},
		{ObjectMeta: metav1.ObjectMeta{Name: "my-svc", Namespace: "ns1"}, Spec: corev1.ServiceSpec{ClusterIP: "10.0.0.7", Ports: []corev1.ServicePort{
			{Name: "http", Port: 80}, {Name: "grpc-api", Port: 9000, Protocol: corev1.ProtocolUDP}}}},
		{ObjectMeta: metav1.ObjectMeta{Name: "headless", Namespace: "ns1"}, Spec: corev1.ServiceSpec{ClusterIP: "None", Ports: []corev1.ServicePort{{Port: 1}}}},
		{ObjectMeta: metav1.ObjectMeta{Name: "other", Namespace: "default"}, Spec: corev1.ServiceSpec{ClusterIP: "10.0.0.9", Ports: []corev1.ServicePort{{Port: 1}}}},
	}
	env, err := serviceEnv(pod, services, "")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"MY_SVC_SERVICE_HOST":           "10.0.0.7",
		"MY_SVC_SERVICE_PORT":           "80",
		"MY_SVC_SERVICE_PORT_HTTP":      "80",
		"MY_SVC_SERVICE_PORT_GRPC_API":  "9000",
		"MY_SVC_PORT":                   "tcp://10.0.0.7:80",
		"MY_SVC_PORT_80_TCP":            "tcp://10.0.0.7:80",
		"MY_SVC_PORT_80_TCP_PROTO":      "tcp",
		"MY_SVC_PORT_80_TCP_PORT":       "80",
		"MY_SVC_PORT_80_TCP_ADDR":       "10.0.0.7",
		"MY_SVC_PORT_9000_UDP":          "udp://10.0.0.7:9000",
		"MY_SVC_PORT_9000_UDP_PROTO":    "udp",
		"MY_SVC_PORT_9000_UDP_PORT":     "9000",
		"MY_SVC_PORT_9000_UDP_ADDR":     "10.0.0.7",
		"KUBERNETES_SERVICE_HOST":       "10.0.0.1",
		"KUBERNETES_SERVICE_PORT":       "443",
		"KUBERNETES_SERVICE_PORT_HTTPS": "443",
		"KUBERNETES_PORT":               "tcp://10.0.0.1:443",
		"KUBERNETES_PORT_443_TCP":       "tcp://10.0.0.1:443",
		"KUBERNETES_PORT_443_TCP_PROTO": "tcp",
		"KUBERNETES_PORT_443_TCP_PORT":  "443",
		"KUBERNETES_PORT_443_TCP_ADDR":  "10.0.0.1",
	}
	if got := env.Map(); !reflect.DeepEqual(got, want) {
		t.Errorf("service env:\n got %v\nwant %v", got, want)
	}
	pod.Spec.EnableServiceLinks = ptr(false)
	env, _ = serviceEnv(pod, services, "")
	if _, ok := env.Get("MY_SVC_SERVICE_HOST"); ok {
		t.Error("enableServiceLinks=false: MY_SVC_SERVICE_HOST set")
	}
	if _, ok := env.Get("KUBERNETES_SERVICE_HOST"); !ok {
		t.Error("enableServiceLinks=false: KUBERNETES_SERVICE_HOST not set (it always is)")
	}
}

func TestProcessArgv(t *testing.T) {
	env := &envList{}
	env.Set("X", "1")
	for _, c := range []struct {
		cmd, args, ep, cmdImg, want []string
	}{
		{nil, nil, []string{"/ep"}, []string{"c1"}, []string{"/ep", "c1"}},
		{[]string{"/bin/x", "$(X)"}, nil, []string{"/ep"}, []string{"c1"}, []string{"/bin/x", "1"}},
		{nil, []string{"a$(X)", "$$(X)"}, []string{"/ep"}, []string{"c1"}, []string{"/ep", "a1", "$(X)"}},
		{[]string{"/bin/x"}, []string{"$(Y)"}, []string{"/ep"}, []string{"c1"}, []string{"/bin/x", "$(Y)"}},
	} {
		got, err := processArgv(&corev1.Container{Command: c.cmd, Args: c.args}, c.ep, c.cmdImg, env)
		if err != nil || !reflect.DeepEqual(got, c.want) {
			t.Errorf("command %q args %q: %q, %v; want %q", c.cmd, c.args, got, err, c.want)
		}
	}
	if _, err := processArgv(&corev1.Container{}, nil, nil, env); err == nil {
		t.Error("no command: no error")
	}
}

func TestPodFieldSubscripts(t *testing.T) {
	for in, want := range map[string][3]string{
		"metadata.labels['a']":     {"metadata.labels", "a", "true"},
		"metadata.labels['a[b]c']": {"metadata.labels", "a[b]c", "true"},
		"metadata.labels['']":      {"metadata.labels", "", "true"},
		"metadata.labels":          {"", "", "false"},
		"['x']":                    {"", "", "false"},
	} {
		b, k, ok := splitSubscript(in)
		if b != want[0] || k != want[1] || (ok != (want[2] == "true")) {
			t.Errorf("splitSubscript(%q) = %q %q %v", in, b, k, ok)
		}
	}
	if got := formatMap(map[string]string{"b": "2", "a": "x\ny"}); got != "a=\"x\\ny\"\nb=\"2\"" {
		t.Errorf("formatMap = %q", got)
	}
}
