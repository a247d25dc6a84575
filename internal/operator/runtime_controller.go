package operator

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
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
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/granary-cache/granary/api/v1alpha1"
	"github.com/granary-cache/granary/internal/membership"
)

// statusEvery is how often the operator refreshes a status from the
// workers' Leases (it writes only what changed).
const statusEvery = 10 * time.Second

// RuntimeReconciler turns a CacheRuntime into its workers.
type RuntimeReconciler struct {
	client.Client
	Images   Images
	Recorder events.EventRecorder
}

// +kubebuilder:rbac:groups=granary.io,resources=cacheruntimes;datasets;dataloads,verbs=get;list;watch;update;patch
// +kubebuilder:rbac:groups=granary.io,resources=cacheruntimes/status;datasets/status;dataloads/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=granary.io,resources=cacheruntimes/finalizers;datasets/finalizers;dataloads/finalizers,verbs=update
// +kubebuilder:rbac:groups=apps,resources=daemonsets;statefulsets,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups="",resources=configmaps;secrets;services;serviceaccounts,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=rbac.authorization.k8s.io,resources=roles;rolebindings,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=coordination.k8s.io,resources=leases,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups="",resources=events,verbs=create;patch
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// Reconcile brings a CacheRuntime's objects in line with its spec and its
// status in line with the workers.
func (r *RuntimeReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	var rt v1alpha1.CacheRuntime
	if err := r.Get(ctx, req.NamespacedName, &rt); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if !rt.DeletionTimestamp.IsZero() {
		return ctrl.Result{}, nil // its objects go with it (owner references)
	}
	before := rt.Status.DeepCopy()
	rt.Status.ObservedGeneration = rt.Generation
	datasets, problems := r.datasets(ctx, &rt)
	rendered, err := renderConfig(&rt, datasets)
	if err != nil {
		r.fail(&rt, "InvalidSpec", err)
		return ctrl.Result{}, writeStatus(ctx, r.Client, &rt, before, &rt.Status)
	}
	if err := r.apply(ctx, &rt, rendered, datasets); err != nil {
		var se *SpecError
		if errors.As(err, &se) {
			r.fail(&rt, "InvalidSpec", err)
			return ctrl.Result{}, writeStatus(ctx, r.Client, &rt, before, &rt.Status)
		}
		r.Recorder.Eventf(&rt, nil, corev1.EventTypeWarning, "ApplyFailed", "Apply", "%v", err)
		return ctrl.Result{}, err
	}
	valid := metav1.Condition{Type: v1alpha1.ConditionValid, Status: metav1.ConditionTrue, Reason: "Rendered",
		Message: fmt.Sprintf("%d dataset(s) configured", len(datasets))}
	if len(problems) > 0 {
		valid.Status, valid.Reason, valid.Message = metav1.ConditionFalse, "DatasetProblems", joinProblems(problems)
	}
	meta.SetStatusCondition(&rt.Status.Conditions, valid)
	if err := r.observe(ctx, &rt); err != nil {
		return ctrl.Result{}, err
	}
	return ctrl.Result{RequeueAfter: statusEvery}, writeStatus(ctx, r.Client, &rt, before, &rt.Status)
}

// datasets returns the runtime's Datasets that can be served, and what is
// wrong with the others (they are left out of the configuration, and
// their own status says why).
func (r *RuntimeReconciler) datasets(ctx context.Context, rt *v1alpha1.CacheRuntime) ([]*v1alpha1.Dataset, []string) {
	var out []*v1alpha1.Dataset
	var problems []string
	for _, name := range rt.Spec.Datasets {
		var ds v1alpha1.Dataset
		if err := r.Get(ctx, types.NamespacedName{Namespace: rt.Namespace, Name: name}, &ds); err != nil {
			problems = append(problems, fmt.Sprintf("dataset %s: %v", name, err))
			continue
		}
		if !ds.DeletionTimestamp.IsZero() {
			continue
		}
		if err := checkDataset(ctx, r.Client, &ds); err != nil {
			problems = append(problems, fmt.Sprintf("dataset %s: %v", name, err))
			continue
		}
		out = append(out, &ds)
	}
	return out, problems
}

func joinProblems(ps []string) string {
	s := ps[0]
	for _, p := range ps[1:] {
		s += "; " + p
	}
	return s
}

// fail records a spec that cannot be run.
func (r *RuntimeReconciler) fail(rt *v1alpha1.CacheRuntime, reason string, err error) {
	rt.Status.Phase = v1alpha1.RuntimeFailed
	meta.SetStatusCondition(&rt.Status.Conditions, metav1.Condition{Type: v1alpha1.ConditionValid, Status: metav1.ConditionFalse,
		Reason: reason, Message: err.Error()})
	meta.SetStatusCondition(&rt.Status.Conditions, metav1.Condition{Type: v1alpha1.ConditionReady, Status: metav1.ConditionFalse,
		Reason: reason, Message: "the spec cannot be run"})
	r.Recorder.Eventf(rt, nil, corev1.EventTypeWarning, reason, "Render", "%v", err)
}

// apply creates or updates the runtime's objects.
func (r *RuntimeReconciler) apply(ctx context.Context, rt *v1alpha1.CacheRuntime, rendered Rendered, datasets []*v1alpha1.Dataset) error {
	if err := r.ensureToken(ctx, rt); err != nil {
		return err
	}
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: configMapName(rt.Name), Namespace: rt.Namespace}}
	if err := r.upsert(ctx, rt, cm, func() {
		cm.Labels = workerLabels(rt.Name)
		cm.Data = map[string]string{"granary.yaml": rendered.Config}
	}); err != nil {
		return err
	}
	sa, role, rb := workerRBAC(rt)
	for _, o := range []struct {
		obj client.Object
		fn  func()
	}{
		{&corev1.ServiceAccount{ObjectMeta: sa.ObjectMeta}, func() {}},
		{&rbacv1.Role{ObjectMeta: role.ObjectMeta}, nil},
		{&rbacv1.RoleBinding{ObjectMeta: rb.ObjectMeta}, nil},
		{&corev1.Service{ObjectMeta: workerService(rt).ObjectMeta}, nil},
	} {
		obj := o.obj
		err := r.upsert(ctx, rt, obj, func() {
			switch x := obj.(type) {
			case *rbacv1.Role:
				x.Labels, x.Rules = role.Labels, role.Rules
			case *rbacv1.RoleBinding:
				x.Labels, x.RoleRef, x.Subjects = rb.Labels, rb.RoleRef, rb.Subjects
			case *corev1.Service:
				want := workerService(rt)
				x.Labels = want.Labels
				x.Spec.ClusterIP = want.Spec.ClusterIP
				x.Spec.Selector, x.Spec.Ports, x.Spec.PublishNotReadyAddresses = want.Spec.Selector, want.Spec.Ports, true
			case *corev1.ServiceAccount:
				x.Labels = sa.Labels
			}
		})
		if err != nil {
			return err
		}
	}
	sts := rt.Spec.Replicas != nil
	tmpl := workerPodSpec(rt, rendered, r.Images.pick(usesCephFS(datasets)), r.Images, sts)
	if tmpl.Spec.Containers[0].Image == "" {
		return specErr("spec.worker.image", "no image: set it, or start the operator with --worker-image")
	}
	name := types.NamespacedName{Namespace: rt.Namespace, Name: workerName(rt.Name)}
	if sts {
		want := workerStatefulSet(rt, tmpl)
		obj := &appsv1.StatefulSet{ObjectMeta: metav1.ObjectMeta{Name: name.Name, Namespace: name.Namespace}}
		if err := r.upsert(ctx, rt, obj, func() {
			obj.Labels = want.Labels
			if obj.CreationTimestamp.IsZero() {
				obj.Spec = want.Spec
				return
			}
			obj.Spec.Replicas, obj.Spec.Template = want.Spec.Replicas, want.Spec.Template
		}); err != nil {
			return err
		}
		return r.deleteIfOwned(ctx, rt, &appsv1.DaemonSet{}, name)
	}
	want := workerDaemonSet(rt, tmpl)
	obj := &appsv1.DaemonSet{ObjectMeta: metav1.ObjectMeta{Name: name.Name, Namespace: name.Namespace}}
	if err := r.upsert(ctx, rt, obj, func() {
		obj.Labels = want.Labels
		if obj.CreationTimestamp.IsZero() {
			obj.Spec = want.Spec
			return
		}
		obj.Spec.Template, obj.Spec.UpdateStrategy = want.Spec.Template, want.Spec.UpdateStrategy
	}); err != nil {
		return err
	}
	return r.deleteIfOwned(ctx, rt, &appsv1.StatefulSet{}, name)
}

// upsert creates or updates obj (owned by the runtime) with mutate.
func (r *RuntimeReconciler) upsert(ctx context.Context, rt *v1alpha1.CacheRuntime, obj client.Object, mutate func()) error {
	_, err := controllerutil.CreateOrUpdate(ctx, r.Client, obj, func() error {
		if mutate != nil {
			mutate()
		}
		return controllerutil.SetControllerReference(rt, obj, r.Scheme())
	})
	if err != nil {
		return fmt.Errorf("%T %s: %w", obj, obj.GetName(), err)
	}
	return nil
}

// deleteIfOwned removes the workload of the other mode (DaemonSet after a
// switch to StatefulSet, or the reverse).
func (r *RuntimeReconciler) deleteIfOwned(ctx context.Context, rt *v1alpha1.CacheRuntime, obj client.Object, name types.NamespacedName) error {
	if err := r.Get(ctx, name, obj); err != nil {
		return client.IgnoreNotFound(err)
	}
	if !metav1.IsControlledBy(obj, rt) {
		return nil
	}
	return client.IgnoreNotFound(r.Delete(ctx, obj))
}

// ensureToken makes the runtime's shared token once.
func (r *RuntimeReconciler) ensureToken(ctx context.Context, rt *v1alpha1.CacheRuntime) error {
	var s corev1.Secret
	err := r.Get(ctx, types.NamespacedName{Namespace: rt.Namespace, Name: tokenName(rt.Name)}, &s)
	if err == nil || !apierrors.IsNotFound(err) {
		return err
	}
	b := make([]byte, 32)
	rand.Read(b)
	s = corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: tokenName(rt.Name), Namespace: rt.Namespace, Labels: workerLabels(rt.Name)},
		Data:       map[string][]byte{tokenKey: []byte(hex.EncodeToString(b))},
	}
	if err := controllerutil.SetControllerReference(rt, &s, r.Scheme()); err != nil {
		return err
	}
	if err := r.Create(ctx, &s); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("secret %s: %w", s.Name, err)
	}
	return nil
}

// observe fills the status from the workload and the workers' Leases.
func (r *RuntimeReconciler) observe(ctx context.Context, rt *v1alpha1.CacheRuntime) error {
	st := &rt.Status
	st.ConfigMap = configMapName(rt.Name)
	name := types.NamespacedName{Namespace: rt.Namespace, Name: workerName(rt.Name)}
	if rt.Spec.Replicas != nil {
		var sts appsv1.StatefulSet
		if err := r.Get(ctx, name, &sts); err != nil {
			return client.IgnoreNotFound(err)
		}
		st.WorkersDesired, st.WorkersReady = *rt.Spec.Replicas, sts.Status.ReadyReplicas
	} else {
		var ds appsv1.DaemonSet
		if err := r.Get(ctx, name, &ds); err != nil {
			return client.IgnoreNotFound(err)
		}
		st.WorkersDesired, st.WorkersReady = ds.Status.DesiredNumberScheduled, ds.Status.NumberReady
	}
	ws, err := runtimeWorkers(ctx, r.Client, rt.Namespace, rt.Name)
	if err != nil {
		return err
	}
	sum := sumWorkers(ws)
	st.Members = int32(sum.Live)
	st.CapacityBytes = sum.Capacity
	st.Capacity = human(sum.Capacity)
	ready := metav1.Condition{Type: v1alpha1.ConditionReady, Status: metav1.ConditionFalse}
	switch {
	case st.WorkersReady == 0 || sum.Live == 0:
		st.Phase, ready.Reason = v1alpha1.RuntimePending, "NoWorkerReady"
		ready.Message = fmt.Sprintf("%d of %d workers ready, %d live in the membership", st.WorkersReady, st.WorkersDesired, sum.Live)
	case st.WorkersReady < st.WorkersDesired:
		st.Phase, ready.Reason = v1alpha1.RuntimePartialReady, "SomeWorkersReady"
		ready.Message = fmt.Sprintf("%d of %d workers ready", st.WorkersReady, st.WorkersDesired)
	default:
		st.Phase, ready.Status, ready.Reason = v1alpha1.RuntimeReady, metav1.ConditionTrue, "WorkersReady"
		ready.Message = fmt.Sprintf("%d workers ready, %d live", st.WorkersReady, sum.Live)
	}
	meta.SetStatusCondition(&st.Conditions, ready)
	return nil
}

// writeStatus writes an object's status if it changed from before. A
// conflict (a loader wrote progress, or another reconcile came first) is
// returned, and the reconcile runs again on what is there now.
func writeStatus[S any](ctx context.Context, c client.Client, obj client.Object, before, after *S) error {
	if equality.Semantic.DeepEqual(before, after) {
		return nil
	}
	return client.IgnoreNotFound(c.Status().Update(ctx, obj))
}

// runtimeWorkers reads a runtime's Leases.
func runtimeWorkers(ctx context.Context, c client.Client, ns, runtime string) ([]worker, error) {
	var leases coordinationv1.LeaseList
	if err := c.List(ctx, &leases, client.InNamespace(ns), client.MatchingLabels{membership.LabelCluster: runtime}); err != nil {
		return nil, fmt.Errorf("list the workers' Leases: %w", err)
	}
	return readLeases(leases.Items, time.Now()), nil
}

// SetupWithManager registers the controller: it watches CacheRuntimes, the
// objects they own, and the Datasets they name.
func (r *RuntimeReconciler) SetupWithManager(mgr ctrl.Manager) error {
	return ctrl.NewControllerManagedBy(mgr).
		For(&v1alpha1.CacheRuntime{}).
		Owns(&appsv1.DaemonSet{}).
		Owns(&appsv1.StatefulSet{}).
		Owns(&corev1.ConfigMap{}).
		Watches(&v1alpha1.Dataset{}, handler.EnqueueRequestsFromMapFunc(r.runtimesOf)).
		Watches(&coordinationv1.Lease{}, handler.EnqueueRequestsFromMapFunc(runtimeOfLease), builder.WithPredicates(membershipChanged)).
		Complete(r)
}

// runtimeOfLease maps a worker's Lease to its runtime.
func runtimeOfLease(_ context.Context, obj client.Object) []reconcile.Request {
	rt, ok := obj.GetLabels()[membership.LabelCluster]
	if !ok {
		return nil
	}
	return []reconcile.Request{{NamespacedName: types.NamespacedName{Namespace: obj.GetNamespace(), Name: rt}}}
}

// membershipChanged passes the Lease events that change who is a member (a
// worker joins, stops, leaves) and not the renewals: a status follows a
// membership change at once, while renewals, a few per worker and minute,
// cost the operator nothing (figures are read every statusEvery).
var membershipChanged = predicate.Funcs{
	CreateFunc:  func(e event.CreateEvent) bool { return e.Object.GetLabels()[membership.LabelCluster] != "" },
	DeleteFunc:  func(e event.DeleteEvent) bool { return e.Object.GetLabels()[membership.LabelCluster] != "" },
	GenericFunc: func(event.GenericEvent) bool { return false },
	UpdateFunc: func(e event.UpdateEvent) bool {
		o, ok1 := e.ObjectOld.(*coordinationv1.Lease)
		n, ok2 := e.ObjectNew.(*coordinationv1.Lease)
		if !ok1 || !ok2 || n.Labels[membership.LabelCluster] == "" {
			return false
		}
		holder := func(l *coordinationv1.Lease) string {
			if l.Spec.HolderIdentity == nil {
				return ""
			}
			return *l.Spec.HolderIdentity
		}
		return holder(o) != holder(n) || o.Annotations[membership.AnnotationLeaving] != n.Annotations[membership.AnnotationLeaving]
	},
}

// runtimesOf maps a Dataset to the runtimes that name it.
func (r *RuntimeReconciler) runtimesOf(ctx context.Context, obj client.Object) []reconcile.Request {
	var list v1alpha1.CacheRuntimeList
	if err := r.List(ctx, &list, client.InNamespace(obj.GetNamespace())); err != nil {
		return nil
	}
	var out []reconcile.Request
	for _, rt := range list.Items {
		if slices.Contains(rt.Spec.Datasets, obj.GetName()) {
			out = append(out, reconcile.Request{NamespacedName: types.NamespacedName{Namespace: rt.Namespace, Name: rt.Name}})
		}
	}
	return out
}
