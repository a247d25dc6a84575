package membership

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// broadcast is the part of a Source that a backend (etcd, Kubernetes) fills:
// the current view, announced to every watcher when it changes, and the
// health of the link to the backend. Etcd and Kube embed it.
type broadcast struct {
	backend string // for Health
	log     *slog.Logger

	view   atomic.Pointer[View]
	health atomic.Pointer[Health]

	mu      sync.Mutex
	changed chan struct{} // closed and replaced at each new view
	closed  chan struct{} // closed when the source closes
	once    sync.Once
}

func (b *broadcast) init(backend string, log *slog.Logger) {
	b.backend, b.log = backend, log
	b.changed, b.closed = make(chan struct{}), make(chan struct{})
}

// Current returns the last view published.
func (b *broadcast) Current() *View { return b.view.Load() }

// Health says whether the backend answers; when it does not, the view is
// the last one it had.
func (b *broadcast) Health() Health { return *b.health.Load() }

// publish makes v the current view and wakes the watchers, unless it is
// the same as the current one.
func (b *broadcast) publish(v *View) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if old := b.view.Load(); old != nil && old.Equal(v) {
		return
	}
	b.view.Store(v)
	close(b.changed)
	b.changed = make(chan struct{})
}

// setHealth records whether the backend answers (err == nil), logging each
// change once.
func (b *broadcast) setHealth(err error) {
	old := b.health.Load()
	ok := err == nil
	if old != nil && old.OK == ok {
		return
	}
	h := &Health{Backend: b.backend, OK: ok, Since: time.Now()}
	if err != nil {
		h.Error = err.Error()
		b.log.Warn(b.backend+" unreachable; serving with the last member set", "err", err, "members", len(b.Current().Members()))
	} else if old != nil {
		b.log.Info(b.backend + " reachable again")
	}
	b.health.Store(h)
}

// isClosed reports whether close was called.
func (b *broadcast) isClosed() bool {
	select {
	case <-b.closed:
		return true
	default:
		return false
	}
}

// close releases the watchers; it reports whether this call closed it.
func (b *broadcast) close() (first bool) {
	b.once.Do(func() { close(b.closed); first = true })
	return first
}

// Watch calls fn with the current view, then with every new one, until ctx
// ends or the source is closed.
func (b *broadcast) Watch(ctx context.Context, fn func(*View)) error {
	var last *View
	for {
		if b.isClosed() {
			return ErrClosed
		}
		b.mu.Lock()
		changed := b.changed
		b.mu.Unlock()
		if v := b.view.Load(); v != last {
			fn(v)
			last = v
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-b.closed:
			return ErrClosed
		case <-changed:
		}
	}
}

// backendDefaults fills the settings both backends share and checks the
// worker a source registers, if any.
func backendDefaults(lease *time.Duration, defLease time.Duration, grace, dial *time.Duration, log **slog.Logger, self *Member) error {
	if *lease <= 0 {
		*lease = defLease
	}
	if *grace <= 0 {
		*grace = DefaultRingGrace
	}
	if *dial <= 0 {
		*dial = DefaultDialTimeout
	}
	if *log == nil {
		*log = slog.Default()
	}
	if self != nil {
		if err := CheckID(self.ID); err != nil {
			return fmt.Errorf("membership: worker: %w", err)
		}
		if err := CheckAddr(self.Addr); err != nil {
			return fmt.Errorf("membership: worker %s: %w", self.ID, err)
		}
	}
	return nil
}
