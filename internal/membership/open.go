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
	m := cfg.Membership
	switch m.Type {
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
