package membership

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// A worker's side of Kubernetes membership: it takes its Lease, renews it
// with its figures, releases it when it stops, and does its share of ring
// upkeep.

// desired is the worker's Lease as it should be now: held, renewed, with
// the member and figures annotations; cur is the Lease as it is (nil when
// there is none). A restart (fresh) takes the Lease anew: acquireTime is
// set and a leaving mark is dropped, as the worker joins the ring again.
func (k *Kube) desired(cur *coordinationv1.Lease, now time.Time, fresh bool) *coordinationv1.Lease {
	self := *k.o.Self
	l := &coordinationv1.Lease{}
	if cur != nil {
		l = cur.DeepCopy()
	}
	l.Name = LeaseName(k.o.Cluster, self.ID)
	l.Namespace = k.o.Namespace
	if l.Labels == nil {
		l.Labels = map[string]string{}
	}
	l.Labels[LabelCluster] = k.o.Cluster
	if l.Annotations == nil {
		l.Annotations = map[string]string{}
	}
	member, _ := json.Marshal(kubeMember{ID: self.ID, Addr: self.Addr, Socket: self.Socket, Host: self.Host, Zone: self.Zone, Weight: self.Weight})
	l.Annotations[AnnotationMember] = string(member)
	if k.o.Figures != nil {
		if f := k.o.Figures(); len(f) > 0 {
			l.Annotations[AnnotationFigures] = string(f)
		}
	}
	id := self.ID
	secs := int32(max(k.o.LeaseDuration/time.Second, 1))
	t := metav1.NewMicroTime(now)
	l.Spec.HolderIdentity = &id
	l.Spec.LeaseDurationSeconds = &secs
	l.Spec.RenewTime = &t
	if fresh || l.Spec.AcquireTime == nil {
		l.Spec.AcquireTime = &t
		delete(l.Annotations, AnnotationLeaving)
	}
	return l
}

// register takes this worker's Lease: it creates it, or takes over the one
// a previous run left (keeping its place in the ring).
func (k *Kube) register(ctx context.Context) error {
	leases := k.cs.CoordinationV1().Leases(k.o.Namespace)
	name := LeaseName(k.o.Cluster, k.o.Self.ID)
	for range 5 {
		cur, err := leases.Get(ctx, name, metav1.GetOptions{})
		var got *coordinationv1.Lease
		switch {
		case apierrors.IsNotFound(err):
			got, err = leases.Create(ctx, k.desired(nil, time.Now(), true), metav1.CreateOptions{})
		case err != nil:
			return fmt.Errorf("get Lease %s/%s: %w", k.o.Namespace, name, err)
		default:
			if h := cur.Spec.HolderIdentity; h != nil && *h != "" && *h != k.o.Self.ID {
				return fmt.Errorf("the Lease %s/%s is held by %q, not %q", k.o.Namespace, name, *h, k.o.Self.ID)
			}
			got, err = leases.Update(ctx, k.desired(cur, time.Now(), true), metav1.UpdateOptions{})
		}
		if apierrors.IsConflict(err) || apierrors.IsAlreadyExists(err) {
			continue
		}
		if err != nil {
			return fmt.Errorf("take Lease %s/%s: %w", k.o.Namespace, name, err)
		}
		k.mu.Lock()
		k.lease = got
		k.mu.Unlock()
		k.log.Info("registered", "id", k.o.Self.ID, "addr", k.o.Self.Addr, "lease", name)
		return nil
	}
	return fmt.Errorf("take Lease %s/%s: it kept changing", k.o.Namespace, name)
}

// renew writes the Lease again with a new renewTime and fresh figures. A
// conflict (someone marked it leaving) reads it again and retries; a Lease
// that vanished (removed while this worker was cut off) is created again.
func (k *Kube) renew(ctx context.Context) error {
	leases := k.cs.CoordinationV1().Leases(k.o.Namespace)
	k.mu.Lock()
	cur := k.lease
	k.mu.Unlock()
	for range 3 {
		var (
			got *coordinationv1.Lease
			err error
		)
		if cur == nil {
			got, err = leases.Create(ctx, k.desired(nil, time.Now(), false), metav1.CreateOptions{})
		} else {
			got, err = leases.Update(ctx, k.desired(cur, time.Now(), false), metav1.UpdateOptions{})
		}
		switch {
		case err == nil:
			k.mu.Lock()
			k.lease = got
			k.mu.Unlock()
			return nil
		case apierrors.IsConflict(err), apierrors.IsAlreadyExists(err):
			cur, err = leases.Get(ctx, LeaseName(k.o.Cluster, k.o.Self.ID), metav1.GetOptions{})
			if apierrors.IsNotFound(err) {
				cur = nil
			} else if err != nil {
				return err
			}
		case apierrors.IsNotFound(err):
			cur = nil
		default:
			return err
		}
	}
	return fmt.Errorf("renew Lease: it kept changing")
}

// renewLoop renews the Lease every third of its duration, and does the
// ring upkeep, until Close.
func (k *Kube) renewLoop() {
	every := max(k.o.LeaseDuration/3, 100*time.Millisecond)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-k.ctx.Done():
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(k.ctx, every)
		err := k.renew(ctx)
		if err == nil {
			k.upkeep(ctx)
		}
		cancel()
		if k.ctx.Err() != nil {
			return
		}
		k.mu.Lock()
		k.renewErr = err
		k.mu.Unlock()
		k.updateHealth()
	}
}

// release clears the holder of this worker's Lease: readers see it stop at
// once, and it keeps its place in the ring.
func (k *Kube) release(ctx context.Context) error {
	leases := k.cs.CoordinationV1().Leases(k.o.Namespace)
	k.mu.Lock()
	cur := k.lease
	k.mu.Unlock()
	for range 3 {
		if cur == nil {
			return nil
		}
		l := cur.DeepCopy()
		l.Spec.HolderIdentity = nil
		_, err := leases.Update(ctx, l, metav1.UpdateOptions{})
		if !apierrors.IsConflict(err) {
			if apierrors.IsNotFound(err) {
				return nil
			}
			return err
		}
		cur, err = leases.Get(ctx, l.Name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		} else if err != nil {
			return err
		}
	}
	return fmt.Errorf("release Lease: it kept changing")
}

// upkeep, on the live member with the smallest ID, deletes the Leases of
// members expired for longer than the ring grace. The delete carries the
// resource version it judged, so a Lease renewed meanwhile stays.
func (k *Kube) upkeep(ctx context.Context) {
	v := k.Current()
	for _, m := range v.Members() {
		if m.State == Live && m.ID < k.o.Self.ID {
			return // not the janitor
		}
	}
	now := time.Now()
	k.mu.Lock()
	seen := k.seen
	k.mu.Unlock()
	for _, l := range k.Leases() {
		o, ok := seen[l.Name]
		if !ok || expiredSince(l, o, now) < k.o.RingGrace {
			continue
		}
		rv := l.ResourceVersion
		err := k.cs.CoordinationV1().Leases(k.o.Namespace).Delete(ctx, l.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{ResourceVersion: &rv}})
		switch {
		case err == nil:
			k.log.Info("member left the ring: down for longer than the ring grace", "lease", l.Name, "grace", k.o.RingGrace)
		case apierrors.IsNotFound(err), apierrors.IsConflict(err):
		default:
			k.log.Warn("taking an expired member out of the ring failed", "lease", l.Name, "err", err)
		}
	}
}

// RingGrace is how long a member may be down before it leaves the ring.
func (k *Kube) RingGrace() time.Duration { return k.o.RingGrace }
