// Package kubetest runs a real Kubernetes control plane for tests, with
// fake nodes, and runs pods' containers for real as local processes.
//
// # The cluster (Start)
//
// Real, unmodified Kubernetes binaries (test/lib.sh builds them into
// .cache/bin; $GRANARY_KUBE_BIN, $GRANARY_ETCD and $GRANARY_KWOK_STAGES say
// where they are):
//
//   - etcd and kube-apiserver, started by controller-runtime's envtest from
//     a directory of links to those binaries (it never downloads), with
//     RBAC authorization, service account token signing, and the
//     ServiceAccount admission plugin on (envtest turns it off by default):
//     pods get their kube-api-access volume as in a real cluster;
//   - the CRDs of Options.CRDDirs, installed by envtest;
//   - kube-controller-manager with the controllers of DefaultControllers
//     (workloads, garbage collector, service accounts and the
//     kube-root-ca.crt config maps, node lifecycle, endpoints, PV/PVC
//     protection) and kube-scheduler, without leader election or serving;
//   - kwok, which plays the kubelets of the fake nodes: nodes become Ready
//     and renew their leases, pods become Running with an IP, and deleted
//     pods go away. Claims of the default storage class "kwok-volume" are
//     bound to hostPath volumes.
//
// All run as processes of their own, stopped by PID when the test ends
// (before the API server, which otherwise waits on their watches); their
// logs are files under Cluster.Dir, the end of each shown when the test
// fails. Start takes 7–9 s on two busy cores (most of it envtest's API
// server start; 3 nodes take under a second).
//
// Nodes (AddNode) are Node objects with kwok's annotation, a capacity, and
// loopback addresses: node n of the cluster has InternalIP
// 127.(40+b).(n/256).(n%256) and podCIDR 127.(100+16b+n/256).(n%256).0/24,
// where b is an address block the cluster holds (a lock file), so that
// clusters of tests running at once never share addresses. kwok hands out
// pod IPs from the node's podCIDR, so pod IPs are unique and, being in
// 127.0.0.0/8, bindable by local processes.
//
// # Pods (RunPod)
//
// RunPod runs one container of a pod that kwok has started, from a root
// file system directory the test prepares (RunOptions.Rootfs, standing for
// the image), as a container runtime would. It needs root (without it the
// test skips, unless $GRANARY_REQUIRE_SERVERS). Proc.Exec runs a command
// in a running container, as kubectl exec would.
//
//   - real: new mount, PID (the program is PID 1), UTS (hostname = pod
//     name) and IPC namespaces; an overlay root (Rootfs as the read-only
//     lower layer, a writable layer per container run), /proc, /sys (read
//     only unless privileged), a tmpfs /dev with the usual devices (all of
//     the machine's when privileged: /dev/fuse), /dev/shm, /tmp (tmpfs),
//     /etc/hosts, /etc/hostname, the termination log; chroot into it;
//     runAsUser/runAsGroup/supplementalGroups, the runtime's default
//     capability set adjusted by capabilities add/drop (all when
//     privileged), allowPrivilegeEscalation=false as no_new_privs,
//     readOnlyRootFilesystem;
//   - real: the environment as the kubelet builds it (service variables,
//     envFrom, env with $(VAR) expansion, fieldRef, resourceFieldRef with
//     node allocatable for missing limits, configMapKeyRef, secretKeyRef,
//     optional references), then command/args expansion, with the image
//     configuration of RunOptions (Entrypoint, Cmd, Env, WorkingDir);
//   - real: configMap, secret, downwardAPI and projected volumes (items,
//     modes, optional, the kubelet's ..data atomic-writer layout, kept up
//     to date while the container runs), service account tokens from the
//     TokenRequest API bound to the pod (so the pod's RBAC is exercised),
//     emptyDir (medium Memory is a tmpfs of sizeLimit), subPath and
//     subPathExpr, readOnly, mountPropagation (None, HostToContainer,
//     Bidirectional: node roots are shared mounts);
//   - stopping: SIGTERM then SIGKILL after the grace period (the pod's,
//     bounded by RunOptions.StopGrace), also when the pod is deleted.
//
// What is mapped rather than real:
//
//   - hostPath volumes are under Cluster.NodeRoot(node), one directory per
//     fake node (except /dev, /sys, /proc: Options.HostPaths), so pods of
//     one node share them and a pod run again finds its data; a
//     persistentVolumeClaim's hostPath volume is a directory of the
//     cluster (like network storage), a local volume one of its node root;
//   - the network is the machine's: every pod binds its pod IP on lo, and
//     reaches others by pod IP, but the connections it makes come from
//     127.0.0.1 (the source address the kernel picks on lo) unless it binds
//     its pod IP first; there is no kube-proxy (Service cluster IPs
//     lead nowhere, though the service variables are set) and no cluster
//     DNS (/etc/resolv.conf is the machine's). KUBERNETES_SERVICE_HOST and
//     _PORT (and the other KUBERNETES_* variables) point at the test's API
//     server, so in-cluster clients work;
//   - the pod's status is kwok's (Running and Ready at once): RunPod does
//     not report container states, exit codes or restarts, runs no probes
//     and does not restart containers; init containers run only when asked
//     for by name. kwok deletes a deleted pod at once, while its process
//     still gets its SIGTERM and grace period;
//   - no cgroups: resource limits are not enforced (the downward API still
//     reports them), nor are fsGroup ownership, seccomp or AppArmor.
//
// On a machine whose root mount is shared (systemd), the bind mounts of the
// node roots also show, until the test ends, in mount namespaces that are
// slaves of it.
package kubetest
