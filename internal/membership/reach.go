package membership

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Reach tracks which workers answer, as seen by one process: membership
// says who should be up, Reach what this process found when it tried. It
// makes a dead or cut-off worker cost its readers one bounded wait rather
// than a request timeout each:
//
//   - Guard gives each request a context that is cancelled the moment its
//     worker is marked down, so every request in flight to it moves on at
//     once, not each after its own timeout;
//   - a request that has not finished after ProbeAfter makes Reach probe its
//     worker (one probe at a time per worker, bounded by ProbeTimeout); a
//     worker that does not answer the probe is marked down. A slow answer
//     from a worker that is up (a cold read from a slow UFS) is left alone;
//   - a worker marked down is probed in the background until it answers
//     again; until then readers try it last.
//
// A connection to a partitioned host does not fail, it hangs: that is why a
// probe, not the request's own failure, is what marks a worker down.
type Reach struct {
	// Probe checks that a worker answers; it must return within ctx. The
	// default dials its address.
	Probe func(ctx context.Context, id, addr string) error
	// ProbeAfter is how long a request runs before its worker is probed
	// (default 1s); ProbeTimeout bounds a probe (default 1s); Recheck is
	// how often a worker marked down is probed again (default 1s).
	ProbeAfter, ProbeTimeout, Recheck time.Duration
	// OnDown, if set, is called when a worker is marked down, with the
	// address it was last reached at (where its connections go: a caller
	// closes them, as they may hang).
	OnDown func(id, addr string, err error)

	mu        sync.Mutex
	peers     map[string]*peerReach
	closed    chan struct{}
	once      sync.Once
	closeOnce sync.Once
	wg        sync.WaitGroup
}

type peerReach struct {
	addr    atomic.Pointer[string]
	down    atomic.Bool
	probing atomic.Bool
	mu      sync.Mutex
	alive   context.Context // cancelled when the worker is marked down
	kill    context.CancelFunc
}

// errMarkedDown is the cause of a request context cancelled by Guard.
var errMarkedDown = errors.New("worker marked down: it did not answer a probe")

// ErrMarkedDown reports whether err comes from a request that Guard
// cancelled because its worker was marked down.
func ErrMarkedDown(ctx context.Context) bool { return errors.Is(context.Cause(ctx), errMarkedDown) }

func (r *Reach) init() {
	r.once.Do(func() {
		r.peers = map[string]*peerReach{}
		r.closed = make(chan struct{})
	})
}

func (r *Reach) probeAfter() time.Duration   { return orDefault(r.ProbeAfter, time.Second) }
func (r *Reach) probeTimeout() time.Duration { return orDefault(r.ProbeTimeout, time.Second) }
func (r *Reach) recheck() time.Duration      { return orDefault(r.Recheck, time.Second) }

func orDefault(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}

func (r *Reach) peer(id, addr string) *peerReach {
	r.init()
	r.mu.Lock()
	defer r.mu.Unlock()
	p := r.peers[id]
	if p == nil {
		p = &peerReach{}
		p.alive, p.kill = context.WithCancel(context.Background())
		r.peers[id] = p
	}
	if addr != "" {
		if old := p.addr.Load(); old == nil || *old != addr {
			p.addr.Store(&addr)
		}
	}
	return p
}

// Down reports whether the worker is marked down.
func (r *Reach) Down(id string) bool {
	r.init()
	r.mu.Lock()
	p := r.peers[id]
	r.mu.Unlock()
	return p != nil && p.down.Load()
}

// Guard returns a context for one request to worker id at addr: it is
// cancelled (cause: marked down) when the worker is marked down while the
// request runs, and a request still running after ProbeAfter gets its
// worker probed. Call done when the request is over.
func (r *Reach) Guard(parent context.Context, id, addr string) (ctx context.Context, done func()) {
	p := r.peer(id, addr)
	ctx, cancel := context.WithCancelCause(parent)
	p.mu.Lock()
	alive := p.alive
	p.mu.Unlock()
	stop := context.AfterFunc(alive, func() { cancel(errMarkedDown) })
	// Probed again every ProbeAfter while it lasts: a long stream (a load
	// batch) can outlive a worker cut off after its first probe.
	var t *time.Timer
	var mu sync.Mutex
	mu.Lock() // t is set before its function can use it
	defer mu.Unlock()
	t = time.AfterFunc(r.probeAfter(), func() {
		r.probe(id, p)
		mu.Lock()
		defer mu.Unlock()
		if ctx.Err() == nil {
			t.Reset(r.probeAfter())
		}
	})
	return ctx, func() {
		cancel(nil)
		mu.Lock()
		t.Stop()
		mu.Unlock()
		stop()
	}
}

// MarkDown marks a worker down, cancelling every request in flight to it,
// and probes it in the background until it answers again.
func (r *Reach) MarkDown(id, addr string, err error) {
	p := r.peer(id, addr)
	if p.down.Swap(true) {
		return
	}
	// Told before the requests in flight are cancelled, so that whoever
	// they return to finds the mark made and reported.
	if r.OnDown != nil {
		at := ""
		if a := p.addr.Load(); a != nil {
			at = *a
		}
		r.OnDown(id, at, err)
	}
	p.mu.Lock()
	p.kill()
	p.alive, p.kill = context.WithCancel(context.Background())
	p.mu.Unlock()
	// Under r.mu, so that Close (which closes r.closed under it too) never
	// waits on a group that is still growing.
	r.mu.Lock()
	defer r.mu.Unlock()
	select {
	case <-r.closed:
		p.down.Store(false)
		return
	default:
	}
	r.wg.Go(func() { r.recover(id, p) })
}

// probe checks a worker whose request is slow, once at a time.
func (r *Reach) probe(id string, p *peerReach) {
	if p.down.Load() || p.probing.Swap(true) {
		return
	}
	defer p.probing.Store(false)
	if err := r.ping(id, p); err != nil {
		r.MarkDown(id, "", err)
	}
}

func (r *Reach) ping(id string, p *peerReach) error {
	ctx, cancel := context.WithTimeout(context.Background(), r.probeTimeout())
	defer cancel()
	addr := ""
	if a := p.addr.Load(); a != nil {
		addr = *a
	}
	if r.Probe != nil {
		return r.Probe(ctx, id, addr)
	}
	c, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
	if err == nil {
		c.Close()
	}
	return err
}

// maxRecheck bounds how long a worker marked down is probed: after that it
// is simply tried again by the next request (and marked down again if it
// still does not answer), so that a worker gone for good costs nothing.
const maxRecheck = 10 * time.Minute

// recover probes a worker marked down until it answers, then clears the mark.
func (r *Reach) recover(id string, p *peerReach) {
	defer p.down.Store(false)
	t := time.NewTicker(r.recheck())
	defer t.Stop()
	for deadline := time.Now().Add(maxRecheck); time.Now().Before(deadline); {
		select {
		case <-r.closed:
			return
		case <-t.C:
		}
		if r.ping(id, p) == nil {
			return
		}
	}
}

// Close stops the background probes.
func (r *Reach) Close() {
	r.init()
	r.mu.Lock()
	r.closeOnce.Do(func() { close(r.closed) })
	r.mu.Unlock()
	r.wg.Wait()
}
