package membership

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/granary-cache/granary/internal/config"
)

// Open makes the Source that cfg's membership section describes. A worker
// passes itself as self, to be registered where the backend registers
// workers; a client passes nil.
func Open(ctx context.Context, cfg *config.Config, self *Member, log *slog.Logger) (Source, error) {
	return OpenWorker(ctx, cfg, self, nil, log)
}

// OpenWorker is Open for a worker that publishes figures (JSON, called at
// each renewal) where the backend keeps them (Kubernetes: its Lease).
func OpenWorker(ctx context.Context, cfg *config.Config, self *Member, figures func() []byte, log *slog.Logger) (Source, error) {
	m := cfg.Membership
	switch m.Type {
	case config.MembershipKubernetes:
		rc, err := KubeConfig(m.Kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("membership: kubernetes: %w", err)
		}
		ns := m.Namespace
		if ns == "" {
			ns = PodNamespace()
		}
		return OpenKube(ctx, KubeOptions{
			Config:        rc,
			Namespace:     ns,
			Cluster:       m.Cluster,
			LeaseDuration: time.Duration(m.LeaseTTL),
			RingGrace:     time.Duration(m.RingGrace),
			DialTimeout:   time.Duration(m.DialTimeout),
			Self:          self,
			Figures:       figures,
			Log:           log,
		})
	case config.MembershipEtcd:
		return OpenEtcd(ctx, EtcdOptions{
			Endpoints:   m.Endpoints,
			Prefix:      m.Prefix,
			LeaseTTL:    time.Duration(m.LeaseTTL),
			RingGrace:   time.Duration(m.RingGrace),
			DialTimeout: time.Duration(m.DialTimeout),
			TLS:         m.TLS.ClientConfig(),
			Self:        self,
			Log:         log,
		})
	case config.MembershipStatic, "":
		members := make([]Member, len(m.Workers))
		for i, w := range m.Workers {
			members[i] = Member{ID: w.ID, Addr: w.Addr, Socket: w.Socket, Host: w.Host, Weight: w.Weight}
		}
		s, err := NewStatic(members)
		if err != nil {
			return nil, fmt.Errorf("membership: %w", err)
		}
		return s, nil
	default:
		return nil, fmt.Errorf("membership: unknown type %q", m.Type)
	}
}

// Remover is a Source that can take a member out of the ring.
type Remover interface {
	Remove(ctx context.Context, id string) error
}
