package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// DataLoad policies.
const (
	// LoadOnce runs the load once.
	LoadOnce = "Once"
	// LoadCron runs it on a schedule.
	LoadCron = "Cron"
)

// DataLoadSpec says what to warm, and when.
// +kubebuilder:validation:XValidation:rule="self.policy != 'Cron' || has(self.schedule)",message="a Cron DataLoad needs a schedule"
type DataLoadSpec struct {
	// Dataset is the Dataset (in this namespace) to warm.
	// +kubebuilder:validation:MinLength=1
	Dataset string `json:"dataset"`
	// Paths inside the dataset: directories, files or globs (** for any
	// number of directories); default the whole dataset.
	// +optional
	Paths []string `json:"paths,omitempty"`
	// MetadataOnly warms listings and attributes, not data.
	// +optional
	MetadataOnly bool `json:"metadataOnly,omitempty"`
	// Replicas is how many copies of each block to load (default: the
	// Dataset's replicas).
	// +optional
	// +kubebuilder:validation:Minimum=1
	Replicas int32 `json:"replicas,omitempty"`
	// Policy is Once (the default) or Cron.
	// +optional
	// +kubebuilder:validation:Enum=Once;Cron
	// +kubebuilder:default=Once
	Policy string `json:"policy,omitempty"`
	// Schedule is a cron schedule ("0 3 * * *") for policy Cron.
	// +optional
	Schedule string `json:"schedule,omitempty"`
}

// DataLoad phases.
const (
	LoadPending  = "Pending"
	LoadLoading  = "Loading"
	LoadComplete = "Complete"
	LoadFailed   = "Failed"
)

// LoadFailure is a file that could not be loaded, and why.
type LoadFailure struct {
	Path   string `json:"path"`
	Reason string `json:"reason"`
}

// DataLoadStatus is the progress of the last (or running) load.
type DataLoadStatus struct {
	// +optional
	Phase string `json:"phase,omitempty"`
	// Progress is bytes done of the total ("42.0%").
	// +optional
	Progress string `json:"progress,omitempty"`
	// +optional
	FilesDone int64 `json:"filesDone"`
	// +optional
	FilesTotal int64 `json:"filesTotal"`
	// +optional
	BytesDone int64 `json:"bytesDone"`
	// +optional
	BytesTotal int64 `json:"bytesTotal"`
	// BytesSkipped were cached already.
	// +optional
	BytesSkipped int64 `json:"bytesSkipped,omitempty"`
	// Rate is the load's pace, for people ("512MiB/s").
	// +optional
	Rate string `json:"rate,omitempty"`
	// +optional
	StartTime *metav1.Time `json:"startTime,omitempty"`
	// +optional
	CompletionTime *metav1.Time `json:"completionTime,omitempty"`
	// Duration of the last load, for people.
	// +optional
	Duration string `json:"duration,omitempty"`
	// Failures are the files that failed (the first ones; FailureCount
	// counts them all).
	// +optional
	Failures []LoadFailure `json:"failures,omitempty"`
	// +optional
	FailureCount int64 `json:"failureCount,omitempty"`
	// Job is the Job (or CronJob) that runs the load.
	// +optional
	Job string `json:"job,omitempty"`
	// LastScheduleTime is when a Cron load last started.
	// +optional
	LastScheduleTime *metav1.Time `json:"lastScheduleTime,omitempty"`
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// DataLoad warms a Dataset's cache, once or on a schedule.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=gdl,categories=granary
// +kubebuilder:printcolumn:name="Dataset",type=string,JSONPath=`.spec.dataset`
// +kubebuilder:printcolumn:name="Phase",type=string,JSONPath=`.status.phase`
// +kubebuilder:printcolumn:name="Progress",type=string,JSONPath=`.status.progress`
// +kubebuilder:printcolumn:name="Rate",type=string,JSONPath=`.status.rate`,priority=1
// +kubebuilder:printcolumn:name="Duration",type=string,JSONPath=`.status.duration`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type DataLoad struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   DataLoadSpec   `json:"spec"`
	Status DataLoadStatus `json:"status,omitempty"`
}

// DataLoadList is a list of DataLoads.
//
// +kubebuilder:object:root=true
type DataLoadList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []DataLoad `json:"items"`
}
