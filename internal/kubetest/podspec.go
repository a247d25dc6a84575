package kubetest

import (
	"fmt"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// needSAVolume reports whether RunPod must add the service account volume
// itself: the ServiceAccount admission plugin adds it to pods (the
// kube-api-access-* projected volume), but a container without a mount at
// its path gets none when automount is on.
func needSAVolume(pod *corev1.Pod, ctr *corev1.Container, automount bool) bool {
	if !automount {
		return false
	}
	for _, m := range ctr.VolumeMounts {
		if path.Clean(m.MountPath) == saMountPath {
			return false
		}
	}
	for _, v := range pod.Spec.Volumes {
		if strings.HasPrefix(v.Name, "kube-api-access-") {
			return false // admission decided: this container opted out
		}
	}
	return true
}

// saVolume is the projected volume of a pod's service account, as the
// ServiceAccount admission plugin makes it.
func saVolume(name string) corev1.Volume {
	exp := int64(3607)
	mode := int32(0o644)
	return corev1.Volume{Name: name, VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
		DefaultMode: &mode,
		Sources: []corev1.VolumeProjection{
			{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Path: "token", ExpirationSeconds: &exp}},
			{ConfigMap: &corev1.ConfigMapProjection{LocalObjectReference: corev1.LocalObjectReference{Name: "kube-root-ca.crt"},
				Items: []corev1.KeyToPath{{Key: "ca.crt", Path: "ca.crt"}}}},
			{DownwardAPI: &corev1.DownwardAPIProjection{Items: []corev1.DownwardAPIVolumeFile{
				{Path: "namespace", FieldRef: &corev1.ObjectFieldSelector{APIVersion: "v1", FieldPath: "metadata.namespace"}}}}},
		},
	}}}
}

func propagation(m *corev1.MountPropagationMode) string {
	if m != nil {
		switch *m {
		case corev1.MountPropagationHostToContainer:
			return "rslave"
		case corev1.MountPropagationBidirectional:
			return "rshared"
		}
	}
	return "private"
}

// sortMounts orders mounts so that a mount point's parents are mounted
// before it (as runtimes do), keeping the pod's order otherwise.
func sortMounts(ms []mountSpec) {
	depth := func(p string) int { return strings.Count(path.Clean("/"+p), "/") }
	slices.SortStableFunc(ms, func(a, b mountSpec) int { return depth(a.Target) - depth(b.Target) })
}

// securityContext applies the pod's and container's security context:
// user, group, supplemental groups, privileged, capabilities,
// allowPrivilegeEscalation, readOnlyRootFilesystem.
func securityContext(pod *corev1.Pod, ctr *corev1.Container, s *initSpec) error {
	if psc := pod.Spec.SecurityContext; psc != nil {
		s.UID, s.GID = psc.RunAsUser, psc.RunAsGroup
		s.Groups = append(s.Groups, psc.SupplementalGroups...)
		if psc.FSGroup != nil {
			s.Groups = append(s.Groups, *psc.FSGroup)
		}
	}
	sc := ctr.SecurityContext
	var add, drop []string
	if sc != nil {
		if sc.RunAsUser != nil {
			s.UID = sc.RunAsUser
		}
		if sc.RunAsGroup != nil {
			s.GID = sc.RunAsGroup
		}
		s.Privileged = isTrue(sc.Privileged)
		s.ReadOnlyRoot = isTrue(sc.ReadOnlyRootFilesystem)
		s.NoNewPrivs = sc.AllowPrivilegeEscalation != nil && !*sc.AllowPrivilegeEscalation
		if sc.Capabilities != nil {
			for _, c := range sc.Capabilities.Add {
				add = append(add, string(c))
			}
			for _, c := range sc.Capabilities.Drop {
				drop = append(drop, string(c))
			}
		}
	}
	if s.UID != nil && s.GID == nil {
		gid := int64(0) // runtimes use the user's primary group, root without /etc/passwd
		s.GID = &gid
	}
	caps, err := containerCaps(add, drop)
	if err != nil {
		return err
	}
	s.Caps = caps
	return nil
}

// podHostname is the hostname the kubelet gives a pod's containers.
func podHostname(pod *corev1.Pod) string {
	if pod.Spec.HostNetwork {
		return pod.Spec.NodeName
	}
	h := firstNonEmpty(pod.Spec.Hostname, pod.Name)
	if len(h) > 63 {
		h = strings.TrimRight(h[:63], "-.")
	}
	return h
}

// etcHosts is the /etc/hosts the kubelet writes for a pod.
func etcHosts(pod *corev1.Pod, hostname string) string {
	var b strings.Builder
	b.WriteString("# Kubernetes-managed hosts file (kubetest).\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n" +
		"fe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n")
	ips := []string{pod.Status.PodIP}
	for _, ip := range pod.Status.PodIPs {
		if !slices.Contains(ips, ip.IP) {
			ips = append(ips, ip.IP)
		}
	}
	for _, ip := range ips {
		if pod.Spec.Subdomain != "" {
			fmt.Fprintf(&b, "%s\t%s.%s.%s.svc.cluster.local\t%s\n", ip, hostname, pod.Spec.Subdomain, pod.Namespace, hostname)
		} else {
			fmt.Fprintf(&b, "%s\t%s\n", ip, hostname)
		}
	}
	for _, a := range pod.Spec.HostAliases {
		fmt.Fprintf(&b, "\n# Entries added by HostAliases.\n%s\t%s\n", a.IP, strings.Join(a.Hostnames, "\t"))
	}
	return b.String()
}

// writeEtcFiles writes the pod's /etc/hosts, /etc/hostname and
// /etc/resolv.conf (the machine's: there is no cluster DNS) and returns
// them by their path in the container.
func writeEtcFiles(dir string, pod *corev1.Pod, hostname string) (map[string]string, error) {
	resolv, err := os.ReadFile("/etc/resolv.conf")
	if err != nil {
		resolv = nil
	}
	hosts := etcHosts(pod, hostname)
	files := map[string]string{
		"/etc/hosts":       hosts,
		"/etc/hostname":    hostname + "\n",
		"/etc/resolv.conf": string(resolv),
	}
	out := map[string]string{}
	for target, content := range files {
		p := filepath.Join(dir, "etc", path.Base(target))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return nil, err
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			return nil, err
		}
		out[target] = p
	}
	return out, nil
}

func firstNonEmpty(s ...string) string {
	for _, x := range s {
		if x != "" {
			return x
		}
	}
	return ""
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.SplitAfter(s, "\n")
	if len(lines) <= n {
		return s
	}
	return fmt.Sprintf("[... %d lines ...]\n", len(lines)-n) + strings.Join(lines[len(lines)-n:], "")
}
