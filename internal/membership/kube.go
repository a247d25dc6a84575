package membership

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
)

// Membership on the Kubernetes API, without etcd. Each worker holds a
// coordination.k8s.io Lease in the cluster's namespace, labelled with the
// cluster's name:
//
//	metadata.name                  CLUSTER-ID (lower case; see LeaseName)
//	labels[granary.io/runtime]     the cluster (a CacheRuntime's name)
//	annotations[granary.io/member] the member, JSON: id, addr, socket, host,
//	                               zone, weight
//	annotations[granary.io/figures] the worker's figures, JSON (see
//	                               wire.Figures): written with each renewal,
//	                               so that the operator fills Dataset status
//	                               from the API server alone
//	annotations[granary.io/leaving] set by `granary member remove` on a live
//	                               worker: it owns no keys until it restarts
//	spec.holderIdentity            the worker's ID while it runs; cleared
//	                               when it stops cleanly
//	spec.renewTime                 renewed every LeaseDuration/3
//
// The Lease is the ring entry and the liveness at once: a Lease that exists
// is a ring member; it is live while its holder renews it. A worker that
// stops, or is cut off, keeps its Lease (and so its place in the ring: a
// restart moves no keys) until its Lease has been expired for longer than
// the ring grace; then the live worker with the smallest ID deletes it, with
// a precondition on its resource version, so a Lease renewed meanwhile is
// never deleted.
//
// Liveness is judged by the local clock: a Lease is live until
// LeaseDuration after this process saw its renewTime change (or, for a
// Lease first seen, after its renewTime), so clocks that disagree between
// machines do not make members flap.
//
// Cost: each worker writes its Lease every LeaseDuration/3 (6 writes a
// minute at the default 30 s), whatever the size of the cluster, and makes
// no other request while nothing changes; each watcher receives those
// writes as events.

// Kubernetes defaults.
const (
	DefaultKubeLeaseDuration = 30 * time.Second
	// Lease annotations and labels.
	AnnotationMember  = "granary.io/member"
	AnnotationFigures = "granary.io/figures"
	AnnotationLeaving = "granary.io/leaving"
	LabelCluster      = "granary.io/runtime"
)

// KubeOptions configure a Kubernetes source.
type KubeOptions struct {
	// Config reaches the API server (see KubeConfig).
	Config *rest.Config
	// Namespace holds the Leases.
	Namespace string
	// Cluster names the cluster: its Leases carry it as a label.
	Cluster       string
	LeaseDuration time.Duration // default DefaultKubeLeaseDuration
	RingGrace     time.Duration // default DefaultRingGrace
	// DialTimeout bounds opening (the first list of Leases, and a worker's
	// registration).
	DialTimeout time.Duration
	// Self, for a worker: it holds a Lease until Close.
	Self *Member
	// Figures, for a worker, returns what to publish with each renewal
	// (JSON); nil publishes nothing.
	Figures func() []byte
	Log     *slog.Logger
}

// Kube is a Source backed by the Kubernetes API; make one with OpenKube.
type Kube struct {
	o        KubeOptions
	cs       kubernetes.Interface
	log      *slog.Logger
	factory  informers.SharedInformerFactory
	informer cache.SharedIndexInformer

	broadcast

	mu       sync.Mutex
	seen     map[string]observed // by Lease name
	timer    *time.Timer
	watchErr error // the informer's last watch error, nil once it lists again
	renewErr error // the worker's last renewal error
	lease    *coordinationv1.Lease

	requests atomic.Int64 // made to the API server

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

var _ Source = (*Kube)(nil)

// countingTransport counts the requests made through it.
type countingTransport struct {
	next http.RoundTripper
	n    *atomic.Int64
}

func (t countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	t.n.Add(1)
	return t.next.RoundTrip(r)
}

// Requests is how many requests this source made to the API server (a
// watch counts once): the cost of membership, which stays flat per worker.
func (k *Kube) Requests() int64 { return k.requests.Load() }

// observed is when this process saw a Lease's renewTime change.
type observed struct {
	renew time.Time // the Lease's renewTime
	at    time.Time // local time it was first seen
}

// kubeMember is the JSON of the member annotation.
type kubeMember struct {
	ID     string  `json:"id"`
	Addr   string  `json:"addr"`
	Socket string  `json:"socket,omitempty"`
	Host   string  `json:"host,omitempty"`
	Zone   string  `json:"zone,omitempty"`
	Weight float64 `json:"weight"`
}

// KubeConfig finds the API server: the kubeconfig file at path if given,
// else $KUBECONFIG, else the pod's service account (in-cluster).
func KubeConfig(path string) (*rest.Config, error) {
	if path == "" {
		path = os.Getenv("KUBECONFIG")
	}
	if path != "" {
		c, err := clientcmd.BuildConfigFromFlags("", path)
		if err != nil {
			return nil, fmt.Errorf("kubeconfig %s: %w", path, err)
		}
		return c, nil
	}
	c, err := rest.InClusterConfig()
	if err != nil {
		return nil, fmt.Errorf("no kubeconfig (membership.kubeconfig, $KUBECONFIG) and not in a pod: %w", err)
	}
	return c, nil
}

// PodNamespace is the namespace of the pod this process runs in, or "" out
// of a pod.
func PodNamespace() string {
	b, err := os.ReadFile("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// LeaseName is the name of a member's Lease: CLUSTER-ID, in lower case, with
// what a name may not hold replaced by '-' (IDs differing only in case
// share a name: give workers IDs that differ otherwise).
func LeaseName(cluster, id string) string {
	s := strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '-', r == '.':
			return r
		case r >= 'A' && r <= 'Z':
			return r + ('a' - 'A')
		}
		return '-'
	}, cluster+"-"+id)
	if len(s) > 253 {
		s = s[:253]
	}
	return strings.Trim(s, "-.")
}

// OpenKube lists the cluster's Leases and, with Self, takes its own. It
// fails, naming the API server, when that does not answer within the dial
// timeout.
func OpenKube(ctx context.Context, o KubeOptions) (*Kube, error) {
	if o.Config == nil {
		return nil, errors.New("membership: kubernetes: no API server configuration")
	}
	if o.Namespace == "" {
		return nil, errors.New("membership: kubernetes: no namespace (membership.namespace)")
	}
	if o.Cluster == "" {
		return nil, errors.New("membership: kubernetes: no cluster name (membership.cluster)")
	}
	if err := backendDefaults(&o.LeaseDuration, DefaultKubeLeaseDuration, &o.RingGrace, &o.DialTimeout, &o.Log, o.Self); err != nil {
		return nil, err
	}
	k := &Kube{o: o, log: o.Log.With("membership", "kubernetes"), seen: map[string]observed{}}
	k.init("kubernetes", k.log)
	rc := rest.CopyConfig(o.Config)
	rc.Wrap(func(rt http.RoundTripper) http.RoundTripper { return countingTransport{rt, &k.requests} })
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("membership: kubernetes %s: %w", o.Config.Host, err)
	}
	k.cs = cs
	k.ctx, k.cancel = context.WithCancel(context.Background())
	k.publish(NewView(nil))
	k.factory = informers.NewSharedInformerFactoryWithOptions(cs, 0, informers.WithNamespace(o.Namespace),
		informers.WithTweakListOptions(func(lo *metav1.ListOptions) {
			lo.LabelSelector = labels.Set{LabelCluster: o.Cluster}.String()
		}))
	k.informer = k.factory.Coordination().V1().Leases().Informer()
	k.informer.SetWatchErrorHandler(func(_ *cache.Reflector, err error) {
		k.mu.Lock()
		k.watchErr = err
		k.mu.Unlock()
		k.updateHealth()
	})
	k.informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { k.rebuild() },
		UpdateFunc: func(any, any) { k.rebuild() },
		DeleteFunc: func(any) { k.rebuild() },
	})
	if o.Self != nil {
		octx, cancel := context.WithTimeout(ctx, o.DialTimeout)
		err := k.register(octx)
		cancel()
		if err != nil {
			k.cancel()
			return nil, k.unreachable(err)
		}
	}
	k.factory.Start(k.ctx.Done())
	sctx, cancel := context.WithTimeout(ctx, o.DialTimeout)
	defer cancel()
	if !cache.WaitForCacheSync(sctx.Done(), k.informer.HasSynced) {
		k.Close()
		k.mu.Lock()
		err := k.watchErr
		k.mu.Unlock()
		if err == nil {
			err = sctx.Err()
		}
		return nil, k.unreachable(err)
	}
	k.mu.Lock()
	k.watchErr = nil
	k.mu.Unlock()
	k.rebuild()
	k.updateHealth()
	if o.Self != nil {
		k.wg.Go(k.renewLoop)
	}
	return k, nil
}

func (k *Kube) unreachable(err error) error {
	return fmt.Errorf("membership: kubernetes API %s (namespace %s) did not answer within %s: %w", k.o.Config.Host, k.o.Namespace, k.o.DialTimeout, err)
}

// updateHealth records the link's health: the informer's watch error,
// else the worker's last renewal error.
func (k *Kube) updateHealth() {
	k.mu.Lock()
	err := k.watchErr
	if err == nil {
		err = k.renewErr
	}
	k.mu.Unlock()
	k.setHealth(err)
}

// rebuild makes a new view from the informer's Leases and arms a timer for
// the next Lease to expire.
func (k *Kube) rebuild() {
	if k.isClosed() {
		return
	}
	objs := k.informer.GetStore().List()
	leases := make([]*coordinationv1.Lease, 0, len(objs))
	for _, o := range objs {
		if l, ok := o.(*coordinationv1.Lease); ok {
			leases = append(leases, l)
		}
	}
	now := time.Now()
	k.mu.Lock()
	defer k.mu.Unlock()
	k.seen = observe(k.seen, leases, now)
	members, next, bad := leaseMembers(leases, k.seen, now)
	for name, err := range bad {
		k.log.Warn("ignoring a Lease that does not describe a member", "lease", name, "err", err)
	}
	k.publish(NewView(members))
	if k.timer != nil {
		k.timer.Stop()
		k.timer = nil
	}
	if !next.IsZero() {
		k.timer = time.AfterFunc(max(next.Sub(now), 10*time.Millisecond)+10*time.Millisecond, k.rebuild)
	}
}

// observe updates when each Lease's renewal was seen: a renewTime that
// changed is seen now; a Lease seen for the first time is taken at its
// renewTime, but never later than now.
func observe(seen map[string]observed, leases []*coordinationv1.Lease, now time.Time) map[string]observed {
	out := make(map[string]observed, len(leases))
	for _, l := range leases {
		var renew time.Time
		if l.Spec.RenewTime != nil {
			renew = l.Spec.RenewTime.Time
		}
		prev, ok := seen[l.Name]
		switch {
		case ok && prev.renew.Equal(renew):
			out[l.Name] = prev
		case ok:
			out[l.Name] = observed{renew: renew, at: now}
		default:
			at := renew
			if at.After(now) {
				at = now
			}
			out[l.Name] = observed{renew: renew, at: at}
		}
	}
	return out
}

// leaseMembers turns Leases into members: live while held and renewed
// within their duration (by the local observation), Leaving when marked so,
// NotLive otherwise. It returns when the next live Lease expires, and the
// Leases it could not read.
func leaseMembers(leases []*coordinationv1.Lease, seen map[string]observed, now time.Time) ([]Member, time.Time, map[string]error) {
	var (
		members []Member
		next    time.Time
		bad     map[string]error
	)
	for _, l := range leases {
		m, err := leaseMember(l)
		if err != nil {
			if bad == nil {
				bad = map[string]error{}
			}
			bad[l.Name] = err
			continue
		}
		dur := DefaultKubeLeaseDuration
		if l.Spec.LeaseDurationSeconds != nil && *l.Spec.LeaseDurationSeconds > 0 {
			dur = time.Duration(*l.Spec.LeaseDurationSeconds) * time.Second
		}
		held := l.Spec.HolderIdentity != nil && *l.Spec.HolderIdentity != ""
		expires := seen[l.Name].at.Add(dur)
		live := held && now.Before(expires)
		switch {
		case live && l.Annotations[AnnotationLeaving] != "":
			m.State = Leaving
		case live:
			m.State = Live
		case l.Annotations[AnnotationLeaving] != "":
			continue // taken out and gone: no longer a member at all
		default:
			m.State = NotLive
		}
		if l.Spec.AcquireTime != nil {
			m.Since = l.Spec.AcquireTime.Time
		}
		if live {
			if next.IsZero() || expires.Before(next) {
				next = expires
			}
		} else if held {
			m.Since = expires
		} else if l.Spec.RenewTime != nil {
			m.Since = l.Spec.RenewTime.Time
		}
		members = append(members, m)
	}
	return members, next, bad
}

// leaseMember reads the member annotation of a Lease.
func leaseMember(l *coordinationv1.Lease) (Member, error) {
	raw, ok := l.Annotations[AnnotationMember]
	if !ok {
		return Member{}, fmt.Errorf("no %s annotation", AnnotationMember)
	}
	var km kubeMember
	if err := json.Unmarshal([]byte(raw), &km); err != nil {
		return Member{}, fmt.Errorf("annotation %s: %w", AnnotationMember, err)
	}
	if err := CheckID(km.ID); err != nil {
		return Member{}, err
	}
	if err := CheckAddr(km.Addr); err != nil {
		return Member{}, err
	}
	return Member{ID: km.ID, Addr: km.Addr, Socket: km.Socket, Host: km.Host, Zone: km.Zone, Weight: km.Weight}, nil
}

// expiredSince is how long a Lease has been expired (by the local
// observation), or 0 when it is live.
func expiredSince(l *coordinationv1.Lease, o observed, now time.Time) time.Duration {
	dur := DefaultKubeLeaseDuration
	if l.Spec.LeaseDurationSeconds != nil && *l.Spec.LeaseDurationSeconds > 0 {
		dur = time.Duration(*l.Spec.LeaseDurationSeconds) * time.Second
	}
	held := l.Spec.HolderIdentity != nil && *l.Spec.HolderIdentity != ""
	end := o.at.Add(dur)
	if !held && l.Spec.RenewTime != nil {
		end = l.Spec.RenewTime.Time // released: expired from its last renewal
	}
	if now.Before(end) {
		return 0
	}
	return now.Sub(end)
}

// Leases returns the cluster's Leases as the informer holds them (the
// operator reads figures from them).
func (k *Kube) Leases() []*coordinationv1.Lease {
	objs := k.informer.GetStore().List()
	out := make([]*coordinationv1.Lease, 0, len(objs))
	for _, o := range objs {
		if l, ok := o.(*coordinationv1.Lease); ok {
			out = append(out, l)
		}
	}
	return out
}

// Remove takes a member out of the ring at once: a Lease that is not held
// is deleted; a running worker's is marked leaving, and the worker owns no
// keys until it restarts.
func (k *Kube) Remove(ctx context.Context, id string) error {
	leases := k.cs.CoordinationV1().Leases(k.o.Namespace)
	name := LeaseName(k.o.Cluster, id)
	for range 5 {
		l, err := leases.Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			var ids []string
			for _, m := range k.Current().Members() {
				ids = append(ids, m.ID)
			}
			return fmt.Errorf("membership: %q is not in the ring (members: %s)", id, strings.Join(ids, ", "))
		}
		if err != nil {
			return fmt.Errorf("membership: remove %s: %w", id, err)
		}
		if m, ok := k.Current().Member(id); !ok || m.State != Live {
			err = leases.Delete(ctx, name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{ResourceVersion: &l.ResourceVersion}})
		} else {
			if l.Annotations == nil {
				l.Annotations = map[string]string{}
			}
			l.Annotations[AnnotationLeaving] = time.Now().UTC().Format(time.RFC3339)
			_, err = leases.Update(ctx, l, metav1.UpdateOptions{})
		}
		if apierrors.IsConflict(err) {
			continue
		}
		if err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("membership: remove %s: %w", id, err)
		}
		return nil
	}
	return fmt.Errorf("membership: remove %s: its Lease kept changing", id)
}

// Close stops watching and, for a worker, releases its Lease (clears the
// holder) so that readers go elsewhere at once; the Lease itself stays, and
// with it the worker's place in the ring.
func (k *Kube) Close() error {
	if !k.close() {
		return nil
	}
	k.cancel()
	k.wg.Wait()
	k.factory.Shutdown()
	k.mu.Lock()
	if k.timer != nil {
		k.timer.Stop()
	}
	k.mu.Unlock()
	if k.o.Self != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if err := k.release(ctx); err != nil {
			k.log.Warn("releasing the Lease failed: others see this worker stop when it expires", "err", err)
		}
	}
	return nil
}
