package operator

import (
	"context"
	"fmt"
	"slices"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/granary-cache/granary/api/v1alpha1"
)

// DatasetReconciler keeps a Dataset's status and its volume.
type DatasetReconciler struct {
	client.Client
	Recorder events.EventRecorder
}

// +kubebuilder:rbac:groups="",resources=persistentvolumes,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups="",resources=persistentvolumeclaims,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups="",resources=pods,verbs=get;list;watch

// checkDataset checks what the CRD schema cannot: the scheme's options, and
// that every Secret key the dataset reads exists.
func checkDataset(ctx context.Context, c client.Client, ds *v1alpha1.Dataset) error {
	_, files, err := datasetConfig(ds)
	if err != nil {
		return err
	}
	for i, f := range files {
		field := fmt.Sprintf("spec.secretOptions[%d].valueFrom.secretKeyRef", i)
		var s corev1.Secret
		err := c.Get(ctx, types.NamespacedName{Namespace: ds.Namespace, Name: f.Secret}, &s)
		switch {
		case apierrors.IsNotFound(err):
			return specErr(field, "secret %s/%s does not exist", ds.Namespace, f.Secret)
		case err != nil:
			return fmt.Errorf("read secret %s: %w", f.Secret, err)
		}
		if _, ok := s.Data[f.Key]; !ok {
			if _, ok := s.StringData[f.Key]; !ok {
				return specErr(field, "secret %s/%s has no key %q", ds.Namespace, f.Secret, f.Key)
			}
		}
	}
	return nil
}

// Reconcile fills a Dataset's status from its runtime's Leases, keeps its
// PersistentVolume and claim, and, when it is deleted, removes them once no
// pod uses them.
func (r *DatasetReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	var ds v1alpha1.Dataset
	if err := r.Get(ctx, req.NamespacedName, &ds); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if !ds.DeletionTimestamp.IsZero() {
		return r.finalize(ctx, &ds)
	}
	if controllerutil.AddFinalizer(&ds, v1alpha1.Finalizer) {
		if err := r.Update(ctx, &ds); err != nil {
			return ctrl.Result{}, err
		}
	}
	before := ds.Status.DeepCopy()
	st := &ds.Status
	st.ObservedGeneration = ds.Generation
	if err := checkDataset(ctx, r.Client, &ds); err != nil {
		if _, spec := err.(*SpecError); !spec {
			return ctrl.Result{}, err
		}
		st.Phase = v1alpha1.DatasetFailed
		meta.SetStatusCondition(&st.Conditions, metav1.Condition{Type: v1alpha1.ConditionValid, Status: metav1.ConditionFalse,
			Reason: "InvalidSpec", Message: err.Error()})
		meta.SetStatusCondition(&st.Conditions, metav1.Condition{Type: v1alpha1.ConditionReady, Status: metav1.ConditionFalse,
			Reason: "InvalidSpec", Message: "the spec cannot be served"})
		if !equality.Semantic.DeepEqual(before, st) {
			r.Recorder.Eventf(&ds, nil, corev1.EventTypeWarning, "InvalidSpec", "Validate", "%v", err)
		}
		// A missing Secret may appear: look again later.
		return ctrl.Result{RequeueAfter: statusEvery}, writeStatus(ctx, r.Client, &ds, before, &ds.Status)
	}
	meta.SetStatusCondition(&st.Conditions, metav1.Condition{Type: v1alpha1.ConditionValid, Status: metav1.ConditionTrue,
		Reason: "Valid", Message: "the spec can be served"})
	rt, err := runtimeOf(ctx, r.Client, &ds)
	if err != nil {
		return ctrl.Result{}, err
	}
	if rt == nil {
		st.Phase, st.Runtime = v1alpha1.DatasetPending, ""
		meta.SetStatusCondition(&st.Conditions, metav1.Condition{Type: v1alpha1.ConditionReady, Status: metav1.ConditionFalse,
			Reason: "NoRuntime", Message: "no CacheRuntime in the namespace lists this dataset"})
		return ctrl.Result{RequeueAfter: statusEvery}, writeStatus(ctx, r.Client, &ds, before, &ds.Status)
	}
	st.Runtime = rt.Name
	if err := r.ensureVolume(ctx, &ds, rt); err != nil {
		r.Recorder.Eventf(&ds, nil, corev1.EventTypeWarning, "VolumeFailed", "Provision", "%v", err)
		return ctrl.Result{}, err
	}
	st.VolumeName = ds.Name
	ws, err := runtimeWorkers(ctx, r.Client, ds.Namespace, rt.Name)
	if err != nil {
		return ctrl.Result{}, err
	}
	fillDatasetStatus(st, ws, ds.Name, max(int(ds.Spec.Replicas), 1))
	ready := metav1.Condition{Type: v1alpha1.ConditionReady, Status: metav1.ConditionFalse}
	if st.Workers > 0 {
		st.Phase, ready.Status, ready.Reason = v1alpha1.DatasetReady, metav1.ConditionTrue, "WorkersLive"
		ready.Message = fmt.Sprintf("%d live worker(s) of CacheRuntime %s serve it", st.Workers, rt.Name)
	} else {
		st.Phase, ready.Reason = v1alpha1.DatasetBound, "NoLiveWorker"
		ready.Message = fmt.Sprintf("CacheRuntime %s serves it; no worker is live yet", rt.Name)
	}
	meta.SetStatusCondition(&st.Conditions, ready)
	return ctrl.Result{RequeueAfter: statusEvery}, writeStatus(ctx, r.Client, &ds, before, &ds.Status)
}

// fillDatasetStatus sets the figures of a dataset's status from its
// runtime's workers.
func fillDatasetStatus(st *v1alpha1.DatasetStatus, ws []worker, name string, replicas int) {
	sum := sumWorkers(ws)
	t := datasetTotal(ws, name, replicas)
	st.Workers = int32(sum.Live)
	st.CacheCapacityBytes, st.CacheCapacity = sum.Capacity, human(sum.Capacity)
	st.CachedBytes, st.Cached = t.CachedBytes, human(t.CachedBytes)
	st.HitRatio = hitRatio(sum.Hits, sum.Misses)
	measured := metav1.Condition{Type: v1alpha1.ConditionUFSMeasured, Status: metav1.ConditionFalse}
	switch u := t.Usage; {
	case u == nil:
		st.UFSTotal, st.CachedPercentage = "", ""
		measured.Reason, measured.Message = "NotStarted", "no worker has started measuring the dataset"
	case u.Complete:
		st.UFSBytes, st.Files = u.Bytes, u.Files
		st.UFSTotal = human(u.Bytes)
		st.CachedPercentage = fmt.Sprintf("%.1f%%", t.CachedPercent)
		measured.Status, measured.Reason = metav1.ConditionTrue, "Measured"
		measured.Message = fmt.Sprintf("%d files in %d directories, measured in %s", u.Files, u.Dirs, u.Finished.Sub(u.Started).Round(time.Millisecond))
	default:
		// Shown as it grows, never "calculating".
		st.UFSBytes, st.Files = u.Bytes, u.Files
		st.UFSTotal = human(u.Bytes) + "+"
		st.CachedPercentage = ""
		measured.Reason = "Measuring"
		measured.Message = fmt.Sprintf("%d files in %d directories so far", u.Files, u.Dirs)
		if u.Error != "" {
			measured.Reason, measured.Message = "MeasureFailed", u.Error
		}
	}
	meta.SetStatusCondition(&st.Conditions, measured)
}

// runtimeOf finds the CacheRuntime that lists the dataset (the oldest, if
// several do).
func runtimeOf(ctx context.Context, c client.Client, ds *v1alpha1.Dataset) (*v1alpha1.CacheRuntime, error) {
	var list v1alpha1.CacheRuntimeList
	if err := c.List(ctx, &list, client.InNamespace(ds.Namespace)); err != nil {
		return nil, err
	}
	var out *v1alpha1.CacheRuntime
	for i := range list.Items {
		rt := &list.Items[i]
		if !slices.Contains(rt.Spec.Datasets, ds.Name) || !rt.DeletionTimestamp.IsZero() {
			continue
		}
		if out == nil || rt.CreationTimestamp.Before(&out.CreationTimestamp) {
			out = rt
		}
	}
	return out, nil
}

// volumeName is the PersistentVolume of a dataset (PVs are cluster-wide).
func volumeName(ds *v1alpha1.Dataset) string { return ds.Namespace + "-" + ds.Name }

// nominalSize is what a dataset's volume claims: the CSI driver serves
// whatever the dataset holds, and a claim needs a size.
var nominalSize = mustQuantity("100Ti")

// ensureVolume makes the dataset's PersistentVolume (read-only many, on
// granary's CSI driver) and the claim bound to it, in the dataset's
// namespace, named after it.
//
// The dataset's node affinity becomes the volume's, so that the scheduler
// places the pods that mount it on those nodes alone; the runtime's mount
// options become the volume's, which the CSI node plugin receives.
func (r *DatasetReconciler) ensureVolume(ctx context.Context, ds *v1alpha1.Dataset, rt *v1alpha1.CacheRuntime) error {
	labels := map[string]string{v1alpha1.LabelDataset: ds.Name, "app.kubernetes.io/managed-by": "granary-operator"}
	empty := ""
	pv := &corev1.PersistentVolume{ObjectMeta: metav1.ObjectMeta{Name: volumeName(ds)}}
	_, err := controllerutil.CreateOrUpdate(ctx, r.Client, pv, func() error {
		pv.Labels = labels
		pv.Annotations = map[string]string{"granary.io/dataset": ds.Namespace + "/" + ds.Name}
		pv.Spec.MountOptions = rt.Spec.Mount.Options
		if !pv.CreationTimestamp.IsZero() {
			return nil // a PV's source and node affinity are immutable
		}
		pv.Spec = corev1.PersistentVolumeSpec{
			AccessModes:                   []corev1.PersistentVolumeAccessMode{corev1.ReadOnlyMany},
			Capacity:                      corev1.ResourceList{corev1.ResourceStorage: nominalSize},
			PersistentVolumeReclaimPolicy: corev1.PersistentVolumeReclaimRetain,
			StorageClassName:              "",
			ClaimRef:                      &corev1.ObjectReference{Kind: "PersistentVolumeClaim", APIVersion: "v1", Namespace: ds.Namespace, Name: ds.Name},
			PersistentVolumeSource: corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{
				Driver:           v1alpha1.CSIDriver,
				VolumeHandle:     ds.Namespace + "/" + ds.Name,
				ReadOnly:         true,
				VolumeAttributes: map[string]string{"dataset": ds.Name, "namespace": ds.Namespace},
			}},
			MountOptions: rt.Spec.Mount.Options,
		}
		if ds.Spec.NodeAffinity != nil {
			pv.Spec.NodeAffinity = &corev1.VolumeNodeAffinity{Required: ds.Spec.NodeAffinity.DeepCopy()}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("PersistentVolume %s: %w", pv.Name, err)
	}
	pvc := &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Name: ds.Name, Namespace: ds.Namespace}}
	_, err = controllerutil.CreateOrUpdate(ctx, r.Client, pvc, func() error {
		pvc.Labels = labels
		if pvc.CreationTimestamp.IsZero() {
			pvc.Spec = corev1.PersistentVolumeClaimSpec{
				AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadOnlyMany},
				StorageClassName: &empty,
				VolumeName:       pv.Name,
				Resources:        corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: nominalSize}},
			}
		}
		return controllerutil.SetControllerReference(ds, pvc, r.Scheme())
	})
	if err != nil {
		return fmt.Errorf("PersistentVolumeClaim %s: %w", pvc.Name, err)
	}
	return nil
}

// finalize removes a deleted dataset's volume, unless a pod still uses it:
// then the dataset waits, and says so in an event.
func (r *DatasetReconciler) finalize(ctx context.Context, ds *v1alpha1.Dataset) (ctrl.Result, error) {
	if !controllerutil.ContainsFinalizer(ds, v1alpha1.Finalizer) {
		return ctrl.Result{}, nil
	}
	users, err := podsUsing(ctx, r.Client, ds.Namespace, ds.Name)
	if err != nil {
		return ctrl.Result{}, err
	}
	if len(users) > 0 {
		msg := fmt.Sprintf("waiting for pod(s) %v to stop using the volume before deleting the dataset", users)
		meta.SetStatusCondition(&ds.Status.Conditions, metav1.Condition{Type: v1alpha1.ConditionReady, Status: metav1.ConditionFalse,
			Reason: "InUse", Message: msg})
		if err := r.Status().Update(ctx, ds); err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
			return ctrl.Result{}, err
		}
		r.Recorder.Eventf(ds, nil, corev1.EventTypeWarning, "DatasetInUse", "Delete", "%s", msg)
		return ctrl.Result{RequeueAfter: 5 * time.Second}, nil
	}
	for _, obj := range []client.Object{
		&corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Name: ds.Name, Namespace: ds.Namespace}},
		&corev1.PersistentVolume{ObjectMeta: metav1.ObjectMeta{Name: volumeName(ds)}},
	} {
		if err := r.Delete(ctx, obj); err != nil && !apierrors.IsNotFound(err) {
			return ctrl.Result{}, fmt.Errorf("delete %T %s: %w", obj, obj.GetName(), err)
		}
	}
	controllerutil.RemoveFinalizer(ds, v1alpha1.Finalizer)
	return ctrl.Result{}, client.IgnoreNotFound(r.Update(ctx, ds))
}

// podsUsing lists the pods of a namespace that mount a claim and have not
// finished.
func podsUsing(ctx context.Context, c client.Client, ns, claim string) ([]string, error) {
	var pods corev1.PodList
	if err := c.List(ctx, &pods, client.InNamespace(ns)); err != nil {
		return nil, fmt.Errorf("list pods: %w", err)
	}
	var out []string
	for _, p := range pods.Items {
		if p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			continue
		}
		for _, v := range p.Spec.Volumes {
			if v.PersistentVolumeClaim != nil && v.PersistentVolumeClaim.ClaimName == claim {
				out = append(out, p.Name)
				break
			}
		}
	}
	return out, nil
}

// SetupWithManager registers the controller: it watches Datasets, their
// claims, and the runtimes that name them.
func (r *DatasetReconciler) SetupWithManager(mgr ctrl.Manager) error {
	return ctrl.NewControllerManagedBy(mgr).
		For(&v1alpha1.Dataset{}).
		Owns(&corev1.PersistentVolumeClaim{}).
		Watches(&v1alpha1.CacheRuntime{}, handler.EnqueueRequestsFromMapFunc(datasetsOf)).
		Watches(&coordinationv1.Lease{}, handler.EnqueueRequestsFromMapFunc(r.datasetsOfLease), builder.WithPredicates(membershipChanged)).
		Complete(r)
}

// datasetsOfLease maps a worker's Lease to the Datasets of its runtime.
func (r *DatasetReconciler) datasetsOfLease(ctx context.Context, obj client.Object) []reconcile.Request {
	var out []reconcile.Request
	for _, req := range runtimeOfLease(ctx, obj) {
		var rt v1alpha1.CacheRuntime
		if err := r.Get(ctx, req.NamespacedName, &rt); err == nil {
			out = append(out, datasetsOf(ctx, &rt)...)
		}
	}
	return out
}

// datasetsOf maps a CacheRuntime to the Datasets it names.
func datasetsOf(_ context.Context, obj client.Object) []reconcile.Request {
	rt, ok := obj.(*v1alpha1.CacheRuntime)
	if !ok {
		return nil
	}
	out := make([]reconcile.Request, 0, len(rt.Spec.Datasets))
	for _, name := range rt.Spec.Datasets {
		out = append(out, reconcile.Request{NamespacedName: types.NamespacedName{Namespace: rt.Namespace, Name: name}})
	}
	return out
}
