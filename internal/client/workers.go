package client

import (
	"context"
	"io"
	"net/http"
	"net/url"
	"sync"

	"github.com/granary-cache/granary/internal/membership"
	"github.com/granary-cache/granary/internal/placement"
	"github.com/granary-cache/granary/internal/wire"
)

// What tools that talk to the workers themselves (granary load) need of
// the client: who owns a key, a request to one worker with the client's
// credentials, and which workers answer now.

// Owners returns the first n live owners of key, best first, leaving out
// workers marked down (see Probe).
func (c *Client) Owners(key string, n int) []placement.Member {
	all := c.members.Current().Owners(nil, key, c.members.Current().Len())
	out := make([]placement.Member, 0, n)
	for _, m := range all {
		if len(out) == n {
			break
		}
		if !c.reach.Down(m.ID) {
			out = append(out, m)
		}
	}
	return out
}

// Do sends one request to a worker's data endpoint and returns the
// response when it is a success (the error it carries otherwise). While the
// body is read, a worker that stops answering is probed and the request
// cancelled, as for reads.
func (c *Client) Do(ctx context.Context, m placement.Member, method, path string, q url.Values, body io.Reader) (*http.Response, error) {
	gctx, done := c.reach.Guard(ctx, m.ID, m.Addr)
	u := c.url(m.Addr, path)
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(gctx, method, u, body)
	if err != nil {
		done()
		return nil, err
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		done()
		if ctx.Err() == nil {
			c.reach.MarkDown(m.ID, m.Addr, err) // no answer: read around it
		}
		return nil, err
	}
	if resp.StatusCode/100 != 2 {
		defer done()
		defer resp.Body.Close()
		return nil, wire.ReadError(path, "", "", resp)
	}
	resp.Body = &guarded{ReadCloser: resp.Body, done: done}
	return resp, nil
}

type guarded struct {
	io.ReadCloser
	once sync.Once
	done func()
}

func (g *guarded) Close() error {
	err := g.ReadCloser.Close()
	g.once.Do(g.done)
	return err
}

// Probe pings every live member at once and marks those that do not
// answer down, so that Owners leaves them out; it returns their errors by
// worker ID.
func (c *Client) Probe(ctx context.Context) map[string]error {
	var mu sync.Mutex
	failed := map[string]error{}
	var wg sync.WaitGroup
	for _, m := range c.members.Current().Members() {
		if m.State != membership.Live {
			continue
		}
		wg.Go(func() {
			pctx, cancel := context.WithTimeout(ctx, c.reach.ProbeTimeout)
			defer cancel()
			if err := c.ping(pctx, m.ID, m.Addr); err != nil {
				c.reach.MarkDown(m.ID, m.Addr, err)
				mu.Lock()
				failed[m.ID] = err
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return failed
}

// Host is the machine this client runs on (client.host).
func (c *Client) Host() string { return c.host }
