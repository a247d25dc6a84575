package operator

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/granary-cache/granary/api/v1alpha1"
	"github.com/granary-cache/granary/internal/kubetest"
	"github.com/granary-cache/granary/internal/membership"
	"github.com/granary-cache/granary/internal/wire"
)

// The controllers against a real API server, controller-manager (for
// garbage collection and Jobs) and scheduler; the operator runs in-process.

func testScheme(t *testing.T) *runtime.Scheme {
	s := Scheme()
	if err := apiextensionsv1.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	return s
}

func startCluster(t *testing.T, nodes int) *kubetest.Cluster {
	t.Helper()
	return kubetest.Start(t, kubetest.Options{CRDDirs: []string{"../../charts/granary/crds"}, Nodes: nodes, Scheme: testScheme(t)})
}

// runOperator runs an operator in-process until the test ends (or stop is
// called).
func runOperator(t *testing.T, c *kubetest.Cluster, o Options) (stop func()) {
	t.Helper()
	if o.Images.Default == "" {
		o.Images.Default = "granary:test"
	}
	if o.MetricsAddr == "" {
		o.MetricsAddr = "0"
	}
	if o.ProbeAddr == "" {
		o.ProbeAddr = "0"
	}
	mgr, err := New(c.Config, o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	var stopped bool
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("operator: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Errorf("operator did not stop within 30s")
		}
	}
	t.Cleanup(stop)
	return stop
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return c
}

func createNamespace(t *testing.T, c *kubetest.Cluster, name string) {
	t.Helper()
	if err := c.Client.Create(ctx(t), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}); err != nil {
		t.Fatal(err)
	}
}

func mustCreate(t *testing.T, c *kubetest.Cluster, objs ...client.Object) {
	t.Helper()
	for _, o := range objs {
		if err := c.Client.Create(ctx(t), o); err != nil {
			t.Fatalf("create %T %s: %v", o, o.GetName(), err)
		}
	}
}

func s3Secret(ns string) *corev1.Secret {
	return &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "s3", Namespace: ns},
		Data: map[string][]byte{"id": []byte("AKID"), "secret": []byte("SECRET")}}
}

func nsDataset(ns string) *v1alpha1.Dataset {
	ds := testDataset()
	ds.Namespace = ns
	return ds
}

func nsRuntime(ns string) *v1alpha1.CacheRuntime {
	rt := testRuntime()
	rt.Namespace = ns
	return rt
}

func get[T client.Object](t *testing.T, c *kubetest.Cluster, ns, name string, obj T) (T, error) {
	err := c.Client.Get(ctx(t), types.NamespacedName{Namespace: ns, Name: name}, obj)
	return obj, err
}

// hasEvent reports whether an event with this reason was recorded about an
// object.
func hasEvent(t *testing.T, c *kubetest.Cluster, ns, name, reason string) (bool, error) {
	evs, err := c.Clientset.EventsV1().Events(ns).List(ctx(t), metav1.ListOptions{})
	if err != nil {
		return false, err
	}
	for _, e := range evs.Items {
		if e.Regarding.Name == name && e.Reason == reason {
			return true, nil
		}
	}
	return false, nil
}

func TestControllers(t *testing.T) {
	c := startCluster(t, 0)
	runOperator(t, c, Options{})

	t.Run("runtime objects: create, update, switch to a StatefulSet, delete", func(t *testing.T) {
		ns := "create"
		createNamespace(t, c, ns)
		mustCreate(t, c, s3Secret(ns), nsDataset(ns), nsRuntime(ns))
		c.WaitFor(t, 30*time.Second, "the workers' DaemonSet", func() (bool, error) {
			_, err := get(t, c, ns, "train-worker", &appsv1.DaemonSet{})
			return err == nil, err
		})
		cm, err := get(t, c, ns, "train-config", &corev1.ConfigMap{})
		if err != nil || !strings.Contains(cm.Data["granary.yaml"], "s3://bucket/imagenet") {
			t.Fatalf("ConfigMap: %v %v", err, cm.Data)
		}
		for _, o := range []client.Object{&corev1.ServiceAccount{}, &rbacv1.Role{}, &rbacv1.RoleBinding{}} {
			if _, err := get(t, c, ns, "train-worker", o); err != nil {
				t.Errorf("%T: %v", o, err)
			}
		}
		svc, err := get(t, c, ns, "train-workers", &corev1.Service{})
		if err != nil || svc.Spec.ClusterIP != corev1.ClusterIPNone {
			t.Errorf("headless Service: %v %+v", err, svc.Spec)
		}
		tok, err := get(t, c, ns, "train-token", &corev1.Secret{})
		if err != nil || len(tok.Data["token"]) != 64 {
			t.Errorf("token Secret: %v", err)
		}
		ds, _ := get(t, c, ns, "train-worker", &appsv1.DaemonSet{})
		hash := ds.Spec.Template.Annotations["granary.io/config-hash"]
		if o := metav1.GetControllerOf(ds); o == nil || o.Kind != "CacheRuntime" || o.Name != "train" {
			t.Errorf("DaemonSet owners %v", ds.OwnerReferences)
		}

		// Update: a bigger MEM tier rolls the workers (new config hash).
		var rt v1alpha1.CacheRuntime
		if _, err := get(t, c, ns, "train", &rt); err != nil {
			t.Fatal(err)
		}
		rt.Spec.Tiers[0].Quota = resource.MustParse("4Gi")
		if err := c.Client.Update(ctx(t), &rt); err != nil {
			t.Fatal(err)
		}
		c.WaitFor(t, 30*time.Second, "the new configuration in the DaemonSet", func() (bool, error) {
			ds, err := get(t, c, ns, "train-worker", &appsv1.DaemonSet{})
			return err == nil && ds.Spec.Template.Annotations["granary.io/config-hash"] != hash, err
		})
		cm, _ = get(t, c, ns, "train-config", &corev1.ConfigMap{})
		if !strings.Contains(cm.Data["granary.yaml"], `quota: "4294967296"`) {
			t.Errorf("ConfigMap not updated:\n%s", cm.Data["granary.yaml"])
		}

		// StatefulSet mode.
		get(t, c, ns, "train", &rt)
		rt.Spec.Replicas = ptr(int32(2))
		if err := c.Client.Update(ctx(t), &rt); err != nil {
			t.Fatal(err)
		}
		c.WaitFor(t, 30*time.Second, "a StatefulSet in place of the DaemonSet", func() (bool, error) {
			sts, err := get(t, c, ns, "train-worker", &appsv1.StatefulSet{})
			if err != nil {
				return false, err
			}
			_, err = get(t, c, ns, "train-worker", &appsv1.DaemonSet{})
			return *sts.Spec.Replicas == 2 && apierrors.IsNotFound(err), nil
		})

		// Delete: the garbage collector removes what the runtime owned.
		if err := c.Client.Delete(ctx(t), &rt); err != nil {
			t.Fatal(err)
		}
		c.WaitFor(t, 60*time.Second, "the runtime's objects collected", func() (bool, error) {
			_, err1 := get(t, c, ns, "train-worker", &appsv1.StatefulSet{})
			_, err2 := get(t, c, ns, "train-config", &corev1.ConfigMap{})
			return apierrors.IsNotFound(err1) && apierrors.IsNotFound(err2), nil
		})
	})

	t.Run("invalid specs are refused or reported", func(t *testing.T) {
		ns := "invalid"
		createNamespace(t, c, ns)
		// Refused by the schema.
		bad := nsDataset(ns)
		bad.Name, bad.Spec.UFS = "ftp", "ftp://host/x"
		if err := c.Client.Create(ctx(t), bad); err == nil || !strings.Contains(err.Error(), "spec.ufs") {
			t.Errorf("ftp:// dataset: %v", err)
		}
		rt := nsRuntime(ns)
		rt.Spec.Tiers[0].Quota = resource.MustParse("-1Gi")
		if err := c.Client.Create(ctx(t), rt); err == nil || !strings.Contains(err.Error(), "quota must be positive") {
			t.Errorf("negative quota: %v", err)
		}
		rt = nsRuntime(ns)
		rt.Spec.Tiers[1].High, rt.Spec.Tiers[1].Low = ptr(int32(50)), ptr(int32(80))
		if err := c.Client.Create(ctx(t), rt); err == nil || !strings.Contains(err.Error(), "low must be below high") {
			t.Errorf("low above high: %v", err)
		}
		dl := &v1alpha1.DataLoad{ObjectMeta: metav1.ObjectMeta{Name: "cron", Namespace: ns},
			Spec: v1alpha1.DataLoadSpec{Dataset: "imagenet", Policy: v1alpha1.LoadCron}}
		if err := c.Client.Create(ctx(t), dl); err == nil || !strings.Contains(err.Error(), "needs a schedule") {
			t.Errorf("cron without schedule: %v", err)
		}
		// Reported: a missing Secret, an unknown option.
		mustCreate(t, c, nsDataset(ns), nsRuntime(ns))
		opt := nsDataset(ns)
		opt.Name = "colour"
		opt.Spec.Options["colour"] = "red"
		mustCreate(t, c, opt)
		for name, want := range map[string]string{"imagenet": `secret invalid/s3 does not exist`, "colour": "spec.options.colour: unknown option"} {
			c.WaitFor(t, 30*time.Second, name+" Failed with its reason", func() (bool, error) {
				ds, err := get(t, c, ns, name, &v1alpha1.Dataset{})
				if err != nil {
					return false, err
				}
				cond := meta.FindStatusCondition(ds.Status.Conditions, v1alpha1.ConditionValid)
				return ds.Status.Phase == v1alpha1.DatasetFailed && cond != nil && strings.Contains(cond.Message, want), nil
			})
			c.WaitFor(t, 10*time.Second, "an InvalidSpec event for "+name, func() (bool, error) { return hasEvent(t, c, ns, name, "InvalidSpec") })
		}
		// The runtime says which datasets it left out.
		c.WaitFor(t, 30*time.Second, "the runtime's Valid condition", func() (bool, error) {
			rt, err := get(t, c, ns, "train", &v1alpha1.CacheRuntime{})
			cond := meta.FindStatusCondition(rt.Status.Conditions, v1alpha1.ConditionValid)
			return err == nil && cond != nil && cond.Status == metav1.ConditionFalse && strings.Contains(cond.Message, "does not exist"), err
		})
		// The Secret appears: the dataset is served.
		mustCreate(t, c, s3Secret(ns))
		c.WaitFor(t, 30*time.Second, "imagenet valid once its Secret exists", func() (bool, error) {
			ds, err := get(t, c, ns, "imagenet", &v1alpha1.Dataset{})
			return err == nil && ds.Status.Phase == v1alpha1.DatasetBound, err
		})
	})

	t.Run("dataset status from Leases; volume; deletion waits for its pods", func(t *testing.T) {
		ns := "status"
		createNamespace(t, c, ns)
		pinned := nsDataset(ns)
		pinned.Spec.NodeAffinity = &corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{{MatchExpressions: []corev1.NodeSelectorRequirement{
			{Key: "topology.kubernetes.io/zone", Operator: corev1.NodeSelectorOpIn, Values: []string{"rack-1"}}}}}}
		withOptions := nsRuntime(ns)
		withOptions.Spec.Mount.Options = []string{"max_read=1048576"}
		mustCreate(t, c, s3Secret(ns), pinned, withOptions)
		// Two workers publish figures on their Leases, as workers do.
		for i, id := range []string{"w1", "w2"} {
			f := wire.Figures{Capacity: 2 << 30, Hits: 90, Misses: 10, Datasets: map[string]wire.DatasetFigures{"imagenet": {CachedBytes: 256 << 20}}}
			if i == 0 {
				f.Datasets["imagenet"] = wire.DatasetFigures{CachedBytes: 256 << 20, Usage: &wire.UFSUsage{Files: 1000, Bytes: 1 << 30, Complete: true}}
			}
			mustCreate(t, c, workerLease(ns, "train", id, f))
		}
		c.WaitFor(t, 30*time.Second, "the dataset Ready with the workers' figures", func() (bool, error) {
			ds, err := get(t, c, ns, "imagenet", &v1alpha1.Dataset{})
			st := ds.Status
			return err == nil && st.Phase == v1alpha1.DatasetReady && st.Workers == 2 && st.UFSTotal == "1.00GiB" && st.Files == 1000 &&
				st.Cached == "512MiB" && st.CachedPercentage == "25.0%" && st.CacheCapacity == "4.00GiB" && st.HitRatio == "90.0%", err
		})
		pv, err := get(t, c, "", "status-imagenet", &corev1.PersistentVolume{})
		if err != nil || pv.Spec.CSI == nil || pv.Spec.CSI.Driver != v1alpha1.CSIDriver || pv.Spec.AccessModes[0] != corev1.ReadOnlyMany {
			t.Fatalf("PersistentVolume: %v %+v", err, pv.Spec)
		}
		if na := pv.Spec.NodeAffinity; na == nil || na.Required.NodeSelectorTerms[0].MatchExpressions[0].Values[0] != "rack-1" ||
			len(pv.Spec.MountOptions) != 1 || pv.Spec.MountOptions[0] != "max_read=1048576" {
			t.Errorf("the volume lacks the dataset's node affinity or the runtime's mount options: %+v %v", pv.Spec.NodeAffinity, pv.Spec.MountOptions)
		}
		pvc, err := get(t, c, ns, "imagenet", &corev1.PersistentVolumeClaim{})
		if err != nil || pvc.Spec.VolumeName != pv.Name {
			t.Fatalf("PersistentVolumeClaim: %v %+v", err, pvc.Spec)
		}
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "train-job", Namespace: ns}, Spec: corev1.PodSpec{
			Containers: []corev1.Container{{Name: "main", Image: "python"}},
			Volumes: []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{
				PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: "imagenet", ReadOnly: true}}}},
		}}
		mustCreate(t, c, pod)
		ds, _ := get(t, c, ns, "imagenet", &v1alpha1.Dataset{})
		if err := c.Client.Delete(ctx(t), ds); err != nil {
			t.Fatal(err)
		}
		c.WaitFor(t, 30*time.Second, "a DatasetInUse event", func() (bool, error) { return hasEvent(t, c, ns, "imagenet", "DatasetInUse") })
		if _, err := get(t, c, ns, "imagenet", &v1alpha1.Dataset{}); err != nil {
			t.Fatalf("a dataset in use went away: %v", err)
		}
		if err := c.Client.Delete(ctx(t), pod, client.GracePeriodSeconds(0)); err != nil {
			t.Fatal(err)
		}
		c.WaitFor(t, 60*time.Second, "the dataset and its PersistentVolume gone", func() (bool, error) {
			_, err1 := get(t, c, ns, "imagenet", &v1alpha1.Dataset{})
			_, err2 := get(t, c, "", "status-imagenet", &corev1.PersistentVolume{})
			return apierrors.IsNotFound(err1) && apierrors.IsNotFound(err2), nil
		})
	})

	t.Run("a DataLoad becomes a Job of granary load; a failed Job fails it", func(t *testing.T) {
		ns := "load"
		createNamespace(t, c, ns)
		mustCreate(t, c, s3Secret(ns), nsDataset(ns), nsRuntime(ns),
			workerLease(ns, "train", "w1", wire.Figures{Capacity: 1 << 30}))
		dl := &v1alpha1.DataLoad{ObjectMeta: metav1.ObjectMeta{Name: "warm", Namespace: ns},
			Spec: v1alpha1.DataLoadSpec{Dataset: "imagenet", Paths: []string{"train/", "val/*.tar"}, Replicas: 2}}
		mustCreate(t, c, dl)
		var job *batchv1.Job
		c.WaitFor(t, 30*time.Second, "the load's Job", func() (bool, error) {
			var err error
			job, err = get(t, c, ns, "warm-load", &batchv1.Job{})
			return err == nil, nil
		})
		args := strings.Join(job.Spec.Template.Spec.Containers[0].Args, " ")
		if want := "load --config /etc/granary/config/granary.yaml --report-to dataload/load/warm --replicas 2 /imagenet/train /imagenet/val/*.tar"; args != want {
			t.Errorf("loader args %q, want %q", args, want)
		}
		if _, err := get(t, c, ns, "train-loader", &rbacv1.Role{}); err != nil {
			t.Errorf("loader Role: %v", err)
		}
		// The Job fails (as the job controller says when its pods do).
		err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
			if _, err := get(t, c, ns, "warm-load", job); err != nil {
				return err
			}
			job.Status.Conditions = append(job.Status.Conditions,
				batchv1.JobCondition{Type: batchv1.JobFailureTarget, Status: corev1.ConditionTrue, Reason: "BackoffLimitExceeded", Message: "Job has reached the specified backoff limit"},
				batchv1.JobCondition{Type: batchv1.JobFailed, Status: corev1.ConditionTrue, Reason: "BackoffLimitExceeded", Message: "Job has reached the specified backoff limit"})
			job.Status.Active, job.Status.Failed, job.Status.Ready, job.Status.Terminating = 0, 3, ptr(int32(0)), ptr(int32(0))
			if job.Status.StartTime == nil {
				now := metav1.Now()
				job.Status.StartTime = &now
			}
			return c.Client.Status().Update(ctx(t), job)
		})
		if err != nil {
			t.Fatal(err)
		}
		c.WaitFor(t, 30*time.Second, "the DataLoad Failed with the Job's reason", func() (bool, error) {
			dl, err := get(t, c, ns, "warm", &v1alpha1.DataLoad{})
			cond := meta.FindStatusCondition(dl.Status.Conditions, v1alpha1.ConditionReady)
			return err == nil && dl.Status.Phase == v1alpha1.LoadFailed && cond != nil && strings.Contains(cond.Message, "BackoffLimitExceeded"), err
		})
		c.WaitFor(t, 10*time.Second, "a LoadFailed event", func() (bool, error) { return hasEvent(t, c, ns, "warm", "LoadFailed") })

		cron := &v1alpha1.DataLoad{ObjectMeta: metav1.ObjectMeta{Name: "nightly", Namespace: ns},
			Spec: v1alpha1.DataLoadSpec{Dataset: "imagenet", Policy: v1alpha1.LoadCron, Schedule: "0 3 * * *"}}
		mustCreate(t, c, cron)
		c.WaitFor(t, 30*time.Second, "the load's CronJob", func() (bool, error) {
			cj, err := get(t, c, ns, "nightly-load", &batchv1.CronJob{})
			return err == nil && cj.Spec.Schedule == "0 3 * * *", nil
		})
		bad := &v1alpha1.DataLoad{ObjectMeta: metav1.ObjectMeta{Name: "orphan", Namespace: ns}, Spec: v1alpha1.DataLoadSpec{Dataset: "nope"}}
		mustCreate(t, c, bad)
		c.WaitFor(t, 30*time.Second, "a DataLoad of a missing dataset pending with its reason", func() (bool, error) {
			dl, err := get(t, c, ns, "orphan", &v1alpha1.DataLoad{})
			cond := meta.FindStatusCondition(dl.Status.Conditions, v1alpha1.ConditionReady)
			return err == nil && dl.Status.Phase == v1alpha1.LoadPending && cond != nil && cond.Reason == "DatasetNotFound", err
		})
	})
}

// workerLease is the Lease a live worker holds.
func workerLease(ns, runtime, id string, f wire.Figures) *coordinationv1.Lease {
	m, _ := json.Marshal(map[string]any{"id": id, "addr": "127.0.0.1:7420", "weight": 1})
	fb, _ := json.Marshal(f)
	now := metav1.NewMicroTime(time.Now())
	secs := int32(3600)
	return &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Name: membership.LeaseName(runtime, id), Namespace: ns,
			Labels:      map[string]string{membership.LabelCluster: runtime},
			Annotations: map[string]string{membership.AnnotationMember: string(m), membership.AnnotationFigures: string(fb)}},
		Spec: coordinationv1.LeaseSpec{HolderIdentity: &id, RenewTime: &now, AcquireTime: &now, LeaseDurationSeconds: &secs},
	}
}

// Two operators: one leads; when it stops, the other takes over and goes on
// reconciling.
func TestLeaderElectionHandsOver(t *testing.T) {
	c := startCluster(t, 0)
	createNamespace(t, c, "granary-system")
	o := Options{LeaderElect: true, LeaderElectionNamespace: "granary-system", SkipNameValidation: true, LeaseDuration: 4 * time.Second,
		RenewDeadline: 3 * time.Second, RetryPeriod: 500 * time.Millisecond}
	stopFirst := runOperator(t, c, o)
	var first string
	c.WaitFor(t, 30*time.Second, "a leader", func() (bool, error) {
		l, err := get(t, c, "granary-system", "granary-operator", &coordinationv1.Lease{})
		if err != nil || l.Spec.HolderIdentity == nil || *l.Spec.HolderIdentity == "" {
			return false, err
		}
		first = *l.Spec.HolderIdentity
		return true, nil
	})
	runOperator(t, c, o)
	stopFirst()
	c.WaitFor(t, 30*time.Second, "a new leader", func() (bool, error) {
		l, err := get(t, c, "granary-system", "granary-operator", &coordinationv1.Lease{})
		return err == nil && l.Spec.HolderIdentity != nil && *l.Spec.HolderIdentity != "" && *l.Spec.HolderIdentity != first, err
	})
	createNamespace(t, c, "after")
	mustCreate(t, c, s3Secret("after"), nsDataset("after"))
	c.WaitFor(t, 30*time.Second, "the new leader reconciling", func() (bool, error) {
		ds, err := get(t, c, "after", "imagenet", &v1alpha1.Dataset{})
		return err == nil && ds.Status.Phase == v1alpha1.DatasetPending, err
	})
}
