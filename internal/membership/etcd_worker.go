package membership

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// A worker's side of etcd membership: it registers (a ring entry, and a
// live entry under a lease it keeps alive), watches its own health, and does
// its share of ring upkeep.

// register writes Self's ring entry (unless it was taken out of the ring
// while running) and a live entry under a new lease.
func (e *Etcd) register(ctx context.Context) error {
	self := *e.o.Self
	lease, err := e.cli.Grant(ctx, int64(max(e.o.LeaseTTL/time.Second, 1)))
	if err != nil {
		return fmt.Errorf("grant a lease: %w", err)
	}
	now := time.Now().UTC()
	live, _ := json.Marshal(liveEntry{ID: self.ID, Addr: self.Addr, Socket: self.Socket, Host: self.Host, Zone: self.Zone, Weight: self.Weight, Since: now})
	ops := []clientv3.Op{
		clientv3.OpPut(e.key("live", self.ID), string(live), clientv3.WithLease(lease.ID)),
		clientv3.OpDelete(e.key("down", self.ID)),
	}
	e.mu.Lock()
	leaving := e.leaving
	joined := now
	if r, ok := e.ring[self.ID]; ok && !r.Joined.IsZero() {
		joined = r.Joined
	}
	old := e.lease
	e.mu.Unlock()
	if !leaving {
		ring, _ := json.Marshal(ringEntry{ID: self.ID, Addr: self.Addr, Socket: self.Socket, Host: self.Host, Zone: self.Zone, Weight: self.Weight, Joined: joined})
		ops = append(ops, clientv3.OpPut(e.key("ring", self.ID), string(ring)))
	}
	if _, err := e.cli.Txn(ctx).Then(ops...).Commit(); err != nil {
		// The new lease is left to expire, not revoked: the transaction
		// may have been applied with its answer lost (etcd going down), and
		// revoking the lease would then delete the live entry it holds.
		return fmt.Errorf("register %s: %w", self.ID, err)
	}
	e.mu.Lock()
	e.lease = lease.ID
	e.mu.Unlock()
	if old != 0 && old != lease.ID {
		// The live key moved to the new lease; the old one has nothing left.
		e.cli.Revoke(ctx, old)
	}
	e.log.Info("registered", "id", self.ID, "addr", self.Addr, "ring", !leaving)
	return nil
}

// keepAliveLoop keeps Self's lease alive; when the lease is lost (etcd was
// unreachable for longer than its TTL, or the live key vanished), it
// registers again as soon as etcd answers.
func (e *Etcd) keepAliveLoop() {
	for e.ctx.Err() == nil {
		e.mu.Lock()
		lease := e.lease
		e.mu.Unlock()
		kctx, cancel := context.WithCancel(e.ctx)
		ch, err := e.cli.KeepAlive(kctx, lease)
		if err == nil {
			e.drainKeepAlive(ch)
		}
		cancel()
		if e.ctx.Err() != nil {
			return
		}
		e.log.Warn("lease lost; registering again", "err", err)
		for backoff := 200 * time.Millisecond; e.ctx.Err() == nil; backoff = min(2*backoff, e.o.LeaseTTL/2) {
			rctx, cancel := context.WithTimeout(e.ctx, e.o.LeaseTTL)
			err := e.register(rctx)
			cancel()
			if err == nil {
				break
			}
			e.setHealth(err)
			select {
			case <-e.ctx.Done():
				return
			case <-time.After(backoff):
			}
		}
	}
}

// drainKeepAlive consumes keep-alive answers until the lease is lost or a
// new registration is asked for.
func (e *Etcd) drainKeepAlive(ch <-chan *clientv3.LeaseKeepAliveResponse) {
	for {
		select {
		case _, ok := <-ch:
			if !ok {
				return
			}
		case <-e.kick:
			return
		case <-e.ctx.Done():
			return
		}
	}
}

// upkeep records when ring members were first seen down, and, on the live
// worker with the smallest ID, takes out of the ring those down for longer
// than the ring grace.
func (e *Etcd) upkeep(ctx context.Context) {
	e.mu.Lock()
	var noted, expired []string
	janitor := !e.leaving
	for id := range e.live {
		if _, inRing := e.ring[id]; inRing && id < e.o.Self.ID {
			janitor = false
		}
	}
	for id := range e.ring {
		if _, live := e.live[id]; live {
			continue
		}
		d, ok := e.down[id]
		switch {
		case !ok:
			noted = append(noted, id)
		case janitor && time.Since(d.Since) > e.o.RingGrace:
			expired = append(expired, id)
		}
	}
	e.mu.Unlock()
	for _, id := range noted {
		v, _ := json.Marshal(downEntry{Since: time.Now().UTC()})
		e.cli.Txn(ctx).If(
			clientv3.Compare(clientv3.CreateRevision(e.key("live", id)), "=", 0),
			clientv3.Compare(clientv3.CreateRevision(e.key("down", id)), "=", 0),
		).Then(clientv3.OpPut(e.key("down", id), string(v))).Commit()
	}
	for _, id := range expired {
		resp, err := e.cli.Txn(ctx).If(
			clientv3.Compare(clientv3.CreateRevision(e.key("live", id)), "=", 0),
		).Then(clientv3.OpDelete(e.key("ring", id)), clientv3.OpDelete(e.key("down", id))).Commit()
		if err == nil && resp.Succeeded {
			e.log.Warn("member left the ring: down for longer than the ring grace", "id", id, "ring_grace", e.o.RingGrace)
		}
	}
}
