package membership

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
)

// The keys of a cluster in etcd, under its prefix (default /granary):
//
//	PREFIX/ring/ID   the ring: one entry per member, without lease; it stays
//	                 while the member is down, so a restart moves no keys
//	PREFIX/live/ID   liveness: one entry per running worker, under a lease
//	                 the worker keeps alive; it goes when the worker stops or
//	                 is cut off for longer than the lease TTL
//	PREFIX/down/ID   when a ring member was first seen not live, written by
//	                 the first live worker that noticed; once it is older than
//	                 the ring grace, the live worker with the smallest ID takes
//	                 the member out of the ring
//
// Values are JSON. Every write that depends on another key's absence is a
// transaction comparing that key's create revision with 0, so two workers
// acting at once can never take a live member out of the ring.

// Etcd defaults.
const (
	DefaultPrefix      = "/granary"
	DefaultLeaseTTL    = 10 * time.Second
	DefaultRingGrace   = 10 * time.Minute
	DefaultDialTimeout = 5 * time.Second
)

// EtcdOptions configure an Etcd source.
type EtcdOptions struct {
	Endpoints []string
	Prefix    string        // default DefaultPrefix
	LeaseTTL  time.Duration // default DefaultLeaseTTL
	RingGrace time.Duration // default DefaultRingGrace
	// DialTimeout bounds opening: a source that cannot reach etcd in that
	// time fails with an error that says so, rather than hang.
	DialTimeout time.Duration
	TLS         *tls.Config
	// Self, for a worker: it registers (joins the ring if it is not in it)
	// and holds a live entry under a lease until Close.
	Self *Member
	Log  *slog.Logger
}

// Etcd is a Source backed by etcd; make one with OpenEtcd.
type Etcd struct {
	o   EtcdOptions
	cli *clientv3.Client
	log *slog.Logger

	broadcast

	mu      sync.Mutex
	ring    map[string]ringEntry
	live    map[string]liveEntry
	down    map[string]downEntry
	rev     int64
	leaving bool // Self was taken out of the ring while live: do not rejoin
	lease   clientv3.LeaseID

	kick   chan struct{} // asks the registration loop to register again
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

var _ Source = (*Etcd)(nil)

type ringEntry struct {
	ID     string    `json:"id"`
	Addr   string    `json:"addr"` // the last address it registered with
	Socket string    `json:"socket,omitempty"`
	Host   string    `json:"host,omitempty"`
	Zone   string    `json:"zone,omitempty"`
	Weight float64   `json:"weight"`
	Joined time.Time `json:"joined"`
}

type liveEntry struct {
	ID     string    `json:"id"`
	Addr   string    `json:"addr"`
	Socket string    `json:"socket,omitempty"`
	Host   string    `json:"host,omitempty"`
	Zone   string    `json:"zone,omitempty"`
	Weight float64   `json:"weight"`
	Since  time.Time `json:"since"`
}

type downEntry struct {
	Since time.Time `json:"since"`
}

// OpenEtcd connects to etcd, reads the members and, with Self, registers.
// It fails, naming the endpoints, when etcd does not answer within the dial
// timeout.
func OpenEtcd(ctx context.Context, o EtcdOptions) (*Etcd, error) {
	if len(o.Endpoints) == 0 {
		return nil, errors.New("membership: etcd: no endpoints")
	}
	if o.Prefix == "" {
		o.Prefix = DefaultPrefix
	}
	o.Prefix = strings.TrimRight(o.Prefix, "/")
	if err := backendDefaults(&o.LeaseTTL, DefaultLeaseTTL, &o.RingGrace, &o.DialTimeout, &o.Log, o.Self); err != nil {
		return nil, err
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:            o.Endpoints,
		DialTimeout:          o.DialTimeout,
		DialKeepAliveTime:    o.LeaseTTL / 2,
		DialKeepAliveTimeout: o.LeaseTTL / 3,
		TLS:                  o.TLS,
		Logger:               zap.NewNop(),
		// gRPC's default reconnect backoff grows to two minutes: after an
		// outage, members would converge that much later.
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second},
			MinConnectTimeout: o.DialTimeout,
		})},
	})
	if err != nil {
		return nil, fmt.Errorf("membership: etcd %s: %w", strings.Join(o.Endpoints, ","), err)
	}
	e := &Etcd{o: o, cli: cli, log: o.Log.With("membership", "etcd"), kick: make(chan struct{}, 1)}
	e.init("etcd", e.log)
	e.ctx, e.cancel = context.WithCancel(context.Background())
	octx, cancel := context.WithTimeout(ctx, o.DialTimeout)
	defer cancel()
	if err := e.resync(octx); err != nil {
		cli.Close()
		return nil, e.unreachable(err)
	}
	if o.Self != nil {
		if err := e.register(octx); err != nil {
			cli.Close()
			return nil, e.unreachable(err)
		}
	}
	e.setHealth(nil)
	e.wg.Go(e.watchLoop)
	e.wg.Go(e.healthLoop)
	if o.Self != nil {
		e.wg.Go(e.keepAliveLoop)
	}
	return e, nil
}

func (e *Etcd) unreachable(err error) error {
	return fmt.Errorf("membership: etcd %s did not answer within %s: %w", strings.Join(e.o.Endpoints, ","), e.o.DialTimeout, err)
}

func (e *Etcd) key(kind, id string) string { return e.o.Prefix + "/" + kind + "/" + id }

// Close stops watching and, for a worker, deletes its live entry (revoking
// its lease) so that readers go elsewhere at once; its ring entry stays.
func (e *Etcd) Close() error {
	if !e.close() {
		return nil
	}
	e.cancel()
	e.wg.Wait()
	if e.o.Self != nil {
		e.mu.Lock()
		lease := e.lease
		e.mu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		if lease != 0 {
			e.cli.Revoke(ctx, lease)
		}
		cancel()
	}
	return e.cli.Close()
}

// Remove takes a member out of the ring at once. A member that is still
// running keeps serving what it holds, owns no keys, and joins again when it
// restarts.
func (e *Etcd) Remove(ctx context.Context, id string) error {
	resp, err := e.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(e.key("ring", id)), ">", 0)).
		Then(clientv3.OpDelete(e.key("ring", id)), clientv3.OpDelete(e.key("down", id))).
		Commit()
	if err != nil {
		return fmt.Errorf("membership: remove %s: %w", id, err)
	}
	if !resp.Succeeded {
		var ids []string
		for _, m := range e.Current().Members() {
			if m.State != Leaving {
				ids = append(ids, m.ID)
			}
		}
		return fmt.Errorf("membership: %q is not in the ring (members: %s)", id, strings.Join(ids, ", "))
	}
	return nil
}

// healthLoop asks etcd a small question every few seconds: the answer (or
// its absence) is the source's health. Coming back from an outage, it reads
// everything again, and a worker whose live entry vanished registers again.
// A worker also does its share of ring upkeep here.
func (e *Etcd) healthLoop() {
	every := min(max(e.o.LeaseTTL/3, time.Second), 5*time.Second)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-e.ctx.Done():
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(e.ctx, every)
		err := e.check(ctx)
		cancel()
		if e.ctx.Err() != nil {
			return
		}
		e.setHealth(err)
	}
}

func (e *Etcd) check(ctx context.Context) error {
	wasOK := e.health.Load().OK
	opts := []clientv3.OpOption{clientv3.WithCountOnly(), clientv3.WithPrefix()}
	key := e.o.Prefix + "/ring/"
	if e.o.Self != nil {
		key, opts = e.key("live", e.o.Self.ID), opts[:1]
	}
	resp, err := e.cli.Get(ctx, key, opts...)
	if err != nil {
		return err
	}
	if !wasOK {
		if err := e.resync(ctx); err != nil {
			return err
		}
	}
	if e.o.Self != nil {
		if resp.Count == 0 {
			select {
			case e.kick <- struct{}{}:
			default:
			}
		}
		e.upkeep(ctx)
	}
	return nil
}

// watchLoop follows every change under the prefix; when the watch breaks
// (etcd restarted, compaction), it reads everything again and resumes.
func (e *Etcd) watchLoop() {
	for e.ctx.Err() == nil {
		e.mu.Lock()
		rev := e.rev
		e.mu.Unlock()
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(e.ctx))
		for resp := range e.cli.Watch(wctx, e.o.Prefix+"/", clientv3.WithPrefix(), clientv3.WithRev(rev+1)) {
			if resp.Err() != nil || resp.Canceled {
				break
			}
			e.apply(resp.Events, resp.Header.Revision)
		}
		cancel()
		for backoff := 100 * time.Millisecond; e.ctx.Err() == nil; backoff = min(2*backoff, 5*time.Second) {
			ctx, cancel := context.WithTimeout(e.ctx, e.o.DialTimeout)
			err := e.resync(ctx)
			cancel()
			if err == nil {
				break
			}
			select {
			case <-e.ctx.Done():
			case <-time.After(backoff):
			}
		}
	}
}

// resync reads every key of the cluster and rebuilds the view.
func (e *Etcd) resync(ctx context.Context) error {
	resp, err := e.cli.Get(ctx, e.o.Prefix+"/", clientv3.WithPrefix())
	if err != nil {
		return err
	}
	e.mu.Lock()
	if e.ring != nil && e.rev > resp.Header.Revision {
		// The watch applied newer events while this read was on its way:
		// what it holds is more recent than this snapshot.
		e.mu.Unlock()
		return nil
	}
	e.ring, e.live, e.down = map[string]ringEntry{}, map[string]liveEntry{}, map[string]downEntry{}
	for _, kv := range resp.Kvs {
		e.put(string(kv.Key), kv.Value)
	}
	e.rev = resp.Header.Revision
	e.mu.Unlock()
	e.publish()
	return nil
}

func (e *Etcd) apply(events []*clientv3.Event, rev int64) {
	e.mu.Lock()
	for _, ev := range events {
		k := string(ev.Kv.Key)
		if ev.Type == mvccpb.PUT {
			e.put(k, ev.Kv.Value)
			continue
		}
		kind, id, ok := e.split(k)
		if !ok {
			continue
		}
		switch kind {
		case "ring":
			if self := e.o.Self; self != nil && id == self.ID {
				if _, live := e.live[id]; live && !e.leaving {
					// Only `member remove` takes a live member out of the
					// ring: stay out until restarted.
					e.leaving = true
					e.log.Warn("taken out of the ring while running: serving what is cached, owning no keys, until restarted")
				}
			}
			delete(e.ring, id)
		case "live":
			delete(e.live, id)
		case "down":
			delete(e.down, id)
		}
	}
	e.rev = max(e.rev, rev)
	e.mu.Unlock()
	e.publish()
}

func (e *Etcd) split(key string) (kind, id string, ok bool) {
	rest, ok := strings.CutPrefix(key, e.o.Prefix+"/")
	if !ok {
		return "", "", false
	}
	kind, id, ok = strings.Cut(rest, "/")
	return kind, id, ok && CheckID(id) == nil
}

// put records one key's value; e.mu is held. A value that does not parse
// is ignored (and logged): one bad entry must not hide the others.
func (e *Etcd) put(key string, value []byte) {
	kind, id, ok := e.split(key)
	if !ok {
		return
	}
	var err error
	switch kind {
	case "ring":
		var r ringEntry
		if err = json.Unmarshal(value, &r); err == nil {
			r.ID = id
			e.ring[id] = r
		}
	case "live":
		var l liveEntry
		if err = json.Unmarshal(value, &l); err == nil {
			if err = CheckAddr(l.Addr); err == nil {
				l.ID = id
				e.live[id] = l
			}
		}
	case "down":
		var d downEntry
		if err = json.Unmarshal(value, &d); err == nil {
			e.down[id] = d
		}
	}
	if err != nil {
		e.log.Warn("ignoring a malformed membership entry", "key", key, "err", err)
	}
}

// publish builds the view from the maps and announces it if it changed.
func (e *Etcd) publish() {
	e.mu.Lock()
	var ms []Member
	for id, r := range e.ring {
		m := Member{ID: id, Addr: r.Addr, Socket: r.Socket, Host: r.Host, Zone: r.Zone, Weight: r.Weight, State: NotLive, Since: e.down[id].Since}
		if l, ok := e.live[id]; ok {
			m = Member{ID: id, Addr: l.Addr, Socket: l.Socket, Host: l.Host, Zone: l.Zone, Weight: r.Weight, State: Live, Since: l.Since}
		}
		ms = append(ms, m)
	}
	for id, l := range e.live {
		if _, inRing := e.ring[id]; !inRing {
			ms = append(ms, Member{ID: id, Addr: l.Addr, Socket: l.Socket, Host: l.Host, Zone: l.Zone, Weight: l.Weight, State: Leaving, Since: l.Since})
		}
	}
	e.broadcast.publish(NewView(ms))
	e.mu.Unlock()
}

// RingGrace is how long a member may stay down before it leaves the ring.
func (e *Etcd) RingGrace() time.Duration { return e.o.RingGrace }
