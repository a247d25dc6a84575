package operator

import (
	"context"
	"fmt"
	"path"
	"strings"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	"github.com/granary-cache/granary/api/v1alpha1"
)

// DataLoadReconciler runs a DataLoad as a Job (or a CronJob) of `granary
// load`, which writes its progress into the DataLoad's status itself.
type DataLoadReconciler struct {
	client.Client
	Images   Images
	Recorder events.EventRecorder
}

// +kubebuilder:rbac:groups=batch,resources=jobs;cronjobs,verbs=get;list;watch;create;update;patch;delete

func loaderName(dl string) string { return dl + "-load" }

// Reconcile starts the load's Job and follows it.
func (r *DataLoadReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	var dl v1alpha1.DataLoad
	if err := r.Get(ctx, req.NamespacedName, &dl); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if !dl.DeletionTimestamp.IsZero() {
		return ctrl.Result{}, nil
	}
	before := dl.Status.DeepCopy()
	st := &dl.Status
	st.ObservedGeneration = dl.Generation
	var ds v1alpha1.Dataset
	err := r.Get(ctx, types.NamespacedName{Namespace: dl.Namespace, Name: dl.Spec.Dataset}, &ds)
	if err != nil {
		if client.IgnoreNotFound(err) != nil {
			return ctrl.Result{}, err
		}
		return r.wait(ctx, &dl, before, "DatasetNotFound", fmt.Sprintf("dataset %s/%s does not exist", dl.Namespace, dl.Spec.Dataset))
	}
	rt, err := runtimeOf(ctx, r.Client, &ds)
	if err != nil {
		return ctrl.Result{}, err
	}
	if rt == nil {
		return r.wait(ctx, &dl, before, "NoRuntime", fmt.Sprintf("no CacheRuntime serves dataset %s", ds.Name))
	}
	if ds.Status.Phase != v1alpha1.DatasetReady {
		return r.wait(ctx, &dl, before, "DatasetNotReady", fmt.Sprintf("dataset %s is %s", ds.Name, orUnknown(ds.Status.Phase)))
	}
	if err := r.ensureLoaderRBAC(ctx, rt); err != nil {
		return ctrl.Result{}, err
	}
	rendered, err := renderConfig(rt, []*v1alpha1.Dataset{&ds})
	if err != nil {
		return r.wait(ctx, &dl, before, "InvalidSpec", err.Error())
	}
	tmpl := loaderPodSpec(&dl, rt, rendered, r.Images.pick(usesCephFS([]*v1alpha1.Dataset{&ds})), r.Images)
	st.Job = loaderName(dl.Name)
	if dl.Spec.Policy == v1alpha1.LoadCron {
		return ctrl.Result{}, r.cron(ctx, &dl, tmpl, before)
	}
	job := &batchv1.Job{ObjectMeta: metav1.ObjectMeta{Name: loaderName(dl.Name), Namespace: dl.Namespace}}
	if err := r.Get(ctx, client.ObjectKeyFromObject(job), job); client.IgnoreNotFound(err) != nil {
		return ctrl.Result{}, err
	} else if err != nil {
		job = loaderJob(&dl, tmpl)
		if err := controllerutil.SetControllerReference(&dl, job, r.Scheme()); err != nil {
			return ctrl.Result{}, err
		}
		if err := r.Create(ctx, job); err != nil {
			r.Recorder.Eventf(&dl, nil, corev1.EventTypeWarning, "JobFailed", "Create", "create Job %s: %v", job.Name, err)
			return ctrl.Result{}, err
		}
		r.Recorder.Eventf(&dl, nil, corev1.EventTypeNormal, "Started", "Create", "Job %s loads %s", job.Name, ds.Name)
		if st.Phase == "" {
			st.Phase = v1alpha1.LoadPending
		}
	}
	followJob(st, job)
	if st.Phase == v1alpha1.LoadFailed && before.Phase != v1alpha1.LoadFailed {
		r.Recorder.Eventf(&dl, nil, corev1.EventTypeWarning, "LoadFailed", "Load", "%s", meta.FindStatusCondition(st.Conditions, v1alpha1.ConditionReady).Message)
	}
	return ctrl.Result{}, writeStatus(ctx, r.Client, &dl, before, &dl.Status)
}

func orUnknown(s string) string {
	if s == "" {
		return "not yet reconciled"
	}
	return s
}

// wait records why a load cannot start yet; the watches start it once that
// changes.
func (r *DataLoadReconciler) wait(ctx context.Context, dl *v1alpha1.DataLoad, before *v1alpha1.DataLoadStatus, reason, msg string) (ctrl.Result, error) {
	if dl.Status.Phase == "" || dl.Status.Phase == v1alpha1.LoadPending {
		dl.Status.Phase = v1alpha1.LoadPending
	}
	meta.SetStatusCondition(&dl.Status.Conditions, metav1.Condition{Type: v1alpha1.ConditionReady, Status: metav1.ConditionFalse, Reason: reason, Message: msg})
	if !equality.Semantic.DeepEqual(before, &dl.Status) {
		r.Recorder.Eventf(dl, nil, corev1.EventTypeWarning, reason, "Load", "%s", msg)
	}
	return ctrl.Result{RequeueAfter: statusEvery}, writeStatus(ctx, r.Client, dl, before, &dl.Status)
}

// followJob sets the phase from the Job, where the loader could not say it
// itself (it was killed, or never started).
func followJob(st *v1alpha1.DataLoadStatus, job *batchv1.Job) {
	for _, c := range job.Status.Conditions {
		if c.Status != corev1.ConditionTrue {
			continue
		}
		switch c.Type {
		case batchv1.JobComplete:
			if st.Phase != v1alpha1.LoadComplete && st.Phase != v1alpha1.LoadFailed {
				st.Phase = v1alpha1.LoadComplete
			}
			meta.SetStatusCondition(&st.Conditions, metav1.Condition{Type: v1alpha1.ConditionReady, Status: metav1.ConditionTrue,
				Reason: "Complete", Message: fmt.Sprintf("Job %s completed", job.Name)})
			return
		case batchv1.JobFailed:
			st.Phase = v1alpha1.LoadFailed
			meta.SetStatusCondition(&st.Conditions, metav1.Condition{Type: v1alpha1.ConditionReady, Status: metav1.ConditionFalse,
				Reason: "JobFailed", Message: fmt.Sprintf("Job %s failed: %s: %s", job.Name, c.Reason, c.Message)})
			return
		}
	}
	if st.Phase == v1alpha1.LoadComplete || st.Phase == v1alpha1.LoadFailed {
		return // the loader said how it ended; its pod is on its way out
	}
	if job.Status.Active > 0 && (st.Phase == "" || st.Phase == v1alpha1.LoadPending) {
		st.Phase = v1alpha1.LoadLoading
	}
	meta.SetStatusCondition(&st.Conditions, metav1.Condition{Type: v1alpha1.ConditionReady, Status: metav1.ConditionFalse,
		Reason: "Running", Message: fmt.Sprintf("Job %s is running", job.Name)})
}

// cron keeps the CronJob of a scheduled load.
func (r *DataLoadReconciler) cron(ctx context.Context, dl *v1alpha1.DataLoad, tmpl corev1.PodTemplateSpec, before *v1alpha1.DataLoadStatus) error {
	cj := &batchv1.CronJob{ObjectMeta: metav1.ObjectMeta{Name: loaderName(dl.Name), Namespace: dl.Namespace}}
	_, err := controllerutil.CreateOrUpdate(ctx, r.Client, cj, func() error {
		cj.Labels = loaderLabels(dl)
		cj.Spec.Schedule = dl.Spec.Schedule
		cj.Spec.ConcurrencyPolicy = batchv1.ForbidConcurrent
		cj.Spec.JobTemplate.Spec = loaderJob(dl, tmpl).Spec
		return controllerutil.SetControllerReference(dl, cj, r.Scheme())
	})
	if err != nil {
		r.Recorder.Eventf(dl, nil, corev1.EventTypeWarning, "CronJobFailed", "Apply", "CronJob %s: %v", cj.Name, err)
		meta.SetStatusCondition(&dl.Status.Conditions, metav1.Condition{Type: v1alpha1.ConditionValid, Status: metav1.ConditionFalse,
			Reason: "CronJobRefused", Message: err.Error()})
		dl.Status.Phase = v1alpha1.LoadFailed
		return writeStatus(ctx, r.Client, dl, before, &dl.Status)
	}
	if cj.Status.LastScheduleTime != nil {
		dl.Status.LastScheduleTime = cj.Status.LastScheduleTime
	}
	if dl.Status.Phase == "" {
		dl.Status.Phase = v1alpha1.LoadPending
	}
	meta.SetStatusCondition(&dl.Status.Conditions, metav1.Condition{Type: v1alpha1.ConditionValid, Status: metav1.ConditionTrue,
		Reason: "Scheduled", Message: fmt.Sprintf("CronJob %s runs on %q", cj.Name, dl.Spec.Schedule)})
	return writeStatus(ctx, r.Client, dl, before, &dl.Status)
}

func loaderLabels(dl *v1alpha1.DataLoad) map[string]string {
	return map[string]string{"app.kubernetes.io/name": "granary", v1alpha1.LabelComponent: "loader",
		v1alpha1.LabelDataLoad: dl.Name, "app.kubernetes.io/managed-by": "granary-operator"}
}

func loaderSA(rt string) string { return rt + "-loader" }

// loaderJob runs one load; a failed load is not retried by the Job (a run
// again skips what is cached: a new DataLoad resumes it).
func loaderJob(dl *v1alpha1.DataLoad, tmpl corev1.PodTemplateSpec) *batchv1.Job {
	return &batchv1.Job{
		ObjectMeta: metav1.ObjectMeta{Name: loaderName(dl.Name), Namespace: dl.Namespace, Labels: loaderLabels(dl)},
		Spec: batchv1.JobSpec{
			BackoffLimit: ptr(int32(2)),
			Template:     tmpl,
		},
	}
}

// loaderPodSpec is the pod that runs `granary load` with the runtime's
// configuration, reporting into the DataLoad.
func loaderPodSpec(dl *v1alpha1.DataLoad, rt *v1alpha1.CacheRuntime, r Rendered, image string, im Images) corev1.PodTemplateSpec {
	if rt.Spec.Worker.Image != "" {
		image = rt.Spec.Worker.Image
	}
	args := []string{"load", "--config", configFile, "--report-to", "dataload/" + dl.Namespace + "/" + dl.Name}
	if dl.Spec.MetadataOnly {
		args = append(args, "--metadata-only")
	}
	if dl.Spec.Replicas > 0 {
		args = append(args, "--replicas", fmt.Sprint(dl.Spec.Replicas))
	}
	paths := dl.Spec.Paths
	if len(paths) == 0 {
		paths = []string{"/"}
	}
	for _, p := range paths {
		args = append(args, path.Join("/", dl.Spec.Dataset, strings.TrimPrefix(p, "/")))
	}
	volumes := []corev1.Volume{
		{Name: "config", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
			LocalObjectReference: corev1.LocalObjectReference{Name: configMapName(rt.Name)}}}},
		{Name: "token", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: tokenName(rt.Name)}}},
	}
	mounts := []corev1.VolumeMount{
		{Name: "config", MountPath: configDir, ReadOnly: true},
		{Name: "token", MountPath: tokenDir, ReadOnly: true},
	}
	seen := map[string]bool{}
	for _, s := range r.Secrets {
		if seen[s.Secret] {
			continue
		}
		seen[s.Secret] = true
		name := volumeNameFor("secret-" + s.Secret)
		volumes = append(volumes, corev1.Volume{Name: name, VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: s.Secret}}})
		mounts = append(mounts, corev1.VolumeMount{Name: name, MountPath: path.Join(secretsRoot, s.Secret), ReadOnly: true})
	}
	pull := rt.Spec.Worker.ImagePullPolicy
	if pull == "" {
		pull = im.PullPolicy
	}
	return corev1.PodTemplateSpec{
		ObjectMeta: metav1.ObjectMeta{Labels: loaderLabels(dl)},
		Spec: corev1.PodSpec{
			ServiceAccountName: loaderSA(rt.Name),
			RestartPolicy:      corev1.RestartPolicyNever,
			NodeSelector:       rt.Spec.Worker.NodeSelector,
			Tolerations:        rt.Spec.Worker.Tolerations,
			Containers: []corev1.Container{{
				Name:            "load",
				Image:           image,
				ImagePullPolicy: pull,
				Command:         []string{"granary"},
				Args:            args,
				VolumeMounts:    mounts,
			}},
			Volumes: volumes,
		},
	}
}

// volumeNameFor makes a volume name (a DNS label) of s.
func volumeNameFor(s string) string {
	s = strings.ReplaceAll(s, ".", "-")
	if len(s) > 63 {
		s = s[:63]
	}
	return strings.TrimRight(s, "-")
}

// ensureLoaderRBAC lets loaders of a runtime read its Leases and write
// DataLoads' status.
func (r *DataLoadReconciler) ensureLoaderRBAC(ctx context.Context, rt *v1alpha1.CacheRuntime) error {
	meta := metav1.ObjectMeta{Name: loaderSA(rt.Name), Namespace: rt.Namespace}
	labels := map[string]string{"app.kubernetes.io/name": "granary", v1alpha1.LabelComponent: "loader", v1alpha1.LabelRuntime: rt.Name}
	sa := &corev1.ServiceAccount{ObjectMeta: meta}
	role := &rbacv1.Role{ObjectMeta: meta}
	rb := &rbacv1.RoleBinding{ObjectMeta: meta}
	for _, o := range []struct {
		obj client.Object
		fn  func()
	}{
		{sa, func() { sa.Labels = labels }},
		{role, func() {
			role.Labels = labels
			role.Rules = []rbacv1.PolicyRule{
				{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, Verbs: []string{"get", "list", "watch"}},
				{APIGroups: []string{v1alpha1.GroupVersion.Group}, Resources: []string{"dataloads"}, Verbs: []string{"get"}},
				{APIGroups: []string{v1alpha1.GroupVersion.Group}, Resources: []string{"dataloads/status"}, Verbs: []string{"get", "update", "patch"}},
			}
		}},
		{rb, func() {
			rb.Labels = labels
			rb.RoleRef = rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: role.Name}
			rb.Subjects = []rbacv1.Subject{{Kind: "ServiceAccount", Name: sa.Name, Namespace: rt.Namespace}}
		}},
	} {
		if _, err := controllerutil.CreateOrUpdate(ctx, r.Client, o.obj, func() error {
			o.fn()
			return controllerutil.SetControllerReference(rt, o.obj, r.Scheme())
		}); err != nil {
			return fmt.Errorf("%T %s: %w", o.obj, o.obj.GetName(), err)
		}
	}
	return nil
}

// SetupWithManager registers the controller: it watches DataLoads, their
// Jobs and CronJobs, and Datasets (a load waits for its dataset).
func (r *DataLoadReconciler) SetupWithManager(mgr ctrl.Manager) error {
	return ctrl.NewControllerManagedBy(mgr).
		For(&v1alpha1.DataLoad{}).
		Owns(&batchv1.Job{}).
		Owns(&batchv1.CronJob{}).
		Complete(r)
}
