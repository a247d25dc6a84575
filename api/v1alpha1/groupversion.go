// Package v1alpha1 is granary's Kubernetes API: Dataset (where the data is
// and how to cache it), CacheRuntime (the workers that cache it) and DataLoad
// (warming a dataset, once or on a schedule).
//
// +kubebuilder:object:generate=true
// +groupName=granary.io
package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// GroupVersion is the API group and version of these kinds.
var GroupVersion = schema.GroupVersion{Group: "granary.io", Version: "v1alpha1"}

var (
	// SchemeBuilder registers the kinds with a runtime.Scheme.
	SchemeBuilder = runtime.NewSchemeBuilder(addKnownTypes)
	// AddToScheme adds the kinds to a scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)

func addKnownTypes(s *runtime.Scheme) error {
	s.AddKnownTypes(GroupVersion,
		&Dataset{}, &DatasetList{},
		&CacheRuntime{}, &CacheRuntimeList{},
		&DataLoad{}, &DataLoadList{})
	metav1.AddToGroupVersion(s, GroupVersion)
	return nil
}

// CSIDriver is the name of granary's CSI driver: a Dataset's
// PersistentVolume names it, and the node plugin registers under it.
const CSIDriver = "csi.granary.io"

// Labels and annotations granary puts on the objects it makes.
const (
	// LabelRuntime names the CacheRuntime an object belongs to (workers'
	// pods, their Leases, the ConfigMap).
	LabelRuntime = "granary.io/runtime"
	// LabelDataset names the Dataset an object belongs to (its PV and PVC).
	LabelDataset = "granary.io/dataset"
	// LabelDataLoad names the DataLoad a Job runs.
	LabelDataLoad = "granary.io/dataload"
	// LabelComponent says what part of granary an object is: worker,
	// loader, operator.
	LabelComponent = "app.kubernetes.io/component"
	// Finalizer holds a Dataset until its volume is released.
	Finalizer = "granary.io/cleanup"
)

// Condition types and phases shared by the kinds.
const (
	// ConditionReady: the object does what it was asked to.
	ConditionReady = "Ready"
	// ConditionValid: the spec could be turned into a configuration (false
	// names what is wrong: an unknown UFS scheme, a missing secret, ...).
	ConditionValid = "Valid"
	// ConditionUFSMeasured: the dataset's size on its UFS is known (false
	// while the background walk is still counting: the figures grow).
	ConditionUFSMeasured = "UFSMeasured"
)
