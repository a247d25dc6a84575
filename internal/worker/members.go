package worker

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/granary-cache/granary/internal/config"
	"github.com/granary-cache/granary/internal/membership"
)

// A worker learns who its peers are from a membership.Source, the same one
// clients use, and registers itself where the source keeps live workers
// (etcd). It needs the peers to read a small file through the worker that
// listed its directory (see dirreader.go).

// idFile is where a worker keeps the ID it made up for itself.
const idFile = "worker-id"

// resolveID returns the configured ID or, when there is none (etcd
// membership), the one kept in the state directory, made up and written
// there the first time: a restarted worker keeps its place in the ring.
func resolveID(wc config.Worker) (string, error) {
	if wc.ID != "" {
		return wc.ID, membership.CheckID(wc.ID)
	}
	p := filepath.Join(wc.StateDir, idFile)
	b, err := os.ReadFile(p)
	switch {
	case err == nil:
		id := strings.TrimSpace(string(b))
		if err := membership.CheckID(id); err != nil {
			return "", fmt.Errorf("%s: %w (delete it to get a new identity, or set worker.id)", p, err)
		}
		return id, nil
	case !errors.Is(err, fs.ErrNotExist):
		return "", fmt.Errorf("worker identity: %w", err)
	}
	host, _ := os.Hostname()
	host = strings.Map(func(r rune) rune {
		if r <= ' ' || r == '/' || r == 0x7f {
			return '-'
		}
		return r
	}, host)
	var suffix [3]byte
	rand.Read(suffix[:])
	id := strings.TrimPrefix(host+"-"+hex.EncodeToString(suffix[:]), "-")
	if err := os.MkdirAll(wc.StateDir, 0o755); err != nil {
		return "", fmt.Errorf("worker identity: %w", err)
	}
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, []byte(id+"\n"), 0o644); err != nil {
		return "", fmt.Errorf("worker identity: %w", err)
	}
	if err := os.Rename(tmp, p); err != nil {
		return "", fmt.Errorf("worker identity: %w", err)
	}
	return id, nil
}

// advertise is the data address other machines dial: worker.advertise, or
// the bound listen address, or, when that has no host (0.0.0.0), the first
// address of this machine that is not loopback, with the bound port.
func advertise(wc config.Worker, bound net.Addr) (string, error) {
	if wc.Advertise != "" {
		return wc.Advertise, nil
	}
	host, port, err := net.SplitHostPort(bound.String())
	if err != nil {
		return "", err
	}
	if ip := net.ParseIP(host); ip != nil && !ip.IsUnspecified() {
		return bound.String(), nil
	}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return "", fmt.Errorf("worker.advertise: list this machine's addresses: %w", err)
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && !n.IP.IsLoopback() && n.IP.To4() != nil && n.IP.IsGlobalUnicast() {
			return net.JoinHostPort(n.IP.String(), port), nil
		}
	}
	return "", fmt.Errorf("worker.listen %s has no host and this machine has no address other than loopback: set worker.advertise", wc.Listen)
}

// self is this worker as it registers.
func (w *Worker) self() membership.Member {
	wc := w.cfg.Worker
	return membership.Member{ID: w.ID(), Addr: w.advertised, Socket: wc.Socket, Host: wc.Host, Zone: wc.Zone, Weight: wc.Weight, State: membership.Live}
}

// openMembership opens the configured membership source, registering this
// worker with it.
func (w *Worker) openMembership() error {
	self := w.self()
	cfg := w.cfg
	if cfg.Membership.Type == config.MembershipStatic {
		// This worker's own entry gets the address it is bound to (the list
		// may say port 0, or a name): it never dials itself anyway.
		c := *cfg
		c.Membership.Workers = slices.Clone(c.Membership.Workers)
		for i, m := range c.Membership.Workers {
			if m.ID == self.ID {
				c.Membership.Workers[i].Addr = self.Addr
			}
		}
		cfg = &c
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(w.cfg.Membership.DialTimeout)+time.Minute)
	defer cancel()
	src, err := membership.OpenWorker(ctx, cfg, &self, w.figures, w.log)
	if err != nil {
		return err
	}
	w.useMembership(src)
	return nil
}

// figures are what the worker publishes with its membership entry (on
// Kubernetes, on its Lease): its capacity, hits and per-dataset figures.
// Asking for them starts the measure of the datasets' UFS size, as a status
// request does.
func (w *Worker) figures() []byte {
	b, _ := json.Marshal(w.Status().Figures())
	return b
}

// UseMembership replaces the worker's membership source (granary up, whose
// workers learn their peers' ports only once all are bound). The worker
// closes the source when it closes.
func (w *Worker) UseMembership(src membership.Source) { w.useMembership(src) }

func (w *Worker) useMembership(src membership.Source) {
	old := w.members.Swap(&src)
	if old != nil {
		(*old).Close()
	}
	w.bg.Go(func() {
		err := src.Watch(w.bgCtx, func(v *membership.View) {
			for state, n := range v.Count() {
				w.m.members.WithLabelValues(state.String()).Set(float64(n))
			}
			w.log.Debug("membership changed", "live", v.Len(), "members", len(v.Members()))
		})
		if err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, membership.ErrClosed) {
			w.log.Warn("membership watch ended", "err", err)
		}
	})
}

// view is the current membership (the last one, once the worker left it
// to drain).
func (w *Worker) view() *membership.View {
	src := w.members.Load()
	if src == nil {
		return w.lastView.Load()
	}
	return (*src).Current()
}

// MembershipHealth says whether the worker is in touch with its membership
// backend.
func (w *Worker) MembershipHealth() membership.Health {
	src := w.members.Load()
	if src == nil {
		return membership.Health{Backend: "none", OK: true}
	}
	return (*src).Health()
}

// closeMembership leaves the live set (etcd: the lease is revoked, so that
// readers go elsewhere at once); the ring keeps this worker's place.
func (w *Worker) closeMembership() error {
	src := w.members.Swap(nil)
	if src == nil {
		return nil
	}
	w.lastView.Store((*src).Current())
	return (*src).Close()
}

// handleHealthz answers ok while the worker serves — also when it lost its
// membership backend, since it keeps serving with the last member set — and
// says how membership stands.
func (w *Worker) handleHealthz(rw http.ResponseWriter, _ *http.Request) {
	fmt.Fprintf(rw, "ok\n%s\n", w.MembershipHealth())
}

// registerMembershipHealth exports whether the membership backend answers.
func (w *Worker) registerMembershipHealth() {
	w.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "granary_membership_healthy",
		Help: "1 when the worker is in touch with its membership backend (etcd); 0 when it serves with the last member set it had.",
	}, func() float64 {
		if w.MembershipHealth().OK {
			return 1
		}
		return 0
	}))
	w.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "granary_membership_requests_total",
		Help: "Requests the worker made to its membership backend's API (Kubernetes: each Lease write, list and watch); a watch counts once.",
	}, func() float64 {
		if src := w.members.Load(); src != nil {
			if c, ok := (*src).(interface{ Requests() int64 }); ok {
				return float64(c.Requests())
			}
		}
		return 0
	}))
}
