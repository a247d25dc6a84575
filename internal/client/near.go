package client

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/granary-cache/granary/internal/block"
	"github.com/granary-cache/granary/internal/config"
	"github.com/granary-cache/granary/internal/membership"
	"github.com/granary-cache/granary/internal/placement"
)

// A dataset with near_cache reads a block that no worker of this host owns
// through the worker of this host anyway (PathLocal with near=1): it copies
// the block from an owner into a near copy when it has room, and this client
// reads the copy's file directly. When the worker has no room (the dataset
// does not fit on this machine), the client stops asking for a while and
// reads from the owners, as without near_cache.

// nearBackoff is how long a client reads a dataset from its owners after
// the worker of its host refused a near copy.
const nearBackoff = 10 * time.Second

type nearState struct {
	mu      sync.Mutex
	refused map[string]time.Time // dataset → until when not to ask
}

// nearWorker returns the worker of this host to read a block of ds through,
// if ds keeps near copies, no owner of the block runs on this host, and the
// worker did not refuse lately.
func (c *Client) nearWorker(ds config.Dataset, owners []placement.Member) (placement.Member, bool) {
	if !ds.NearCache {
		return placement.Member{}, false
	}
	for _, m := range owners {
		if c.isLocal(m.ID) {
			return placement.Member{}, false
		}
	}
	c.near.mu.Lock()
	until := c.near.refused[ds.Name]
	c.near.mu.Unlock()
	if time.Now().Before(until) {
		return placement.Member{}, false
	}
	// The same worker every time: the live one of this host with the
	// smallest ID (members come sorted by ID).
	for _, m := range c.members.Current().Members() {
		if m.State == membership.Live && c.isLocal(m.ID) && !c.reach.Down(m.ID) {
			return placement.Member{ID: m.ID, Addr: m.Addr}, true
		}
	}
	return placement.Member{}, false
}

// nearRefused notes that the worker of this host did not give a near copy
// of a block of ds, and why.
func (c *Client) nearRefused(ds string, why error) {
	c.near.mu.Lock()
	if c.near.refused == nil {
		c.near.refused = map[string]time.Time{}
	}
	c.near.refused[ds] = time.Now().Add(nearBackoff)
	c.near.mu.Unlock()
	level := slog.LevelWarn
	if strings.Contains(why.Error(), errNoRoomText) {
		level = slog.LevelInfo // the dataset does not fit: expected
	}
	slog.Log(context.Background(), level, "no near copy; reading from the owners for a while", "dataset", ds, "for", nearBackoff, "err", why)
}

// errNoRoomText is what a worker answers when it has no room for a near
// copy (worker.errNoRoom).
const errNoRoomText = "no free room for a near copy"

// readNear reads bytes of a block through the near copy of the worker of
// this host.
func (c *Client) readNear(ctx context.Context, ds string, m placement.Member, ref block.Ref, off int64, buf []byte) error {
	parent := ctx
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	ctx, done := c.reach.Guard(ctx, m.ID, m.Addr) // a hung worker costs a probe
	defer done()
	if err := c.readLocal(ctx, m, ref, off, buf, true); err != nil {
		if parent.Err() == nil { // the reader gave up: no refusal
			c.nearRefused(ds, err)
		}
		return err
	}
	c.nearReads.Add(1)
	return nil
}
