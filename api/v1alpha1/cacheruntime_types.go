package v1alpha1

import (
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// CacheRuntimeSpec describes the workers that cache some Datasets: where
// they run and what they cache on.
type CacheRuntimeSpec struct {
	// Datasets are the names of the Datasets (in this namespace) that the
	// workers serve.
	// +kubebuilder:validation:MinItems=1
	// +listType=set
	Datasets []string `json:"datasets"`
	// Worker says where workers run and what they may use.
	// +optional
	Worker WorkerSpec `json:"worker,omitempty"`
	// Tiers are the cache tiers of every worker, fastest first.
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=3
	Tiers []TierSpec `json:"tiers"`
	// Replicas, when set, runs that many workers as a StatefulSet instead
	// of one worker on every selected node (a DaemonSet).
	// +optional
	// +kubebuilder:validation:Minimum=0
	Replicas *int32 `json:"replicas,omitempty"`
	// BlockSize is the unit of placement (default 64Mi; when it is not set,
	// a file up to 1Gi is one block of its own, which FUSE passthrough
	// reads whole).
	// +optional
	BlockSize *resource.Quantity `json:"blockSize,omitempty"`
	// Mount configures the FUSE mounts of the Datasets' volumes.
	// +optional
	Mount MountSpec `json:"mount,omitempty"`
	// LeaseDurationSeconds is how long a worker that stops renewing its
	// Lease stays live (default 30).
	// +optional
	// +kubebuilder:validation:Minimum=5
	LeaseDurationSeconds int32 `json:"leaseDurationSeconds,omitempty"`
}

// WorkerSpec places the workers and bounds what they use.
type WorkerSpec struct {
	// Image runs the workers (default: the operator's --worker-image).
	// +optional
	Image string `json:"image,omitempty"`
	// +optional
	ImagePullPolicy corev1.PullPolicy `json:"imagePullPolicy,omitempty"`
	// NodeSelector picks the nodes workers run on (e.g. GPU nodes).
	// +optional
	NodeSelector map[string]string `json:"nodeSelector,omitempty"`
	// +optional
	Tolerations []corev1.Toleration `json:"tolerations,omitempty"`
	// +optional
	Resources corev1.ResourceRequirements `json:"resources,omitempty"`
	// Port is the data port (default 7420); the admin port (metrics,
	// health) is the next one.
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=65534
	Port int32 `json:"port,omitempty"`
	// HostNetwork runs workers in their nodes' network (default false).
	// +optional
	HostNetwork bool `json:"hostNetwork,omitempty"`
	// StateDir is the host directory where a worker keeps its identity and
	// the index of its cache, so that a restart keeps its place and its SSD
	// cache (default /var/lib/granary).
	// +optional
	StateDir string `json:"stateDir,omitempty"`
	// HugePages lets each worker put its MEM tier (an emptyDir of medium
	// Memory) in huge pages: the worker runs with CAP_SYS_ADMIN and no
	// AppArmor profile, and remounts the emptyDir's tmpfs with
	// huge=within_size. Warm reads of large files by passthrough then run
	// at the page cache's speed, about twice that of a tmpfs of 4 KiB
	// pages. Off by default: the capability is a lot to grant, and the
	// baseline Pod Security Standard refuses it. A node can instead give
	// every tmpfs huge pages, the emptyDir's too, with no capability:
	// Linux 6.14 and later booted with transparent_hugepage_tmpfs=within_size,
	// or force written to /sys/kernel/mm/transparent_hugepage/shmem_enabled.
	// +optional
	HugePages bool `json:"hugePages,omitempty"`
}

// Tier media.
const (
	// MediumMemory is a tmpfs: an emptyDir of medium Memory (or, with a
	// path, a host directory that is one).
	MediumMemory = "Memory"
	// MediumHostPath is a directory of the node (an SSD's file system).
	MediumHostPath = "HostPath"
)

// TierSpec is one cache tier of every worker.
// +kubebuilder:validation:XValidation:rule="self.medium != 'HostPath' || has(self.path)",message="a HostPath tier needs a path"
// +kubebuilder:validation:XValidation:rule="!has(self.high) || !has(self.low) || self.low < self.high",message="low must be below high"
type TierSpec struct {
	// Name is MEM, SSD or HDD.
	// +kubebuilder:validation:Enum=MEM;SSD;HDD
	Name string `json:"name"`
	// Medium is Memory (an emptyDir in RAM, or a tmpfs at path) or HostPath.
	// +kubebuilder:validation:Enum=Memory;HostPath
	Medium string `json:"medium"`
	// Path is the node's directory for a HostPath tier (or a tmpfs mounted
	// there); each runtime gets its own subdirectory.
	// +optional
	// +kubebuilder:validation:Pattern=`^/`
	Path string `json:"path,omitempty"`
	// Quota is how much of the tier the worker may fill.
	// +kubebuilder:validation:XValidation:rule="quantity(self).isGreaterThan(quantity('0'))",message="quota must be positive"
	Quota resource.Quantity `json:"quota"`
	// High and Low are the watermarks, in percent of the quota, at which
	// eviction starts and stops (defaults 95 and 70).
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=100
	High *int32 `json:"high,omitempty"`
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=100
	Low *int32 `json:"low,omitempty"`
}

// MountSpec configures the FUSE mounts of the served Datasets.
type MountSpec struct {
	// Options are extra mount options (e.g. allow_other is always set).
	// The CSI plugin passes granary's own to `granary mount`:
	// entry-timeout=D, attr-timeout=D, no-passthrough, no-direct-io,
	// zero-message-opens, prefetch and prefetch-idle=D.
	// +optional
	Options []string `json:"options,omitempty"`
}

// CacheRuntime phases.
const (
	// RuntimePending: no worker is ready.
	RuntimePending = "Pending"
	// RuntimePartialReady: some workers are ready.
	RuntimePartialReady = "PartialReady"
	// RuntimeReady: every desired worker is ready.
	RuntimeReady = "Ready"
	// RuntimeFailed: the spec cannot be run (see the Valid condition).
	RuntimeFailed = "Failed"
)

// CacheRuntimeStatus is how the workers stand.
type CacheRuntimeStatus struct {
	// +optional
	Phase string `json:"phase,omitempty"`
	// WorkersDesired is how many workers should run; WorkersReady how many
	// run and are ready; Members how many hold a live Lease.
	// +optional
	WorkersDesired int32 `json:"workersDesired"`
	// +optional
	WorkersReady int32 `json:"workersReady"`
	// +optional
	Members int32 `json:"members"`
	// Capacity is the room of the live workers' tiers, for people.
	// +optional
	Capacity string `json:"capacity,omitempty"`
	// +optional
	CapacityBytes int64 `json:"capacityBytes,omitempty"`
	// ConfigMap holds the workers' granary.yaml.
	// +optional
	ConfigMap string `json:"configMap,omitempty"`
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// CacheRuntime is a set of granary workers caching some Datasets.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=gcr,categories=granary
// +kubebuilder:printcolumn:name="Datasets",type=string,JSONPath=`.spec.datasets`
// +kubebuilder:printcolumn:name="Desired",type=integer,JSONPath=`.status.workersDesired`
// +kubebuilder:printcolumn:name="Ready",type=integer,JSONPath=`.status.workersReady`
// +kubebuilder:printcolumn:name="Capacity",type=string,JSONPath=`.status.capacity`
// +kubebuilder:printcolumn:name="Phase",type=string,JSONPath=`.status.phase`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type CacheRuntime struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   CacheRuntimeSpec   `json:"spec"`
	Status CacheRuntimeStatus `json:"status,omitempty"`
}

// CacheRuntimeList is a list of CacheRuntimes.
//
// +kubebuilder:object:root=true
type CacheRuntimeList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []CacheRuntime `json:"items"`
}
