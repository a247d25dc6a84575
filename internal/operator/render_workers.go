package operator

import (
	"fmt"
	"path"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/granary-cache/granary/api/v1alpha1"
)

// The objects a CacheRuntime becomes. Names derive from the runtime's:
//
//	NAME-config   ConfigMap: granary.yaml
//	NAME-token    Secret: the token workers and clients share
//	NAME-worker   ServiceAccount, Role and RoleBinding (Leases), DaemonSet
//	              or StatefulSet
//	NAME-workers  headless Service (the StatefulSet's, and for scraping)

func configMapName(rt string) string { return rt + "-config" }
func tokenName(rt string) string     { return rt + "-token" }
func workerName(rt string) string    { return rt + "-worker" }
func serviceName(rt string) string   { return rt + "-workers" }

// Images says which images run granary.
type Images struct {
	// Default runs workers and loaders.
	Default string
	// CephFS runs them when a dataset is on cephfs:// (its image carries
	// libcephfs).
	CephFS     string
	PullPolicy corev1.PullPolicy
}

// pick returns the image for datasets on these schemes.
func (im Images) pick(cephfs bool) string {
	if cephfs && im.CephFS != "" {
		return im.CephFS
	}
	return im.Default
}

func workerLabels(rt string) map[string]string {
	return map[string]string{
		"app.kubernetes.io/name":       "granary",
		"app.kubernetes.io/instance":   rt,
		v1alpha1.LabelComponent:        "worker",
		v1alpha1.LabelRuntime:          rt,
		"app.kubernetes.io/managed-by": "granary-operator",
	}
}

func selectorLabels(rt string) map[string]string {
	return map[string]string{v1alpha1.LabelRuntime: rt, v1alpha1.LabelComponent: "worker"}
}

// hostDir is a runtime's own directory under a node's path.
func hostDir(rt *v1alpha1.CacheRuntime, base string) string {
	return path.Join(base, rt.Namespace+"-"+rt.Name)
}

// usesCephFS reports whether any dataset is on CephFS.
func usesCephFS(datasets []*v1alpha1.Dataset) bool {
	for _, ds := range datasets {
		if strings.HasPrefix(ds.Spec.UFS, "cephfs://") {
			return true
		}
	}
	return false
}

// workerSecurity is the worker container's security context: with
// spec.worker.hugePages, CAP_SYS_ADMIN, to remount its MEM tier's tmpfs
// with huge pages, and no AppArmor profile (the container runtime's
// default one forbids mount whatever the capabilities).
func workerSecurity(w v1alpha1.WorkerSpec) *corev1.SecurityContext {
	if !w.HugePages {
		return nil
	}
	return &corev1.SecurityContext{
		Capabilities:    &corev1.Capabilities{Add: []corev1.Capability{"SYS_ADMIN"}},
		AppArmorProfile: &corev1.AppArmorProfile{Type: corev1.AppArmorProfileTypeUnconfined},
	}
}

// workerPodSpec is the pod of one worker.
func workerPodSpec(rt *v1alpha1.CacheRuntime, r Rendered, image string, im Images, statefulSet bool) corev1.PodTemplateSpec {
	w := rt.Spec.Worker
	port := w.Port
	if port == 0 {
		port = DefaultPort
	}
	if w.Image != "" {
		image = w.Image
	}
	pull := w.ImagePullPolicy
	if pull == "" {
		pull = im.PullPolicy
	}
	state := w.StateDir
	if state == "" {
		state = stateDir
	}
	dirOrCreate := corev1.HostPathDirectoryOrCreate
	volumes := []corev1.Volume{
		{Name: "config", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
			LocalObjectReference: corev1.LocalObjectReference{Name: configMapName(rt.Name)}}}},
		{Name: "token", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: tokenName(rt.Name)}}},
		{Name: "state", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: hostDir(rt, state), Type: &dirOrCreate}}},
	}
	mounts := []corev1.VolumeMount{
		{Name: "config", MountPath: configDir, ReadOnly: true},
		{Name: "token", MountPath: tokenDir, ReadOnly: true},
		{Name: "state", MountPath: stateDir},
	}
	for _, t := range rt.Spec.Tiers {
		name := "tier-" + strings.ToLower(t.Name)
		var src corev1.VolumeSource
		switch {
		case t.Medium == v1alpha1.MediumMemory && t.Path == "":
			q := t.Quota.DeepCopy()
			src.EmptyDir = &corev1.EmptyDirVolumeSource{Medium: corev1.StorageMediumMemory, SizeLimit: &q}
		default:
			// A node directory: the cache outlives the pod, and a restarted
			// worker finds it again.
			src.HostPath = &corev1.HostPathVolumeSource{Path: hostDir(rt, t.Path), Type: &dirOrCreate}
		}
		volumes = append(volumes, corev1.Volume{Name: name, VolumeSource: src})
		mounts = append(mounts, corev1.VolumeMount{Name: name, MountPath: tierPath(t)})
	}
	// Each Secret a dataset reads is mounted whole at secretsRoot/NAME.
	seen := map[string]bool{}
	for _, s := range r.Secrets {
		if seen[s.Secret] {
			continue
		}
		seen[s.Secret] = true
		name := "secret-" + s.Secret
		if len(name) > 63 {
			name = name[:63]
		}
		name = strings.TrimRight(strings.ReplaceAll(name, ".", "-"), "-")
		volumes = append(volumes, corev1.Volume{Name: name, VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: s.Secret}}})
		mounts = append(mounts, corev1.VolumeMount{Name: name, MountPath: path.Join(secretsRoot, s.Secret), ReadOnly: true})
	}
	id := "$(GRANARY_NODE)"
	if statefulSet {
		id = "$(GRANARY_POD)"
	}
	env := []corev1.EnvVar{
		{Name: "GRANARY_NODE", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "spec.nodeName"}}},
		{Name: "GRANARY_POD", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
		{Name: "GRANARY_POD_IP", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.podIP"}}},
		// `kubectl exec ... -- granary status` finds the configuration.
		{Name: "GRANARY_CONFIG", Value: configFile},
	}
	if !w.Resources.Limits.Memory().IsZero() {
		// The Go runtime collects before the container's limit is hit.
		env = append(env, corev1.EnvVar{Name: "GOMEMLIMIT", ValueFrom: &corev1.EnvVarSource{ResourceFieldRef: &corev1.ResourceFieldSelector{
			ContainerName: "worker", Resource: "limits.memory", Divisor: resource.MustParse("1")}}})
	}
	c := corev1.Container{
		Name:            "worker",
		Image:           image,
		ImagePullPolicy: pull,
		Command:         []string{"granary"},
		Args: []string{"worker", "--config", configFile, "--id", id, "--host", "$(GRANARY_NODE)",
			"--listen", fmt.Sprintf("$(GRANARY_POD_IP):%d", port), "--admin", fmt.Sprintf("$(GRANARY_POD_IP):%d", port+1),
			"--advertise", fmt.Sprintf("$(GRANARY_POD_IP):%d", port)},
		Env: env,
		Ports: []corev1.ContainerPort{
			{Name: "data", ContainerPort: port, Protocol: corev1.ProtocolTCP},
			{Name: "admin", ContainerPort: port + 1, Protocol: corev1.ProtocolTCP},
		},
		Resources:       w.Resources,
		VolumeMounts:    mounts,
		SecurityContext: workerSecurity(w),
		ReadinessProbe: &corev1.Probe{
			ProbeHandler:  corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: intstr.FromString("admin")}},
			PeriodSeconds: 5,
		},
		LivenessProbe: &corev1.Probe{
			ProbeHandler:     corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromString("data")}},
			PeriodSeconds:    10,
			FailureThreshold: 6,
		},
	}
	return corev1.PodTemplateSpec{
		ObjectMeta: metav1.ObjectMeta{
			Labels: workerLabels(rt.Name),
			Annotations: map[string]string{
				"granary.io/config-hash":                  r.Hash,
				"prometheus.io/scrape":                    "true",
				"prometheus.io/port":                      fmt.Sprint(port + 1),
				"kubectl.kubernetes.io/default-container": "worker",
			},
		},
		Spec: corev1.PodSpec{
			ServiceAccountName:            workerName(rt.Name),
			NodeSelector:                  w.NodeSelector,
			Tolerations:                   w.Tolerations,
			HostNetwork:                   w.HostNetwork,
			DNSPolicy:                     dnsPolicy(w.HostNetwork),
			TerminationGracePeriodSeconds: ptr(int64(30)),
			Containers:                    []corev1.Container{c},
			Volumes:                       volumes,
		},
	}
}

func dnsPolicy(hostNetwork bool) corev1.DNSPolicy {
	if hostNetwork {
		return corev1.DNSClusterFirstWithHostNet
	}
	return corev1.DNSClusterFirst
}

func ptr[T any](v T) *T { return &v }

// workerDaemonSet runs a worker on every selected node.
func workerDaemonSet(rt *v1alpha1.CacheRuntime, tmpl corev1.PodTemplateSpec) *appsv1.DaemonSet {
	return &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Name: workerName(rt.Name), Namespace: rt.Namespace, Labels: workerLabels(rt.Name)},
		Spec: appsv1.DaemonSetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: selectorLabels(rt.Name)},
			Template: tmpl,
			UpdateStrategy: appsv1.DaemonSetUpdateStrategy{Type: appsv1.RollingUpdateDaemonSetStrategyType,
				RollingUpdate: &appsv1.RollingUpdateDaemonSet{MaxUnavailable: ptr(intstr.FromInt32(1))}},
		},
	}
}

// workerStatefulSet runs a fixed number of workers with stable names.
func workerStatefulSet(rt *v1alpha1.CacheRuntime, tmpl corev1.PodTemplateSpec) *appsv1.StatefulSet {
	return &appsv1.StatefulSet{
		ObjectMeta: metav1.ObjectMeta{Name: workerName(rt.Name), Namespace: rt.Namespace, Labels: workerLabels(rt.Name)},
		Spec: appsv1.StatefulSetSpec{
			Replicas:            rt.Spec.Replicas,
			ServiceName:         serviceName(rt.Name),
			PodManagementPolicy: appsv1.ParallelPodManagement,
			Selector:            &metav1.LabelSelector{MatchLabels: selectorLabels(rt.Name)},
			Template:            tmpl,
		},
	}
}

// workerService is the headless Service of the workers.
func workerService(rt *v1alpha1.CacheRuntime) *corev1.Service {
	port := rt.Spec.Worker.Port
	if port == 0 {
		port = DefaultPort
	}
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: serviceName(rt.Name), Namespace: rt.Namespace, Labels: workerLabels(rt.Name)},
		Spec: corev1.ServiceSpec{
			ClusterIP:                corev1.ClusterIPNone,
			Selector:                 selectorLabels(rt.Name),
			PublishNotReadyAddresses: true,
			Ports: []corev1.ServicePort{
				{Name: "data", Port: port, TargetPort: intstr.FromString("data")},
				{Name: "admin", Port: port + 1, TargetPort: intstr.FromString("admin")},
			},
		},
	}
}

// workerRBAC is what a worker may do: hold and watch its cluster's Leases.
func workerRBAC(rt *v1alpha1.CacheRuntime) (*corev1.ServiceAccount, *rbacv1.Role, *rbacv1.RoleBinding) {
	meta := metav1.ObjectMeta{Name: workerName(rt.Name), Namespace: rt.Namespace, Labels: workerLabels(rt.Name)}
	sa := &corev1.ServiceAccount{ObjectMeta: meta}
	role := &rbacv1.Role{ObjectMeta: meta, Rules: []rbacv1.PolicyRule{{
		APIGroups: []string{"coordination.k8s.io"},
		Resources: []string{"leases"},
		Verbs:     []string{"get", "list", "watch", "create", "update", "delete"},
	}}}
	rb := &rbacv1.RoleBinding{ObjectMeta: meta,
		RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: role.Name},
		Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Name: sa.Name, Namespace: rt.Namespace}},
	}
	return sa, role, rb
}
