package operator

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/granary-cache/granary/api/v1alpha1"
	"github.com/granary-cache/granary/internal/membership"
)

// The pod webhook places pods near their cache: a pod that mounts a
// Dataset's claim is given a preferred node affinity toward the nodes whose
// live workers hold most of the dataset's cached bytes and, when the pod or
// the Dataset asks, a required one to the nodes that run a live worker of
// its runtime. It reads the Leases from the operator's cache and never
// dials a worker; when it fails, or is down, pods are admitted as they are
// (the webhook's failurePolicy is Ignore).

const (
	// AnnotationCacheAffinity on a pod overrides its Datasets'
	// spec.cacheAffinity: required, preferred or none.
	AnnotationCacheAffinity = "granary.io/cache-affinity"
	// AnnotationCacheAffinityApplied marks a pod the webhook placed (its
	// value names the datasets); a pod that has it is left alone, so a
	// second admission changes nothing.
	AnnotationCacheAffinityApplied = "granary.io/cache-affinity-applied"
	// WebhookPath is where the pod webhook is served.
	WebhookPath = "/mutate-v1-pod"
	// hostnameLabel is the node label the required term matches.
	hostnameLabel = corev1.LabelHostname
	// maxPreferredNodes bounds the preferred terms a pod gets.
	maxPreferredNodes = 10
)

// nodeBytes is the cached bytes of a dataset held by a node's live workers.
type nodeBytes struct {
	Node  string
	Bytes int64
}

// leaseNodes reads a runtime's Leases: the nodes that run a live worker
// (sorted), and for each dataset the bytes its live workers hold per node.
func leaseNodes(leases []coordinationv1.Lease, now time.Time) (live []string, held map[string]map[string]int64) {
	held = map[string]map[string]int64{}
	seen := map[string]bool{}
	for i := range leases {
		l := &leases[i]
		var m struct {
			ID   string `json:"id"`
			Host string `json:"host"`
		}
		if json.Unmarshal([]byte(l.Annotations[membership.AnnotationMember]), &m) != nil || m.ID == "" || m.Host == "" {
			continue
		}
		if !leaseLive(l, now) || l.Annotations[membership.AnnotationLeaving] != "" {
			continue
		}
		if !seen[m.Host] {
			seen[m.Host] = true
			live = append(live, m.Host)
		}
		ws := readLeases([]coordinationv1.Lease{*l}, now)
		if len(ws) == 0 {
			continue
		}
		for name, d := range ws[0].Figures.Datasets {
			if d.CachedBytes <= 0 {
				continue
			}
			if held[name] == nil {
				held[name] = map[string]int64{}
			}
			held[name][m.Host] += d.CachedBytes
		}
	}
	slices.Sort(live)
	return live, held
}

// topNodes sorts the nodes holding bytes, most first (then by name), and
// keeps at most n.
func topNodes(bytes map[string]int64, n int) []nodeBytes {
	out := make([]nodeBytes, 0, len(bytes))
	for node, b := range bytes {
		if b > 0 {
			out = append(out, nodeBytes{node, b})
		}
	}
	slices.SortFunc(out, func(a, b nodeBytes) int {
		if a.Bytes != b.Bytes {
			if a.Bytes > b.Bytes {
				return -1
			}
			return 1
		}
		return strings.Compare(a.Node, b.Node)
	})
	if len(out) > n {
		out = out[:n]
	}
	return out
}

// preferredTerms weighs each node by its share of the most any node holds:
// the top node gets 100, the others in proportion, at least 1.
func preferredTerms(nodes []nodeBytes) []corev1.PreferredSchedulingTerm {
	if len(nodes) == 0 {
		return nil
	}
	var most int64
	for _, n := range nodes {
		most = max(most, n.Bytes)
	}
	out := make([]corev1.PreferredSchedulingTerm, 0, len(nodes))
	for _, n := range nodes {
		w := int32((n.Bytes*100 + most - 1) / most)
		w = min(max(w, 1), 100)
		out = append(out, corev1.PreferredSchedulingTerm{Weight: w, Preference: nodeNameTerm(n.Node)})
	}
	return out
}

// nodeNameTerm matches one node by name (matchFields takes one value).
func nodeNameTerm(node string) corev1.NodeSelectorTerm {
	return corev1.NodeSelectorTerm{MatchFields: []corev1.NodeSelectorRequirement{
		{Key: "metadata.name", Operator: corev1.NodeSelectorOpIn, Values: []string{node}}}}
}

// requiredExpr confines a pod to nodes (by their hostname label, which the
// kubelet sets to the node's name).
func requiredExpr(nodes []string) corev1.NodeSelectorRequirement {
	return corev1.NodeSelectorRequirement{Key: hostnameLabel, Operator: corev1.NodeSelectorOpIn, Values: slices.Clone(nodes)}
}

// placement is what the webhook adds to a pod.
type placement struct {
	Preferred []corev1.PreferredSchedulingTerm
	// Required, when not nil, is the nodes a pod must run on.
	Required []string
}

// mergeAffinity adds a placement to a pod's affinity without dropping any
// of the user's: preferred terms are appended (unless an equal one is
// there), and the required nodes are ANDed into each existing required
// term (or become the one term). It reports whether anything changed.
func mergeAffinity(spec *corev1.PodSpec, p placement) bool {
	if len(p.Preferred) == 0 && p.Required == nil {
		return false
	}
	if spec.Affinity == nil {
		spec.Affinity = &corev1.Affinity{}
	}
	if spec.Affinity.NodeAffinity == nil {
		spec.Affinity.NodeAffinity = &corev1.NodeAffinity{}
	}
	na := spec.Affinity.NodeAffinity
	changed := false
	for _, t := range p.Preferred {
		if !slices.ContainsFunc(na.PreferredDuringSchedulingIgnoredDuringExecution, func(e corev1.PreferredSchedulingTerm) bool { return equalPreferred(e, t) }) {
			na.PreferredDuringSchedulingIgnoredDuringExecution = append(na.PreferredDuringSchedulingIgnoredDuringExecution, t)
			changed = true
		}
	}
	if p.Required != nil {
		expr := requiredExpr(p.Required)
		req := na.RequiredDuringSchedulingIgnoredDuringExecution
		if req == nil || len(req.NodeSelectorTerms) == 0 {
			na.RequiredDuringSchedulingIgnoredDuringExecution = &corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{
				{MatchExpressions: []corev1.NodeSelectorRequirement{expr}}}}
			changed = true
		} else {
			for i := range req.NodeSelectorTerms {
				t := &req.NodeSelectorTerms[i]
				if !slices.ContainsFunc(t.MatchExpressions, func(e corev1.NodeSelectorRequirement) bool { return equalRequirement(e, expr) }) {
					t.MatchExpressions = append(t.MatchExpressions, expr)
					changed = true
				}
			}
		}
	}
	return changed
}

func equalRequirement(a, b corev1.NodeSelectorRequirement) bool {
	return a.Key == b.Key && a.Operator == b.Operator && slices.Equal(a.Values, b.Values)
}

func equalPreferred(a, b corev1.PreferredSchedulingTerm) bool {
	eq := func(x, y []corev1.NodeSelectorRequirement) bool { return slices.EqualFunc(x, y, equalRequirement) }
	return a.Weight == b.Weight && eq(a.Preference.MatchExpressions, b.Preference.MatchExpressions) &&
		eq(a.Preference.MatchFields, b.Preference.MatchFields)
}

// intersect keeps the nodes of a that are in b (both sorted).
func intersect(a, b []string) []string {
	out := []string{}
	for _, n := range a {
		if _, ok := slices.BinarySearch(b, n); ok {
			out = append(out, n)
		}
	}
	return out
}

// affinityMode is the placement a pod gets for a dataset: the pod's
// annotation, else the Dataset's spec, else Preferred.
func affinityMode(pod *corev1.Pod, ds *v1alpha1.Dataset) (v1alpha1.CacheAffinity, error) {
	if a, ok := pod.Annotations[AnnotationCacheAffinity]; ok {
		switch strings.ToLower(strings.TrimSpace(a)) {
		case "required":
			return v1alpha1.CacheAffinityRequired, nil
		case "preferred", "":
			return v1alpha1.CacheAffinityPreferred, nil
		case "none":
			return v1alpha1.CacheAffinityNone, nil
		}
		return "", fmt.Errorf("annotation %s=%q: expected required, preferred or none", AnnotationCacheAffinity, a)
	}
	if ds.Spec.CacheAffinity == "" {
		return v1alpha1.CacheAffinityPreferred, nil
	}
	return ds.Spec.CacheAffinity, nil
}

// PodPlacer is the pod webhook's handler.
type PodPlacer struct {
	Client  client.Reader
	Decoder admission.Decoder
	// MaxNodes bounds the preferred terms (default 10).
	MaxNodes int
	now      func() time.Time
}

var _ admission.Handler = (*PodPlacer)(nil)

// Handle places a pod being created near the cache of the Datasets it
// mounts.
func (h *PodPlacer) Handle(ctx context.Context, req admission.Request) admission.Response {
	if req.Kind.Kind != "Pod" || req.SubResource != "" {
		return admission.Allowed("not a pod")
	}
	var pod corev1.Pod
	if err := h.Decoder.Decode(req, &pod); err != nil {
		return admission.Errored(http.StatusBadRequest, err)
	}
	ns := req.Namespace
	if ns == "" {
		ns = pod.Namespace
	}
	changed, warnings := h.mutate(ctx, ns, &pod)
	if !changed {
		return admission.Allowed("").WithWarnings(warnings...)
	}
	raw, err := json.Marshal(&pod)
	if err != nil {
		return admission.Errored(http.StatusInternalServerError, err)
	}
	return admission.PatchResponseFromRaw(req.Object.Raw, raw).WithWarnings(warnings...)
}

// mutate places a pod of namespace ns; it reports whether it changed it.
func (h *PodPlacer) mutate(ctx context.Context, ns string, pod *corev1.Pod) (changed bool, warnings []string) {
	if _, done := pod.Annotations[AnnotationCacheAffinityApplied]; done {
		return false, nil
	}
	p, names, warnings, err := h.place(ctx, ns, pod)
	if err != nil {
		// The pod goes as it is: placement is an optimization.
		return false, []string{"granary: cache affinity not applied: " + err.Error()}
	}
	if len(names) == 0 || !mergeAffinity(&pod.Spec, p) {
		return false, warnings
	}
	if pod.Annotations == nil {
		pod.Annotations = map[string]string{}
	}
	pod.Annotations[AnnotationCacheAffinityApplied] = strings.Join(names, ",")
	return true, warnings
}

// place computes a pod's placement from the Datasets it mounts; names are
// those datasets that contributed.
func (h *PodPlacer) place(ctx context.Context, ns string, pod *corev1.Pod) (p placement, names, warnings []string, err error) {
	now := time.Now()
	if h.now != nil {
		now = h.now()
	}
	bytes := map[string]int64{}
	var required []string
	hasRequired := false
	for _, ds := range h.datasetsOf(ctx, ns, pod) {
		mode, err := affinityMode(pod, ds)
		if err != nil {
			return placement{}, nil, nil, err
		}
		if mode == v1alpha1.CacheAffinityNone || ds.Status.Runtime == "" {
			continue
		}
		var leases coordinationv1.LeaseList
		if err := h.Client.List(ctx, &leases, client.InNamespace(ds.Namespace), client.MatchingLabels{membership.LabelCluster: ds.Status.Runtime}); err != nil {
			return placement{}, nil, nil, fmt.Errorf("list the workers' Leases: %w", err)
		}
		live, held := leaseNodes(leases.Items, now)
		for node, b := range held[ds.Name] {
			bytes[node] += b
		}
		names = append(names, ds.Name)
		if mode != v1alpha1.CacheAffinityRequired {
			continue
		}
		if !hasRequired {
			required, hasRequired = live, true
		} else {
			required = intersect(required, live)
		}
	}
	limit := h.MaxNodes
	if limit <= 0 {
		limit = maxPreferredNodes
	}
	p.Preferred = preferredTerms(topNodes(bytes, limit))
	if hasRequired {
		if len(required) == 0 {
			// An empty In is invalid, and the pod could run nowhere.
			warnings = append(warnings, "granary: no node runs a live worker of the dataset(s); required cache affinity not applied")
		} else {
			p.Required = required
		}
	}
	return p, names, warnings, nil
}

// datasetsOf finds the Datasets whose claims a pod mounts: a claim labelled
// granary.io/dataset, or one named after a Dataset of the namespace.
func (h *PodPlacer) datasetsOf(ctx context.Context, ns string, pod *corev1.Pod) []*v1alpha1.Dataset {
	var out []*v1alpha1.Dataset
	seen := map[string]bool{}
	for _, v := range pod.Spec.Volumes {
		if v.PersistentVolumeClaim == nil {
			continue
		}
		name := v.PersistentVolumeClaim.ClaimName
		var pvc corev1.PersistentVolumeClaim
		if err := h.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, &pvc); err == nil {
			if l, ok := pvc.Labels[v1alpha1.LabelDataset]; ok && l != "" {
				name = l
			}
		} else if !apierrors.IsNotFound(err) {
			continue
		}
		if seen[name] {
			continue
		}
		var ds v1alpha1.Dataset
		if err := h.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, &ds); err != nil {
			continue
		}
		seen[name] = true
		out = append(out, &ds)
	}
	return out
}
