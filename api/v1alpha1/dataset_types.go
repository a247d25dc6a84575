package v1alpha1

import (
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// DatasetSpec says where a dataset's data lives and how to cache it: the
// fields of a dataset in granary.yaml, with secrets taken from Secrets.
type DatasetSpec struct {
	// UFS is where the data lives: s3://bucket/prefix (AWS S3, Ceph RGW,
	// any S3), cephfs://FS_NAME/path (native CephFS) or file:///path (a
	// POSIX path present on every worker node).
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:XValidation:rule="self.startsWith('s3://') || self.startsWith('cephfs://') || self.startsWith('file:///')",message="ufs must start with s3://, cephfs:// or file:///"
	UFS string `json:"ufs"`
	// Options configure the UFS backend as in granary.yaml (s3: endpoint,
	// region, path_style, max_attempts; cephfs: monitors, user, fs_name,
	// conf, op_timeout, ...). Secrets go in secretOptions.
	// +optional
	Options map[string]string `json:"options,omitempty"`
	// SecretOptions take an option's value from a key of a Secret in the
	// Dataset's namespace: s3 access_key and secret_key, a cephfs secret or
	// keyring (a keyring is mounted as a file on the workers).
	// +optional
	// +listType=map
	// +listMapKey=name
	SecretOptions []SecretOption `json:"secretOptions,omitempty"`
	// MetadataSync is how long cached listings and attributes are trusted:
	// "never" (the default: until `granary refresh`) or a duration such as
	// "10m".
	// +optional
	// +kubebuilder:validation:Pattern=`^(never|([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+)$`
	MetadataSync string `json:"metadataSync,omitempty"`
	// Replicas is how many workers cache each block (default 1).
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=8
	Replicas int32 `json:"replicas,omitempty"`
	// Pin keeps the dataset's cached blocks from being evicted.
	// +optional
	Pin bool `json:"pin,omitempty"`
	// OpenMode is how mounts open files: auto (the default: chosen from
	// the sizes of the files a mount first lists), passthrough (fastest
	// for large files) or zero-message (fastest for many small files).
	// +optional
	// +kubebuilder:validation:Enum=auto;passthrough;zero-message
	OpenMode string `json:"openMode,omitempty"`
	// NearCache lets a reader's own worker keep copies of what it reads
	// from others.
	// +optional
	NearCache bool `json:"nearCache,omitempty"`
	// BlockSize is the unit of placement (default: the runtime's; when
	// neither is set, a file up to 1Gi is one block of its own).
	// +optional
	BlockSize *resource.Quantity `json:"blockSize,omitempty"`
	// NodeAffinity limits where pods that use the dataset run (and so where
	// its data is read from).
	// +optional
	NodeAffinity *corev1.NodeSelector `json:"nodeAffinity,omitempty"`
	// CacheAffinity is how the operator's webhook places the pods that
	// mount the dataset: Preferred (the default) prefers the nodes whose
	// workers hold most of its cached bytes; Required also confines them to
	// nodes that run a live worker of its runtime; None leaves them be. A
	// pod's annotation granary.io/cache-affinity overrides it.
	// +optional
	// +kubebuilder:validation:Enum=Preferred;Required;None
	// +kubebuilder:default=Preferred
	CacheAffinity CacheAffinity `json:"cacheAffinity,omitempty"`
}

// CacheAffinity is how pods are placed near a dataset's cache.
type CacheAffinity string

// Cache affinities.
const (
	CacheAffinityPreferred CacheAffinity = "Preferred"
	CacheAffinityRequired  CacheAffinity = "Required"
	CacheAffinityNone      CacheAffinity = "None"
)

// SecretOption is one UFS option whose value is in a Secret.
type SecretOption struct {
	// Name is the option, e.g. access_key, secret_key, keyring, secret.
	// +kubebuilder:validation:MinLength=1
	Name string `json:"name"`
	// ValueFrom says where the value is.
	ValueFrom SecretSource `json:"valueFrom"`
}

// SecretSource points at a key of a Secret.
type SecretSource struct {
	// SecretKeyRef is the Secret (in the Dataset's namespace) and its key.
	SecretKeyRef SecretKeyRef `json:"secretKeyRef"`
}

// SecretKeyRef names a key of a Secret in the same namespace.
type SecretKeyRef struct {
	// +kubebuilder:validation:MinLength=1
	Name string `json:"name"`
	// +kubebuilder:validation:MinLength=1
	Key string `json:"key"`
}

// Dataset phases.
const (
	// DatasetPending: no CacheRuntime serves the dataset yet.
	DatasetPending = "Pending"
	// DatasetBound: a CacheRuntime serves it; its workers are not ready.
	DatasetBound = "Bound"
	// DatasetReady: workers serve it and its volume can be mounted.
	DatasetReady = "Ready"
	// DatasetFailed: the spec is wrong (see the Valid condition).
	DatasetFailed = "Failed"
)

// DatasetStatus is what granary knows of a dataset, filled by the operator
// from the API server alone (the workers' Leases).
type DatasetStatus struct {
	// +optional
	Phase string `json:"phase,omitempty"`
	// Runtime is the CacheRuntime that serves the dataset.
	// +optional
	Runtime string `json:"runtime,omitempty"`
	// UFSTotal is the dataset's size on its UFS, for people ("1.2GiB"; it
	// grows while the size is measured, with a "+" until complete).
	// +optional
	UFSTotal string `json:"ufsTotal,omitempty"`
	// UFSBytes and Files are the measured size and file count.
	// +optional
	UFSBytes int64 `json:"ufsBytes,omitempty"`
	// +optional
	Files int64 `json:"files,omitempty"`
	// Cached is the bytes of the dataset in the cache, for people.
	// +optional
	Cached string `json:"cached,omitempty"`
	// +optional
	CachedBytes int64 `json:"cachedBytes,omitempty"`
	// CachedPercentage is Cached of UFSTotal ("42.0%").
	// +optional
	CachedPercentage string `json:"cachedPercentage,omitempty"`
	// CacheCapacity is the room of the workers that serve the dataset.
	// +optional
	CacheCapacity string `json:"cacheCapacity,omitempty"`
	// +optional
	CacheCapacityBytes int64 `json:"cacheCapacityBytes,omitempty"`
	// HitRatio is the share of page reads the workers served from the cache.
	// +optional
	HitRatio string `json:"hitRatio,omitempty"`
	// Workers is how many live workers serve the dataset.
	// +optional
	Workers int32 `json:"workers,omitempty"`
	// VolumeName is the dataset's PersistentVolumeClaim (and
	// PersistentVolume: NAMESPACE-NAME).
	// +optional
	VolumeName string `json:"volumeName,omitempty"`
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// Dataset is data on a UFS, cached by granary and mounted as a volume.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=gds,categories=granary
// +kubebuilder:printcolumn:name="UFS Total Size",type=string,JSONPath=`.status.ufsTotal`
// +kubebuilder:printcolumn:name="Cached",type=string,JSONPath=`.status.cached`
// +kubebuilder:printcolumn:name="Cache Capacity",type=string,JSONPath=`.status.cacheCapacity`
// +kubebuilder:printcolumn:name="Cached Percentage",type=string,JSONPath=`.status.cachedPercentage`
// +kubebuilder:printcolumn:name="Phase",type=string,JSONPath=`.status.phase`
// +kubebuilder:printcolumn:name="Files",type=integer,JSONPath=`.status.files`,priority=1
// +kubebuilder:printcolumn:name="Hit Ratio",type=string,JSONPath=`.status.hitRatio`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type Dataset struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   DatasetSpec   `json:"spec"`
	Status DatasetStatus `json:"status,omitempty"`
}

// DatasetList is a list of Datasets.
//
// +kubebuilder:object:root=true
type DatasetList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []Dataset `json:"items"`
}
