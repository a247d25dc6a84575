// Package client is how every reader — the CLI, the FUSE mount, bench —
// reads through granary. It maps each key to its owner workers with the same
// hash the workers use (no master to ask), keeps its own metadata cache under
// the dataset's metadata_sync rule, fetches the blocks of a large read in
// parallel, retries on the next owner when a worker fails, and as a last
// resort (a dataset's fallback: ufs) reads the UFS directly at a bounded
// rate. When an owner runs on the same host, it reads the block file directly
// (short-circuit) instead of over HTTP.
package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"iter"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/granary-cache/granary/internal/cache"
	"github.com/granary-cache/granary/internal/config"
	"github.com/granary-cache/granary/internal/dataset"
	"github.com/granary-cache/granary/internal/membership"
	"github.com/granary-cache/granary/internal/meta"
	"github.com/granary-cache/granary/internal/placement"
	"github.com/granary-cache/granary/internal/ufs"
	"github.com/granary-cache/granary/internal/wire"
)

// Stats counts how a client's reads were served.
type Stats struct {
	RemoteReads       int64 `json:"remote_reads"`        // block reads over HTTP
	ShortCircuitReads int64 `json:"short_circuit_reads"` // block reads from a local block file
	FallbackReads     int64 `json:"fallback_reads"`      // reads sent straight to the UFS
	Retries           int64 `json:"retries"`             // requests moved to the next owner
}

// Client reads datasets through the workers. It is safe for concurrent use.
type Client struct {
	cfg      *config.Config
	layout   cache.Layout
	members  membership.Source
	sockets  map[string]string // worker ID -> unix socket, for workers on this host
	token    string
	timeout  time.Duration
	datasets map[string]config.Dataset
	metas    map[string]*meta.Cache

	http  *http.Client
	unix  map[string]*http.Client
	local *localBlocks

	fallback     *rate.Limiter
	fallbackOnce sync.Once
	ufs          *dataset.Set
	ufsErr       error

	downMu sync.Mutex
	down   map[string]time.Time // workers that failed recently: tried last

	remote, short, direct, retries atomic.Int64
}

// New builds a client from the configuration's datasets, membership and
// client sections.
func New(cfg *config.Config) (*Client, error) {
	members := make([]placement.Member, len(cfg.Membership.Workers))
	for i, m := range cfg.Membership.Workers {
		members[i] = placement.Member{ID: m.ID, Addr: m.Addr, Weight: m.Weight}
	}
	src, err := membership.NewStatic(members)
	if err != nil {
		return nil, fmt.Errorf("membership: %w", err)
	}
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.MaxIdleConnsPerHost = 256
	transport.MaxIdleConns = 1024
	transport.DialContext = (&net.Dialer{Timeout: 2 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	c := &Client{
		cfg: cfg, members: src, token: cfg.Auth.Token, timeout: time.Duration(cfg.Client.Timeout),
		layout:   cache.Layout{BlockSize: int64(cfg.Worker.BlockSize), PageSize: int64(cfg.Worker.PageSize)},
		datasets: map[string]config.Dataset{}, metas: map[string]*meta.Cache{},
		sockets: map[string]string{}, unix: map[string]*http.Client{},
		http:     &http.Client{Transport: transport},
		local:    newLocalBlocks(512),
		fallback: rate.NewLimiter(rate.Limit(cfg.Client.FallbackReadsPerSecond), max(1, int(cfg.Client.FallbackReadsPerSecond))),
		down:     map[string]time.Time{},
	}
	for _, ds := range cfg.Datasets {
		c.datasets[ds.Name] = ds
		c.metas[ds.Name] = meta.New(ds.Name, ds.MetadataSync.Interval)
	}
	if cfg.Client.ShortCircuitOn() {
		for _, m := range cfg.Membership.Workers {
			if m.Socket == "" {
				continue
			}
			if st, err := os.Stat(m.Socket); err != nil || st.Mode()&os.ModeSocket == 0 {
				continue // not on this host, or not running
			}
			sock := m.Socket
			c.sockets[m.ID] = sock
			c.unix[m.ID] = &http.Client{Transport: &http.Transport{
				DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
					return (&net.Dialer{Timeout: 2 * time.Second}).DialContext(ctx, "unix", sock)
				},
				MaxIdleConnsPerHost: 64,
			}}
		}
	}
	return c, nil
}

// Close releases connections and open block files.
func (c *Client) Close() error {
	c.http.CloseIdleConnections()
	for _, u := range c.unix {
		u.CloseIdleConnections()
	}
	c.local.closeAll()
	if c.ufs != nil {
		c.ufs.Close()
	}
	return c.members.Close()
}

// Stats returns how reads were served so far.
func (c *Client) Stats() Stats {
	return Stats{RemoteReads: c.remote.Load(), ShortCircuitReads: c.short.Load(), FallbackReads: c.direct.Load(), Retries: c.retries.Load()}
}

// Layout is how files are cut into blocks.
func (c *Client) Layout() cache.Layout { return c.layout }

// Datasets lists the configured dataset names.
func (c *Client) Datasets() []string {
	names := make([]string, 0, len(c.cfg.Datasets))
	for _, ds := range c.cfg.Datasets {
		names = append(names, ds.Name)
	}
	return names
}

// resolve splits "/<dataset>/<path>" like dataset.Set.Resolve.
func (c *Client) resolve(p string) (config.Dataset, string, error) {
	clean, err := ufs.CleanPath(p)
	if err != nil {
		return config.Dataset{}, "", err
	}
	name, rest, _ := cutFirst(clean)
	ds, ok := c.datasets[name]
	if !ok {
		return config.Dataset{}, "", &dataset.UnknownDatasetError{Name: name, Known: c.Datasets()}
	}
	return ds, rest, nil
}

func cutFirst(p string) (string, string, bool) {
	for i := range len(p) {
		if p[i] == '/' {
			return p[:i], p[i+1:], true
		}
	}
	return p, "", false
}

// metaKey and dataKey are the placement keys: a path's metadata lives with
// its directory's listing (one listing answers every child); a block is
// placed by file and index.
func dataKey(ds, p string, idx int64) string {
	return fmt.Sprintf("d\x00%s\x00%s\x00%d", ds, p, idx)
}

// owners returns the workers to try for key, best first: the dataset's
// replicas and one more, with workers that failed recently moved last.
func (c *Client) owners(key string, replicas int) []placement.Member {
	t := c.members.Current()
	all := t.Owners(make([]placement.Member, 0, t.Len()), key, t.Len())
	n := min(len(all), max(replicas, 1)+1)
	c.downMu.Lock()
	defer c.downMu.Unlock()
	now := time.Now()
	var up, down []placement.Member
	for _, m := range all[:n] {
		if until, ok := c.down[m.ID]; ok && now.Before(until) {
			down = append(down, m)
		} else {
			up = append(up, m)
		}
	}
	return append(up, down...)
}

func (c *Client) markDown(id string) {
	c.downMu.Lock()
	c.down[id] = time.Now().Add(5 * time.Second)
	c.downMu.Unlock()
}

// try runs fn on each owner in turn until one succeeds or fails with an
// error of the UFS itself (which another worker would only repeat).
func (c *Client) try(ctx context.Context, owners []placement.Member, fn func(context.Context, placement.Member) error) error {
	var errs []error
	for i, m := range owners {
		if i > 0 {
			c.retries.Add(1)
		}
		rctx, cancel := context.WithTimeout(ctx, c.timeout)
		err := fn(rctx, m)
		cancel()
		if err == nil || !workerFault(err) || ctx.Err() != nil {
			return err
		}
		slog.Debug("worker failed; trying the next owner", "worker", m.ID, "err", err)
		c.markDown(m.ID)
		errs = append(errs, fmt.Errorf("worker %s: %w", m.ID, err))
	}
	if len(errs) == 0 {
		return fmt.Errorf("%w: no workers in the membership", wire.ErrWorker)
	}
	return fmt.Errorf("%w: %w", errAllOwnersFailed, errors.Join(errs...))
}

var errAllOwnersFailed = errors.New("every owner failed")

// workerFault reports an error of the worker or the network rather than of
// the UFS behind it.
func workerFault(err error) bool {
	if errors.Is(err, wire.ErrWorker) {
		return true
	}
	var ue *ufs.Error
	if errors.As(err, &ue) {
		return ue.Class == ufs.ClassRetryable || ue.Class == ufs.ClassCanceled
	}
	return true // transport errors, timeouts
}

// get sends a GET to a worker and returns the response when it is a
// success; otherwise the error it carries.
func (c *Client) get(ctx context.Context, m placement.Member, path string, q url.Values, hdr http.Header, op, ds, name string) (*http.Response, error) {
	hc, base := c.http, "http://"+m.Addr
	return c.send(ctx, hc, http.MethodGet, base+path+"?"+q.Encode(), hdr, op, ds, name)
}

func (c *Client) send(ctx context.Context, hc *http.Client, method, u string, hdr http.Header, op, ds, name string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, u, nil)
	if err != nil {
		return nil, err
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode/100 != 2 {
		defer resp.Body.Close()
		return nil, wire.ReadError(op, ds, name, resp)
	}
	return resp, nil
}

// source is the metadata of one dataset as the owning workers serve it.
type source struct {
	c  *Client
	ds config.Dataset
}

// Stat implements meta.Source.
func (s source) Stat(ctx context.Context, name string) (ufs.FileInfo, error) {
	var fi ufs.FileInfo
	q := url.Values{"ds": {s.ds.Name}, "path": {name}}
	err := s.c.try(ctx, s.c.owners(wire.MetaKey(s.ds.Name, meta.Parent(name)), s.ds.Replicas), func(ctx context.Context, m placement.Member) error {
		resp, err := s.c.get(ctx, m, wire.PathStat, q, nil, "stat", s.ds.Name, name)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		var w wire.FileInfo
		if err := decodeJSON(resp.Body, &w); err != nil {
			return err
		}
		fi = w.Info()
		return nil
	})
	if err != nil && s.ds.Fallback == config.FallbackUFS && errors.Is(err, errAllOwnersFailed) {
		return s.c.fallbackStat(ctx, s.ds, name)
	}
	return fi, err
}

// List implements meta.Source, streaming the owner's listing in pages.
func (s source) List(ctx context.Context, dir string) iter.Seq2[[]ufs.FileInfo, error] {
	return func(yield func([]ufs.FileInfo, error) bool) {
		var all []ufs.FileInfo
		q := url.Values{"ds": {s.ds.Name}, "path": {dir}}
		err := s.c.try(ctx, s.c.owners(wire.MetaKey(s.ds.Name, dir), s.ds.Replicas), func(ctx context.Context, m placement.Member) error {
			all = all[:0]
			resp, err := s.c.get(ctx, m, wire.PathList, q, nil, "list", s.ds.Name, dir)
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			dec := jsonLines(resp.Body)
			for {
				var w wire.FileInfo
				if err := dec.Decode(&w); err == io.EOF {
					return nil
				} else if err != nil {
					return fmt.Errorf("%w: listing of /%s/%s cut short: %v", wire.ErrWorker, s.ds.Name, dir, err)
				}
				all = append(all, w.Info())
			}
		})
		if err != nil && s.ds.Fallback == config.FallbackUFS && errors.Is(err, errAllOwnersFailed) {
			for page, err := range s.c.fallbackList(ctx, s.ds, dir) {
				if !yield(page, err) {
					return
				}
			}
			return
		}
		if err != nil {
			yield(nil, err)
			return
		}
		yield(all, nil)
	}
}
