package operator

import (
	"context"
	"encoding/json"
	"slices"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/granary-cache/granary/api/v1alpha1"
	"github.com/granary-cache/granary/internal/membership"
	"github.com/granary-cache/granary/internal/wire"
)

// hostLease is a worker's Lease on a node, renewed at renewed, holding
// cached bytes of datasets.
func hostLease(ns, rt, id, node string, renewed time.Time, cached map[string]int64) *coordinationv1.Lease {
	m, _ := json.Marshal(map[string]any{"id": id, "addr": "127.0.0.1:7420", "host": node})
	f := wire.Figures{Capacity: 1 << 30, Datasets: map[string]wire.DatasetFigures{}}
	for name, b := range cached {
		f.Datasets[name] = wire.DatasetFigures{CachedBytes: b}
	}
	fb, _ := json.Marshal(f)
	t := metav1.NewMicroTime(renewed)
	secs := int32(3600)
	return &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Name: membership.LeaseName(rt, id), Namespace: ns,
			Labels:      map[string]string{membership.LabelCluster: rt},
			Annotations: map[string]string{membership.AnnotationMember: string(m), membership.AnnotationFigures: string(fb)}},
		Spec: coordinationv1.LeaseSpec{HolderIdentity: &id, RenewTime: &t, AcquireTime: &t, LeaseDurationSeconds: &secs},
	}
}

func TestLeaseNodes(t *testing.T) {
	now := time.Now()
	leases := []coordinationv1.Lease{
		*hostLease("ml", "rt", "w1", "node-a", now, map[string]int64{"img": 100, "txt": 5}),
		*hostLease("ml", "rt", "w2", "node-b", now, map[string]int64{"img": 300}),
		*hostLease("ml", "rt", "w3", "node-b", now, map[string]int64{"img": 50}),                    // a second worker on node-b
		*hostLease("ml", "rt", "w4", "node-c", now.Add(-2*time.Hour), map[string]int64{"img": 900}), // not live
		*hostLease("ml", "rt", "w5", "node-d", now, nil),
	}
	leaving := hostLease("ml", "rt", "w6", "node-e", now, map[string]int64{"img": 1000})
	leaving.Annotations[membership.AnnotationLeaving] = "true"
	leases = append(leases, *leaving)
	live, held := leaseNodes(leases, now)
	if want := []string{"node-a", "node-b", "node-d"}; !slices.Equal(live, want) {
		t.Errorf("live %v, want %v", live, want)
	}
	if h := held["img"]; len(h) != 2 || h["node-a"] != 100 || h["node-b"] != 350 {
		t.Errorf("held img %v", h)
	}
	if h := held["txt"]; len(h) != 1 || h["node-a"] != 5 {
		t.Errorf("held txt %v", h)
	}
}

func TestTopNodesAndWeights(t *testing.T) {
	top := topNodes(map[string]int64{"a": 10, "b": 1000, "c": 500, "d": 0, "e": 500, "f": 1}, 4)
	want := []nodeBytes{{"b", 1000}, {"c", 500}, {"e", 500}, {"a", 10}}
	if !slices.Equal(top, want) {
		t.Fatalf("top %v, want %v", top, want)
	}
	terms := preferredTerms(append(top, nodeBytes{"f", 1}))
	var weights []int32
	for _, tm := range terms {
		weights = append(weights, tm.Weight)
		if f := tm.Preference.MatchFields; len(f) != 1 || f[0].Key != "metadata.name" || len(f[0].Values) != 1 {
			t.Errorf("term %+v", tm.Preference)
		}
	}
	if want := []int32{100, 50, 50, 1, 1}; !slices.Equal(weights, want) {
		t.Errorf("weights %v, want %v", weights, want)
	}
	if terms[0].Preference.MatchFields[0].Values[0] != "b" {
		t.Errorf("first term %+v", terms[0])
	}
	if preferredTerms(nil) != nil {
		t.Error("terms without nodes")
	}
}

func TestMergeAffinity(t *testing.T) {
	p := placement{Preferred: preferredTerms([]nodeBytes{{"n1", 200}, {"n2", 100}}), Required: []string{"n1", "n2", "n3"}}

	// An empty pod gets both.
	var spec corev1.PodSpec
	if !mergeAffinity(&spec, p) {
		t.Fatal("no change")
	}
	na := spec.Affinity.NodeAffinity
	if len(na.PreferredDuringSchedulingIgnoredDuringExecution) != 2 || len(na.RequiredDuringSchedulingIgnoredDuringExecution.NodeSelectorTerms) != 1 {
		t.Fatalf("affinity %+v", na)
	}
	// Again: nothing more.
	if mergeAffinity(&spec, p) {
		t.Errorf("a second merge changed the pod: %+v", spec.Affinity.NodeAffinity)
	}

	// The user's terms stay; the required nodes go into each of them.
	user := corev1.PodSpec{Affinity: &corev1.Affinity{
		PodAntiAffinity: &corev1.PodAntiAffinity{},
		NodeAffinity: &corev1.NodeAffinity{
			RequiredDuringSchedulingIgnoredDuringExecution: &corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{
				{MatchExpressions: []corev1.NodeSelectorRequirement{{Key: "gpu", Operator: corev1.NodeSelectorOpExists}}},
				{MatchExpressions: []corev1.NodeSelectorRequirement{{Key: "tpu", Operator: corev1.NodeSelectorOpExists}}},
			}},
			PreferredDuringSchedulingIgnoredDuringExecution: []corev1.PreferredSchedulingTerm{
				{Weight: 7, Preference: corev1.NodeSelectorTerm{MatchExpressions: []corev1.NodeSelectorRequirement{{Key: "zone", Operator: corev1.NodeSelectorOpIn, Values: []string{"a"}}}}},
			},
		}}}
	if !mergeAffinity(&user, p) {
		t.Fatal("no change")
	}
	na = user.Affinity.NodeAffinity
	if user.Affinity.PodAntiAffinity == nil {
		t.Error("pod anti-affinity dropped")
	}
	pref := na.PreferredDuringSchedulingIgnoredDuringExecution
	if len(pref) != 3 || pref[0].Weight != 7 || pref[1].Weight != 100 || pref[2].Weight != 50 {
		t.Errorf("preferred %+v", pref)
	}
	for i, term := range na.RequiredDuringSchedulingIgnoredDuringExecution.NodeSelectorTerms {
		if len(term.MatchExpressions) != 2 || term.MatchExpressions[1].Key != corev1.LabelHostname ||
			!slices.Equal(term.MatchExpressions[1].Values, []string{"n1", "n2", "n3"}) {
			t.Errorf("required term %d: %+v", i, term)
		}
	}
	if mergeAffinity(&user, p) {
		t.Error("a second merge changed the pod")
	}

	// Preferred alone leaves required alone.
	var soft corev1.PodSpec
	mergeAffinity(&soft, placement{Preferred: p.Preferred})
	if soft.Affinity.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution != nil {
		t.Error("a required term without asking")
	}
	var none corev1.PodSpec
	if mergeAffinity(&none, placement{}) || none.Affinity != nil {
		t.Error("an empty placement changed the pod")
	}
}

func TestIntersect(t *testing.T) {
	if got := intersect([]string{"a", "b", "c"}, []string{"b", "c", "d"}); !slices.Equal(got, []string{"b", "c"}) {
		t.Errorf("intersect %v", got)
	}
	if got := intersect([]string{"a"}, nil); got == nil || len(got) != 0 {
		t.Errorf("intersect %v", got)
	}
}

// The handler with a fake client: a pod mounting a dataset's claim; the
// annotation and the Dataset's spec; a pod with no such claim.
func TestPodPlacerHandle(t *testing.T) {
	now := time.Now()
	s := Scheme()
	ds := &v1alpha1.Dataset{ObjectMeta: metav1.ObjectMeta{Name: "img", Namespace: "ml"}, Spec: v1alpha1.DatasetSpec{UFS: "s3://b/img"},
		Status: v1alpha1.DatasetStatus{Runtime: "rt"}}
	strict := &v1alpha1.Dataset{ObjectMeta: metav1.ObjectMeta{Name: "strict", Namespace: "ml"},
		Spec: v1alpha1.DatasetSpec{UFS: "s3://b/s", CacheAffinity: v1alpha1.CacheAffinityRequired}, Status: v1alpha1.DatasetStatus{Runtime: "rt"}}
	pvc := &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Name: "img-claim", Namespace: "ml", Labels: map[string]string{v1alpha1.LabelDataset: "img"}}}
	c := fake.NewClientBuilder().WithScheme(s).WithObjects(ds, strict, pvc,
		hostLease("ml", "rt", "w1", "n1", now, map[string]int64{"img": 10, "strict": 1}),
		hostLease("ml", "rt", "w2", "n2", now, map[string]int64{"img": 40}),
		hostLease("ml", "rt", "w3", "n3", now, nil),
	).Build()
	h := &PodPlacer{Client: c, Decoder: admission.NewDecoder(s)}

	admit := func(pod *corev1.Pod) *corev1.Pod {
		t.Helper()
		raw, _ := json.Marshal(pod)
		resp := h.Handle(context.Background(), admission.Request{AdmissionRequest: admissionv1.AdmissionRequest{
			Kind: metav1.GroupVersionKind{Version: "v1", Kind: "Pod"}, Namespace: "ml", Operation: admissionv1.Create,
			Object: runtime.RawExtension{Raw: raw}}})
		if !resp.Allowed {
			t.Fatalf("denied: %+v", resp.Result)
		}
		out := pod.DeepCopy()
		changed, _ := h.mutate(context.Background(), "ml", out)
		if changed != (len(resp.Patches) > 0) {
			t.Errorf("changed %v, but patches %v", changed, resp.Patches)
		}
		return out
	}
	podWith := func(claim string, ann map[string]string) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "ml", Annotations: ann}, Spec: corev1.PodSpec{
			Containers: []corev1.Container{{Name: "c", Image: "x"}},
			Volumes: []corev1.Volume{{Name: "d", VolumeSource: corev1.VolumeSource{
				PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: claim}}}}}}
	}

	got := admit(podWith("img-claim", nil))
	na := got.Spec.Affinity.NodeAffinity
	if pref := na.PreferredDuringSchedulingIgnoredDuringExecution; len(pref) != 2 ||
		pref[0].Preference.MatchFields[0].Values[0] != "n2" || pref[0].Weight != 100 || pref[1].Weight != 25 {
		t.Errorf("preferred %+v", pref)
	}
	if na.RequiredDuringSchedulingIgnoredDuringExecution != nil {
		t.Error("required without asking")
	}
	// Admitted again: nothing changes.
	raw, _ := json.Marshal(got)
	resp := h.Handle(context.Background(), admission.Request{AdmissionRequest: admissionv1.AdmissionRequest{
		Kind: metav1.GroupVersionKind{Version: "v1", Kind: "Pod"}, Namespace: "ml", Object: runtime.RawExtension{Raw: raw}}})
	if !resp.Allowed || len(resp.Patches) != 0 {
		t.Errorf("second admission: %+v", resp)
	}

	got = admit(podWith("img-claim", map[string]string{AnnotationCacheAffinity: "required"}))
	if req := got.Spec.Affinity.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution; req == nil ||
		!slices.Equal(req.NodeSelectorTerms[0].MatchExpressions[0].Values, []string{"n1", "n2", "n3"}) {
		t.Errorf("required %+v", req)
	}
	// The claim named after the Dataset, which asks for required.
	got = admit(podWith("strict", nil))
	if got.Spec.Affinity == nil || got.Spec.Affinity.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution == nil {
		t.Errorf("the Dataset's Required not applied: %+v", got.Spec.Affinity)
	}
	if got := admit(podWith("img-claim", map[string]string{AnnotationCacheAffinity: "none"})); got.Spec.Affinity != nil {
		t.Errorf("none: %+v", got.Spec.Affinity)
	}
	if got := admit(podWith("other", nil)); got.Spec.Affinity != nil {
		t.Errorf("a pod without a dataset's claim: %+v", got.Spec.Affinity)
	}
}
