package membership

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/granary-cache/granary/internal/etcdtest"
)

// These tests run against a real etcd (internal/etcdtest).

func openEtcd(t *testing.T, srv *etcdtest.Server, prefix string, self *Member, grace time.Duration) *Etcd {
	t.Helper()
	return openEtcdTTL(t, srv, prefix, self, grace, 2*time.Second)
}

func openEtcdTTL(t *testing.T, srv *etcdtest.Server, prefix string, self *Member, grace, ttl time.Duration) *Etcd {
	t.Helper()
	e, err := OpenEtcd(t.Context(), EtcdOptions{Endpoints: []string{srv.Endpoint}, Prefix: prefix, LeaseTTL: ttl,
		RingGrace: grace, DialTimeout: 3 * time.Second, Self: self})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

func worker(id string, port int) *Member {
	return &Member{ID: id, Addr: fmt.Sprintf("127.0.0.1:%d", port), Host: "h-" + id, Weight: 1}
}

// waitFor polls cond for up to 20 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func state(v *View, id string) string {
	m, ok := v.Member(id)
	if !ok {
		return "absent"
	}
	return m.State.String()
}

func TestEtcdRingAndLiveness(t *testing.T) {
	srv := etcdtest.Start(t, etcdtest.Options{})
	client := openEtcd(t, srv, "/t1", nil, time.Hour)
	w1 := openEtcd(t, srv, "/t1", worker("w1", 7001), time.Hour)
	w2 := openEtcd(t, srv, "/t1", worker("w2", 7002), time.Hour)

	waitFor(t, "both workers live", func() bool { return client.Current().Len() == 2 })
	v := client.Current()
	if m, _ := v.Member("w2"); m.Addr != "127.0.0.1:7002" || m.Host != "h-w2" || m.Since.IsZero() {
		t.Errorf("w2 is %+v", m)
	}
	keys := sampleOwners(v, 2000)

	// A worker that stops leaves the live set at once (its lease is
	// revoked) but keeps its place in the ring.
	w2.Close()
	waitFor(t, "w2 not live", func() bool { return state(client.Current(), "w2") == "not live" })
	if n := client.Current().Len(); n != 1 {
		t.Fatalf("%d live members after w2 stopped, want 1", n)
	}
	if owners := sampleOwners(client.Current(), 2000); !allOn(owners, "w1") {
		t.Fatalf("with w2 down, keys went elsewhere than w1")
	}
	// Back with the same ID: every key goes where it went before.
	openEtcd(t, srv, "/t1", worker("w2", 7012), time.Hour)
	waitFor(t, "w2 live again", func() bool {
		m, _ := client.Current().Member("w2")
		return m.State == Live && m.Addr == "127.0.0.1:7012"
	})
	if moved := diff(keys, sampleOwners(client.Current(), 2000)); moved != 0 {
		t.Errorf("%d keys moved after w2 restarted, want 0", moved)
	}
	if !w1.Health().OK || !client.Health().OK {
		t.Errorf("health: w1 %v, client %v", w1.Health(), client.Health())
	}
}

func TestEtcdRingGrace(t *testing.T) {
	srv := etcdtest.Start(t, etcdtest.Options{})
	client := openEtcd(t, srv, "/t2", nil, time.Hour)
	openEtcd(t, srv, "/t2", worker("w1", 7001), 3*time.Second)
	w2 := openEtcd(t, srv, "/t2", worker("w2", 7002), 3*time.Second)
	waitFor(t, "both live", func() bool { return client.Current().Len() == 2 })
	start := time.Now()
	w2.Close()
	waitFor(t, "w2 not live", func() bool { return state(client.Current(), "w2") == "not live" })
	waitFor(t, "w2 noted down", func() bool { m, _ := client.Current().Member("w2"); return !m.Since.IsZero() })
	waitFor(t, "w2 out of the ring", func() bool { return state(client.Current(), "w2") == "absent" })
	if took := time.Since(start); took < 3*time.Second {
		t.Errorf("w2 left the ring after %v, before the 3s grace", took)
	}
}

func TestEtcdRemove(t *testing.T) {
	srv := etcdtest.Start(t, etcdtest.Options{})
	client := openEtcd(t, srv, "/t3", nil, time.Hour)
	openEtcd(t, srv, "/t3", worker("w1", 7001), time.Hour)
	w2 := openEtcd(t, srv, "/t3", worker("w2", 7002), time.Hour)
	waitFor(t, "both live", func() bool { return client.Current().Len() == 2 })

	if err := client.Remove(t.Context(), "w9"); err == nil || !strings.Contains(err.Error(), `"w9" is not in the ring (members: w1, w2)`) {
		t.Errorf("Remove(w9) = %v", err)
	}
	// A live member taken out keeps its live entry (leaving) and does not
	// put itself back, not even when its lease is renewed.
	if err := client.Remove(t.Context(), "w2"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "w2 leaving", func() bool { return state(client.Current(), "w2") == "leaving" })
	waitFor(t, "w2 to see itself leaving", func() bool { return state(w2.Current(), "w2") == "leaving" })
	select {
	case w2.kick <- struct{}{}: // register again now
	default:
	}
	time.Sleep(3 * time.Second)
	if s := state(client.Current(), "w2"); s != "leaving" {
		t.Errorf("w2 is %s after re-registering, want leaving", s)
	}
	if owners := sampleOwners(client.Current(), 500); !allOn(owners, "w1") {
		t.Errorf("a leaving member still owns keys")
	}
}

func TestEtcdOutage(t *testing.T) {
	srv := etcdtest.Start(t, etcdtest.Options{})
	// A lease of 5s: longer than etcd takes to stop, so that no lease
	// expires on the way down.
	client := openEtcdTTL(t, srv, "/t4", nil, time.Hour, 5*time.Second)
	w1 := openEtcdTTL(t, srv, "/t4", worker("w1", 7001), time.Hour, 5*time.Second)
	openEtcdTTL(t, srv, "/t4", worker("w2", 7002), time.Hour, 5*time.Second)
	waitFor(t, "both live", func() bool { return client.Current().Len() == 2 })

	// Killed, not stopped: on its way down, a stopping etcd may still expire
	// a lease whose keep-alives it no longer takes, and the view would
	// rightly show that member not live.
	srv.Kill()
	waitFor(t, "the worker to notice", func() bool { return !w1.Health().OK })
	waitFor(t, "the client to notice", func() bool { return !client.Health().OK })
	if !strings.Contains(w1.Health().String(), "serving with the last member set") {
		t.Errorf("health while etcd is down: %s", w1.Health())
	}
	if n := client.Current().Len(); n != 2 {
		t.Errorf("client view has %d live members while etcd is down, want the last one (2): %+v", n, client.Current().Members())
	}
	time.Sleep(6 * time.Second) // longer than the lease TTL
	srv.Restart(t)
	waitFor(t, "health back", func() bool { return w1.Health().OK && client.Health().OK })
	waitFor(t, "both live again", func() bool { return client.Current().Len() == 2 })
	// The live entries are there in etcd itself, not only in the views.
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{srv.Endpoint}, DialTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	waitFor(t, "live keys in etcd", func() bool {
		resp, err := cli.Get(t.Context(), "/t4/live/", clientv3.WithPrefix(), clientv3.WithCountOnly())
		return err == nil && resp.Count == 2
	})
}

func TestEtcdUnreachable(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now
	start := time.Now()
	_, err = OpenEtcd(t.Context(), EtcdOptions{Endpoints: []string{"http://" + addr}, DialTimeout: time.Second})
	if err == nil || !strings.Contains(err.Error(), "etcd http://"+addr+" did not answer within 1s") {
		t.Errorf("OpenEtcd = %v", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("OpenEtcd took %v to fail", took)
	}
}

func TestEtcdMalformedEntries(t *testing.T) {
	srv := etcdtest.Start(t, etcdtest.Options{})
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{srv.Endpoint}, DialTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx := context.Background()
	for k, v := range map[string]string{"/t5/ring/bad": "{not json", "/t5/live/noaddr": `{"addr":""}`, "/t5/ring/a b": `{}`} {
		if _, err := cli.Put(ctx, k, v); err != nil {
			t.Fatal(err)
		}
	}
	openEtcd(t, srv, "/t5", worker("w1", 7001), time.Hour)
	client := openEtcd(t, srv, "/t5", nil, time.Hour)
	waitFor(t, "w1 live", func() bool { return client.Current().Len() == 1 })
	for _, m := range client.Current().Members() {
		if m.ID != "w1" && m.ID != "noaddr" {
			t.Errorf("unexpected member %+v", m)
		}
	}
	if _, err := OpenEtcd(ctx, EtcdOptions{Endpoints: []string{srv.Endpoint}, Self: &Member{ID: "x/y", Addr: "h:1"}}); err == nil || !errors.Is(err, err) || !strings.Contains(err.Error(), "slash") {
		t.Errorf("a worker ID with a slash: %v", err)
	}
}

func sampleOwners(v *View, n int) []string {
	out := make([]string, n)
	for i := range out {
		m, _ := v.Table().Owner(fmt.Sprintf("key-%d", i))
		out[i] = m.ID
	}
	return out
}

func allOn(owners []string, id string) bool {
	for _, o := range owners {
		if o != id {
			return false
		}
	}
	return true
}

func diff(a, b []string) int {
	n := 0
	for i := range a {
		if a[i] != b[i] {
			n++
		}
	}
	return n
}
