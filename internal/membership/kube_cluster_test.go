package membership

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"

	"github.com/granary-cache/granary/internal/kubetest"
	"github.com/granary-cache/granary/internal/placement"
)

// Membership on a real API server: workers hold Leases; one cut off from
// the API server leaves placement when its Lease expires and comes back to
// the same place; one that stops cleanly leaves at once; one down for
// longer than the ring grace leaves the ring.

// cuttable is a transport that can be cut, as a partition would.
type cuttable struct {
	next http.RoundTripper
	cut  *atomic.Bool
}

func (c cuttable) RoundTrip(r *http.Request) (*http.Response, error) {
	if c.cut.Load() {
		return nil, errors.New("cut off by the test")
	}
	return c.next.RoundTrip(r)
}

func cutConfig(cfg *rest.Config, cut *atomic.Bool) *rest.Config {
	c := rest.CopyConfig(cfg)
	c.Wrap(func(rt http.RoundTripper) http.RoundTripper { return cuttable{rt, cut} })
	return c
}

func TestKubeMembership(t *testing.T) {
	c := kubetest.Start(t, kubetest.Options{})
	ns := "members"
	if _, err := c.Clientset.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	open := func(id string, cut *atomic.Bool, grace time.Duration) *Kube {
		t.Helper()
		o := KubeOptions{Config: cutConfig(c.Config, cut), Namespace: ns, Cluster: "rt", LeaseDuration: 5 * time.Second,
			RingGrace: grace, DialTimeout: 10 * time.Second, Log: slog.Default(),
			Figures: func() []byte { return []byte(`{"capacity":1}`) }}
		if id != "" {
			o.Self = &Member{ID: id, Addr: fmt.Sprintf("127.0.0.1:%d", 7000+len(id)+int(id[len(id)-1])), Host: id, Weight: 1}
		}
		k, err := OpenKube(context.Background(), o)
		if err != nil {
			t.Fatalf("open %q: %v", id, err)
		}
		t.Cleanup(func() { k.Close() })
		return k
	}
	var cutA, cutB, cutC, cutW atomic.Bool
	grace := 8 * time.Second
	a := open("a", &cutA, grace)
	b := open("b", &cutB, grace)
	cw := open("c", &cutC, grace)
	watcher := open("", &cutW, grace)
	state := func(id string) State {
		m, ok := watcher.Current().Member(id)
		if !ok {
			return -1
		}
		return m.State
	}
	c.WaitFor(t, 20*time.Second, "three live members", func() (bool, error) {
		return watcher.Current().Len() == 3, nil
	})
	lease, err := c.Clientset.CoordinationV1().Leases(ns).Get(context.Background(), LeaseName("rt", "a"), metav1.GetOptions{})
	if err != nil || lease.Annotations[AnnotationFigures] != `{"capacity":1}` || lease.Labels[LabelCluster] != "rt" {
		t.Fatalf("a's Lease: %v %+v", err, lease.ObjectMeta)
	}
	keys := make([]string, 2000)
	for i := range keys {
		keys[i] = fmt.Sprintf("ds/file-%d/0", i)
	}
	owners := func(v *View) map[string]string {
		out := map[string]string{}
		var dst []placement.Member
		for _, k := range keys {
			dst = v.Owners(dst[:0], k, 1)
			out[k] = dst[0].ID
		}
		return out
	}
	before := owners(watcher.Current())

	// b is cut off: its Lease expires, its keys go to the others, and it
	// says it is cut off.
	cutB.Store(true)
	c.WaitFor(t, 20*time.Second, "b not live", func() (bool, error) { return state("b") == NotLive, nil })
	for k, id := range owners(watcher.Current()) {
		if id == "b" {
			t.Fatalf("key %s still goes to b, whose Lease expired", k)
		}
	}
	c.WaitFor(t, 20*time.Second, "b's health to say it is cut off", func() (bool, error) {
		h := b.Health()
		return !h.OK && strings.Contains(h.Error, "cut off"), nil
	})
	// Healed, b renews and takes back exactly its keys.
	cutB.Store(false)
	c.WaitFor(t, 20*time.Second, "b live again", func() (bool, error) { return state("b") == Live && b.Health().OK, nil })
	after := owners(watcher.Current())
	for k, id := range before {
		if after[k] != id {
			t.Fatalf("key %s moved from %s to %s across b's outage", k, id, after[k])
		}
	}

	// c stops cleanly: it is not live at once (long before its Lease would
	// expire), and keeps its place.
	cw.Close()
	c.WaitFor(t, 2*time.Second, "c not live right after it stopped", func() (bool, error) { return state("c") == NotLive, nil })
	// Removed by hand, it leaves the ring.
	if err := a.Remove(context.Background(), "c"); err != nil {
		t.Fatal(err)
	}
	c.WaitFor(t, 10*time.Second, "c gone", func() (bool, error) { return state("c") == -1, nil })
	if err := a.Remove(context.Background(), "nobody"); err == nil || !strings.Contains(err.Error(), "not in the ring") {
		t.Errorf("removing an unknown member: %v", err)
	}
	// A live member removed is leaving: it owns nothing, and serves on.
	if err := a.Remove(context.Background(), "b"); err != nil {
		t.Fatal(err)
	}
	c.WaitFor(t, 10*time.Second, "b leaving", func() (bool, error) { return state("b") == Leaving, nil })
	if watcher.Current().Len() != 1 {
		t.Errorf("%d members own keys, want 1 (a)", watcher.Current().Len())
	}

	// A member down for longer than the ring grace leaves the ring: a (the
	// live member with the smallest ID) deletes its Lease.
	d := open("d", new(atomic.Bool), grace)
	cutD := func() { d.cancel() } // stops renewing without releasing: a crash
	c.WaitFor(t, 20*time.Second, "d live", func() (bool, error) { return state("d") == Live, nil })
	cutD()
	c.WaitFor(t, 20*time.Second, "d not live", func() (bool, error) { return state("d") == NotLive, nil })
	c.WaitFor(t, grace+20*time.Second, "d out of the ring after the grace", func() (bool, error) { return state("d") == -1, nil })
	if watcher.Requests() == 0 || a.Requests() == 0 {
		t.Errorf("requests not counted: watcher %d, a %d", watcher.Requests(), a.Requests())
	}
}

// A client whose API server does not answer fails within its dial timeout,
// naming the server.
func TestKubeUnreachable(t *testing.T) {
	start := time.Now()
	_, err := OpenKube(context.Background(), KubeOptions{Config: &rest.Config{Host: "https://127.0.0.1:1"}, Namespace: "x", Cluster: "rt",
		DialTimeout: 2 * time.Second})
	if err == nil || !strings.Contains(err.Error(), "https://127.0.0.1:1") || !strings.Contains(err.Error(), "did not answer within 2s") {
		t.Fatalf("err %v", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("took %v", d)
	}
	for _, o := range []KubeOptions{{Config: &rest.Config{}, Cluster: "rt"}, {Config: &rest.Config{}, Namespace: "x"}, {Namespace: "x", Cluster: "rt"}} {
		if _, err := OpenKube(context.Background(), o); err == nil {
			t.Errorf("options %+v accepted", o)
		}
	}
}
