package kubetest

import (
	"fmt"
	"math"
	"net"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
)

// objects is what a pod's env and volumes read from the API server, as the
// kubelet reads it: with the node's credentials, so RBAC of the pod's
// service account does not apply. Errors that say "not found" must satisfy
// apierrors.IsNotFound (optional references skip those).
type objects interface {
	ConfigMap(name string) (*corev1.ConfigMap, error)
	Secret(name string) (*corev1.Secret, error)
	// Token returns a token of the pod's service account, bound to the
	// pod, as the TokenRequest API issues it.
	Token(audience string, expirationSeconds int64) (string, error)
}

// envList is an ordered environment: Set replaces a variable in place.
type envList struct {
	names []string
	vals  map[string]string
}

func (e *envList) Set(name, value string) {
	if e.vals == nil {
		e.vals = map[string]string{}
	}
	if _, ok := e.vals[name]; !ok {
		e.names = append(e.names, name)
	}
	e.vals[name] = value
}

func (e *envList) Get(name string) (string, bool) {
	v, ok := e.vals[name]
	return v, ok
}

// Strings returns NAME=VALUE entries in order.
func (e *envList) Strings() []string {
	out := make([]string, 0, len(e.names))
	for _, n := range e.names {
		out = append(out, n+"="+e.vals[n])
	}
	return out
}

// Map returns a copy of the variables.
func (e *envList) Map() map[string]string {
	m := make(map[string]string, len(e.vals))
	for k, v := range e.vals {
		m[k] = v
	}
	return m
}

// serviceEnv returns the variables the kubelet derives from Services (the
// "service links"): those of every Service with a cluster IP in the pod's
// namespace when enableServiceLinks, and always those of the "kubernetes"
// Service of namespace default. services holds both namespaces' Services;
// apiserver, if set, replaces the address of the "kubernetes" Service (its
// cluster IP leads nowhere without kube-proxy) with the API server's
// HOST:PORT, so that in-cluster clients reach the test's API server.
func serviceEnv(pod *corev1.Pod, services []corev1.Service, apiserver string) (*envList, error) {
	links := pod.Spec.EnableServiceLinks == nil || *pod.Spec.EnableServiceLinks
	env := &envList{}
	var master *corev1.Service
	for i := range services {
		s := &services[i]
		if s.Spec.ClusterIP == "" || s.Spec.ClusterIP == corev1.ClusterIPNone || len(s.Spec.Ports) == 0 {
			continue
		}
		if s.Namespace == "default" && s.Name == "kubernetes" {
			master = s
			continue // added last, so it wins over a "kubernetes" Service of the pod's namespace
		}
		if links && s.Namespace == pod.Namespace {
			addServiceVars(env, s.Name, s.Spec.ClusterIP, s.Spec.Ports)
		}
	}
	if master != nil {
		ip, ports := master.Spec.ClusterIP, master.Spec.Ports
		if apiserver != "" {
			host, port, err := net.SplitHostPort(apiserver)
			if err != nil {
				return nil, fmt.Errorf("API server address %q: %w", apiserver, err)
			}
			p, err := strconv.Atoi(port)
			if err != nil {
				return nil, fmt.Errorf("API server address %q: %w", apiserver, err)
			}
			ip = host
			ports = []corev1.ServicePort{{Name: "https", Port: int32(p), Protocol: corev1.ProtocolTCP}}
		}
		addServiceVars(env, "kubernetes", ip, ports)
	}
	return env, nil
}

func addServiceVars(env *envList, service, ip string, ports []corev1.ServicePort) {
	prefix := strings.ToUpper(strings.ReplaceAll(service, "-", "_"))
	env.Set(prefix+"_SERVICE_HOST", ip)
	env.Set(prefix+"_SERVICE_PORT", strconv.Itoa(int(ports[0].Port)))
	for _, p := range ports {
		if p.Name != "" {
			env.Set(prefix+"_SERVICE_PORT_"+strings.ToUpper(strings.ReplaceAll(p.Name, "-", "_")), strconv.Itoa(int(p.Port)))
		}
	}
	for i, p := range ports {
		proto := strings.ToLower(string(p.Protocol))
		if proto == "" {
			proto = "tcp"
		}
		url := proto + "://" + net.JoinHostPort(ip, strconv.Itoa(int(p.Port)))
		if i == 0 {
			env.Set(prefix+"_PORT", url)
		}
		pp := prefix + "_PORT_" + strconv.Itoa(int(p.Port)) + "_" + strings.ToUpper(proto)
		env.Set(pp, url)
		env.Set(pp+"_PROTO", proto)
		env.Set(pp+"_PORT", strconv.Itoa(int(p.Port)))
		env.Set(pp+"_ADDR", ip)
	}
}

// containerEnv resolves a container's environment as the kubelet does:
// envFrom first (in order, a prefix added to each key), then env in order,
// each value with $(VAR) references expanded against the variables defined
// before it and the service variables, each valueFrom resolved (not
// expanded); optional references to missing objects or keys leave the
// variable out. The service variables come first, overridden by the
// container's. node (may be nil) gives the allocatable resources that stand
// for missing limits.
func containerEnv(pod *corev1.Pod, c *corev1.Container, node *corev1.Node, services *envList, objs objects) (*envList, error) {
	own := &envList{}
	cms := map[string]*corev1.ConfigMap{}
	secrets := map[string]*corev1.Secret{}
	getCM := func(name string) (*corev1.ConfigMap, error) {
		if cm, ok := cms[name]; ok {
			return cm, nil
		}
		cm, err := objs.ConfigMap(name)
		if err == nil {
			cms[name] = cm
		}
		return cm, err
	}
	getSecret := func(name string) (*corev1.Secret, error) {
		if s, ok := secrets[name]; ok {
			return s, nil
		}
		s, err := objs.Secret(name)
		if err == nil {
			secrets[name] = s
		}
		return s, err
	}
	for _, from := range c.EnvFrom {
		switch {
		case from.ConfigMapRef != nil:
			cm, err := getCM(from.ConfigMapRef.Name)
			if err != nil {
				if apierrors.IsNotFound(err) && isTrue(from.ConfigMapRef.Optional) {
					continue
				}
				return nil, fmt.Errorf("envFrom configMap %q: %w", from.ConfigMapRef.Name, err)
			}
			for _, k := range sortedKeys(cm.Data) {
				own.Set(from.Prefix+k, cm.Data[k])
			}
		case from.SecretRef != nil:
			s, err := getSecret(from.SecretRef.Name)
			if err != nil {
				if apierrors.IsNotFound(err) && isTrue(from.SecretRef.Optional) {
					continue
				}
				return nil, fmt.Errorf("envFrom secret %q: %w", from.SecretRef.Name, err)
			}
			for _, k := range sortedKeys(s.Data) {
				own.Set(from.Prefix+k, string(s.Data[k]))
			}
		}
	}
	for _, e := range c.Env {
		val := e.Value
		switch {
		case val != "":
			val = Expand(val, lookupIn(own.vals, services.vals))
		case e.ValueFrom == nil:
		case e.ValueFrom.FieldRef != nil:
			v, err := podField(pod, e.ValueFrom.FieldRef.FieldPath)
			if err != nil {
				return nil, fmt.Errorf("env %s: %w", e.Name, err)
			}
			val = v
		case e.ValueFrom.ResourceFieldRef != nil:
			v, err := resourceField(pod, c, node, e.ValueFrom.ResourceFieldRef)
			if err != nil {
				return nil, fmt.Errorf("env %s: %w", e.Name, err)
			}
			val = v
		case e.ValueFrom.ConfigMapKeyRef != nil:
			ref := e.ValueFrom.ConfigMapKeyRef
			cm, err := getCM(ref.Name)
			if err != nil {
				if apierrors.IsNotFound(err) && isTrue(ref.Optional) {
					continue
				}
				return nil, fmt.Errorf("env %s: configMap %q: %w", e.Name, ref.Name, err)
			}
			v, ok := cm.Data[ref.Key]
			if !ok {
				if isTrue(ref.Optional) {
					continue
				}
				return nil, fmt.Errorf("env %s: no key %q in configMap %s/%s", e.Name, ref.Key, pod.Namespace, ref.Name)
			}
			val = v
		case e.ValueFrom.SecretKeyRef != nil:
			ref := e.ValueFrom.SecretKeyRef
			s, err := getSecret(ref.Name)
			if err != nil {
				if apierrors.IsNotFound(err) && isTrue(ref.Optional) {
					continue
				}
				return nil, fmt.Errorf("env %s: secret %q: %w", e.Name, ref.Name, err)
			}
			v, ok := s.Data[ref.Key]
			if !ok {
				if isTrue(ref.Optional) {
					continue
				}
				return nil, fmt.Errorf("env %s: no key %q in secret %s/%s", e.Name, ref.Key, pod.Namespace, ref.Name)
			}
			val = string(v)
		default:
			return nil, fmt.Errorf("env %s: unsupported valueFrom (only fieldRef, resourceFieldRef, configMapKeyRef, secretKeyRef)", e.Name)
		}
		own.Set(e.Name, val)
	}
	out := &envList{}
	for _, n := range services.names {
		if _, ok := own.vals[n]; !ok {
			out.Set(n, services.vals[n])
		}
	}
	for _, n := range own.names {
		out.Set(n, own.vals[n])
	}
	return out, nil
}

// podField returns the value of a downward API field path (apiVersion v1).
func podField(pod *corev1.Pod, path string) (string, error) {
	if base, key, ok := splitSubscript(path); ok {
		switch base {
		case "metadata.labels":
			return pod.Labels[key], nil
		case "metadata.annotations":
			return pod.Annotations[key], nil
		}
		return "", fmt.Errorf("field path %q does not take a subscript", path)
	}
	switch path {
	case "metadata.name":
		return pod.Name, nil
	case "metadata.namespace":
		return pod.Namespace, nil
	case "metadata.uid":
		return string(pod.UID), nil
	case "metadata.labels":
		return formatMap(pod.Labels), nil
	case "metadata.annotations":
		return formatMap(pod.Annotations), nil
	case "spec.nodeName":
		return pod.Spec.NodeName, nil
	case "spec.serviceAccountName":
		return pod.Spec.ServiceAccountName, nil
	case "status.hostIP":
		return pod.Status.HostIP, nil
	case "status.hostIPs":
		var ips []string
		for _, ip := range pod.Status.HostIPs {
			ips = append(ips, ip.IP)
		}
		if len(ips) == 0 && pod.Status.HostIP != "" {
			ips = []string{pod.Status.HostIP}
		}
		return strings.Join(ips, ","), nil
	case "status.podIP":
		return pod.Status.PodIP, nil
	case "status.podIPs":
		var ips []string
		for _, ip := range pod.Status.PodIPs {
			ips = append(ips, ip.IP)
		}
		if len(ips) == 0 && pod.Status.PodIP != "" {
			ips = []string{pod.Status.PodIP}
		}
		return strings.Join(ips, ","), nil
	}
	return "", fmt.Errorf("unsupported field path %q", path)
}

// splitSubscript splits "metadata.labels['key']" into its path and key.
func splitSubscript(path string) (base, key string, ok bool) {
	if !strings.HasSuffix(path, "']") {
		return "", "", false
	}
	i := strings.Index(path, "['")
	if i <= 0 {
		return "", "", false
	}
	return path[:i], path[i+2 : len(path)-2], true
}

// formatMap formats labels or annotations as the downward API does: sorted
// key="quoted value" lines, no newline at the end.
func formatMap(m map[string]string) string {
	var b strings.Builder
	for i, k := range sortedKeys(m) {
		if i > 0 {
			b.WriteByte('\n')
		}
		b.WriteString(k)
		b.WriteByte('=')
		b.WriteString(strconv.Quote(m[k]))
	}
	return b.String()
}

// resourceField returns a container's resource limit or request as the
// downward API does: in units of the divisor (default 1), rounded up. A
// missing limit of cpu, memory or ephemeral-storage is the node's
// allocatable amount (when node is known).
func resourceField(pod *corev1.Pod, c *corev1.Container, node *corev1.Node, ref *corev1.ResourceFieldSelector) (string, error) {
	if ref.ContainerName != "" && ref.ContainerName != c.Name {
		c = findContainer(pod, ref.ContainerName)
		if c == nil {
			return "", fmt.Errorf("resourceFieldRef: no container %q", ref.ContainerName)
		}
	}
	kind, name, ok := strings.Cut(ref.Resource, ".")
	if !ok || (kind != "limits" && kind != "requests") {
		return "", fmt.Errorf("unsupported resource %q", ref.Resource)
	}
	rn := corev1.ResourceName(name)
	switch {
	case rn == corev1.ResourceCPU, rn == corev1.ResourceMemory, rn == corev1.ResourceEphemeralStorage:
	case strings.HasPrefix(name, corev1.ResourceHugePagesPrefix):
	default:
		return "", fmt.Errorf("unsupported resource %q", ref.Resource)
	}
	list := c.Resources.Requests
	if kind == "limits" {
		list = c.Resources.Limits
	}
	q, ok := list[rn]
	if !ok && kind == "limits" && node != nil && !strings.HasPrefix(name, corev1.ResourceHugePagesPrefix) {
		q, ok = node.Status.Allocatable[rn]
	}
	if !ok {
		q = resource.Quantity{}
	}
	divisor := ref.Divisor
	if divisor.IsZero() {
		divisor = resource.MustParse("1")
	}
	var v float64
	if rn == corev1.ResourceCPU {
		v = math.Ceil(float64(q.MilliValue()) / float64(divisor.MilliValue()))
	} else {
		v = math.Ceil(float64(q.Value()) / float64(divisor.Value()))
	}
	return strconv.FormatInt(int64(v), 10), nil
}

// findContainer returns the container (or init container) of that name.
func findContainer(pod *corev1.Pod, name string) *corev1.Container {
	for i := range pod.Spec.Containers {
		if pod.Spec.Containers[i].Name == name {
			return &pod.Spec.Containers[i]
		}
	}
	for i := range pod.Spec.InitContainers {
		if pod.Spec.InitContainers[i].Name == name {
			return &pod.Spec.InitContainers[i]
		}
	}
	return nil
}

// processArgv returns what a container runs, as Kubernetes combines the
// container's command and args with the image's entrypoint and cmd, with
// $(VAR) references expanded against the container's environment: the
// command replaces the entrypoint and drops the image's cmd; args replace
// the cmd.
func processArgv(c *corev1.Container, imageEntrypoint, imageCmd []string, env *envList) ([]string, error) {
	var argv []string
	lookup := lookupIn(env.vals)
	expand := func(s []string) []string {
		out := make([]string, len(s))
		for i, a := range s {
			out[i] = Expand(a, lookup)
		}
		return out
	}
	switch {
	case len(c.Command) > 0:
		argv = append(expand(c.Command), expand(c.Args)...)
	case len(c.Args) > 0:
		argv = append(append([]string{}, imageEntrypoint...), expand(c.Args)...)
	default:
		argv = append(append([]string{}, imageEntrypoint...), imageCmd...)
	}
	if len(argv) == 0 {
		return nil, fmt.Errorf("container %q: no command (and no image entrypoint or cmd given in RunOptions)", c.Name)
	}
	return argv, nil
}

func isTrue(b *bool) bool { return b != nil && *b }
