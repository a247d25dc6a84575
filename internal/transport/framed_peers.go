package transport

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/granary-cache/granary/internal/wire"
)

// The connections a Framed keeps to each worker: taken per call (an idle
// one, a new one under Options.Conns, else the least busy), closed when
// idle for Options.IdleTimeout, dropped with a worker marked down.

// peer is one worker's connections.
type peer struct {
	addr      string
	mu        sync.Mutex
	conns     []*cliConn      // live connections, at most Conns with those dialing
	dialing   int             // connections being dialed
	dropped   context.Context // ended by Drop: the dials in flight give up
	drop      context.CancelFunc
	httpUntil time.Time // the worker speaks HTTP only: use it until then
	gone      bool      // forgotten by closeIdle: look the worker up again
}

// httpRecheck is how long a worker found to speak HTTP only is read over
// HTTP before the framed protocol is tried again (it may be upgraded).
const httpRecheck = time.Minute

func (t *Framed) peer(addr string) (*peer, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil, fmt.Errorf("%w: the reader is closed", wire.ErrWorker)
	}
	p := t.peers[addr]
	if p == nil {
		p = &peer{addr: addr}
		p.dropped, p.drop = context.WithCancel(context.Background())
		t.peers[addr] = p
	}
	if !t.reaping {
		t.reaping = true
		go t.reap()
	}
	return p, nil
}

// reap closes, every half IdleTimeout, the connections idle for longer
// than IdleTimeout, and forgets the workers left with none, until Close.
func (t *Framed) reap() {
	idle := t.opts.idleTimeout()
	tick := time.NewTicker(idle / 2)
	defer tick.Stop()
	for {
		select {
		case <-t.stop:
			return
		case now := <-tick.C:
			t.closeIdle(now.Add(-idle))
		}
	}
}

// closeIdle closes the connections last used before cutoff, and forgets
// the workers left with no connection (and not read over HTTP).
func (t *Framed) closeIdle(cutoff time.Time) {
	t.mu.Lock()
	peers := make([]*peer, 0, len(t.peers))
	for _, p := range t.peers {
		peers = append(peers, p)
	}
	t.mu.Unlock()
	for _, p := range peers {
		p.mu.Lock()
		live := p.conns[:0]
		var idle []*cliConn
		for _, c := range p.conns {
			// inflight only grows under p.mu: 0 here stays 0 until the
			// connection is gone from p.conns.
			if c.inflight.Load() == 0 && c.lastUsed.Load() < cutoff.UnixNano() {
				idle = append(idle, c)
				continue
			}
			live = append(live, c)
		}
		clear(p.conns[len(live):])
		p.conns = live
		empty := len(live) == 0 && p.dialing == 0 && time.Now().After(p.httpUntil)
		p.mu.Unlock()
		for _, c := range idle {
			c.fail(errIdle)
		}
		if empty {
			t.mu.Lock()
			p.mu.Lock()
			if len(p.conns) == 0 && p.dialing == 0 && t.peers[p.addr] == p {
				delete(t.peers, p.addr)
				p.gone = true
			}
			p.mu.Unlock()
			t.mu.Unlock()
		}
	}
}

var (
	errIdle     = fmt.Errorf("%w: closed after being idle", wire.ErrWorker)
	errPeerGone = fmt.Errorf("%w: the worker's entry was forgotten as idle", wire.ErrWorker)
)

// conn returns a connection to p for one more call: an idle one, else a
// new one while under Conns, else the least busy. Nil (and no error) when
// p speaks HTTP only. The dial runs outside p.mu: a worker cut off makes
// a dial hang until its timeout, and the other calls (and Drop) must not
// queue behind it.
func (t *Framed) conn(ctx context.Context, p *peer) (*cliConn, error) {
	p.mu.Lock()
	if p.gone {
		p.mu.Unlock()
		return nil, errPeerGone
	}
	if time.Now().Before(p.httpUntil) {
		p.mu.Unlock()
		return nil, nil
	}
	best := p.leastBusy()
	if best != nil && (best.inflight.Load() == 0 || len(p.conns)+p.dialing >= t.opts.Conns) {
		best.use()
		p.mu.Unlock()
		return best, nil
	}
	p.dialing++
	dctx, cancel := context.WithCancelCause(ctx)
	unwatch := context.AfterFunc(p.dropped, func() { cancel(errDropped) })
	p.mu.Unlock()
	c, err := t.dial(dctx, p.addr)
	unwatch()
	cancel(nil)
	p.mu.Lock()
	defer p.mu.Unlock()
	p.dialing--
	switch {
	case errors.Is(err, errNotFramed):
		p.httpUntil = time.Now().Add(httpRecheck)
		return nil, nil
	case err != nil:
		if best = p.leastBusy(); best != nil { // a busy connection is better than none
			best.use()
			return best, nil
		}
		return nil, err
	case p.gone:
		c.fail(errPeerGone)
		return nil, errPeerGone
	}
	p.conns = append(p.conns, c)
	c.use()
	return c, nil
}

// leastBusy drops p's broken connections and returns the one with the
// fewest calls, nil if none is left. Called under p.mu.
func (p *peer) leastBusy() *cliConn {
	var best *cliConn
	live := p.conns[:0]
	for _, c := range p.conns {
		if c.broken() {
			continue
		}
		live = append(live, c)
		if best == nil || c.inflight.Load() < best.inflight.Load() {
			best = c
		}
	}
	clear(p.conns[len(live):])
	p.conns = live
	return best
}
