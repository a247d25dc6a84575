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
	"iter"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/granary-cache/granary/internal/cache"
	"github.com/granary-cache/granary/internal/config"
	"github.com/granary-cache/granary/internal/dataset"
	"github.com/granary-cache/granary/internal/membership"
	"github.com/granary-cache/granary/internal/meta"
	"github.com/granary-cache/granary/internal/placement"
	"github.com/granary-cache/granary/internal/transport"
	"github.com/granary-cache/granary/internal/ufs"
	"github.com/granary-cache/granary/internal/wire"
)

// Stats counts how a client's reads were served.
type Stats struct {
	RemoteReads       int64 `json:"remote_reads"`        // block reads over HTTP
	ShortCircuitReads int64 `json:"short_circuit_reads"` // block reads from a local block file
	FallbackReads     int64 `json:"fallback_reads"`      // reads sent straight to the UFS
	Retries           int64 `json:"retries"`             // requests moved to the next owner
	// NearReads are the short-circuit reads of a near copy (near_cache).
	NearReads int64 `json:"near_reads"`
	// FallbackByDataset splits FallbackReads by dataset.
	FallbackByDataset map[string]int64 `json:"fallback_by_dataset,omitempty"`
}

// Client reads datasets through the workers. It is safe for concurrent use.
type Client struct {
	cfg      *config.Config
	layout   cache.Layout
	members  membership.Source
	reach    *membership.Reach
	host     string
	sockets  localSockets // the workers on this host
	token    string
	scheme   string // http or https
	timeout  time.Duration
	seed     uint64 // spreads this client's reads over a key's replicas
	datasets map[string]config.Dataset
	metas    map[string]*meta.Cache

	http   *http.Client
	blocks transport.Reader // block reads from remote workers
	// localFrames asks the workers on this host for their block files over
	// their unix sockets (nil with client.protocol http: over HTTP).
	localFrames *transport.Framed
	local       *localBlocks

	fallbacks    map[string]*fallback // by dataset
	fallbackOnce sync.Once
	ufs          *dataset.Set
	ufsErr       error

	near nearState

	readHook atomic.Pointer[func(dataset string)] // see SetReadHook

	remote, short, retries, nearReads atomic.Int64
}

// New builds a client from the configuration's datasets, membership and
// client sections. With etcd membership it fails, saying so, when etcd does
// not answer within membership.dial_timeout.
func New(cfg *config.Config) (*Client, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(cfg.Membership.DialTimeout)+time.Minute)
	defer cancel()
	src, err := membership.Open(ctx, cfg, nil, slog.Default())
	if err != nil {
		return nil, err
	}
	return NewWithMembership(cfg, src), nil
}

// NewWithMembership builds a client that learns the workers from src, which
// it closes when it closes.
func NewWithMembership(cfg *config.Config, src membership.Source) *Client {
	connect := time.Duration(cfg.Client.ConnectTimeout)
	if connect <= 0 {
		connect = time.Duration(config.DefaultConnect)
	}
	ht := http.DefaultTransport.(*http.Transport).Clone()
	ht.MaxIdleConnsPerHost = 256
	ht.MaxIdleConns = 1024
	ht.DialContext = (&net.Dialer{Timeout: connect, KeepAlive: 30 * time.Second}).DialContext
	ht.TLSClientConfig = cfg.Auth.TLS.ClientConfig()
	ht.TLSHandshakeTimeout = connect + time.Second
	c := &Client{
		cfg: cfg, members: src, token: cfg.Auth.Token, timeout: time.Duration(cfg.Client.Timeout), host: cfg.Client.Host,
		scheme:   "http",
		layout:   cache.Layout{BlockSize: int64(cfg.Worker.BlockSize), PageSize: int64(cfg.Worker.PageSize)},
		datasets: map[string]config.Dataset{}, metas: map[string]*meta.Cache{},
		http:      &http.Client{Transport: ht},
		local:     newLocalBlocks(512),
		fallbacks: map[string]*fallback{},
		seed:      rand.Uint64(),
	}
	if cfg.Auth.TLS.Enabled() {
		c.scheme = "https"
	}
	topts := transport.Options{Token: cfg.Auth.Token, TLS: cfg.Auth.TLS.ClientConfig(), ConnectTimeout: connect}
	if cfg.Client.Protocol == config.ProtocolHTTP {
		c.blocks = transport.NewHTTP(topts)
	} else {
		c.blocks = transport.NewFramed(topts)
		c.localFrames = transport.NewFramed(transport.Options{Token: cfg.Auth.Token, ConnectTimeout: connect})
	}
	c.reach = &membership.Reach{
		ProbeAfter: time.Duration(cfg.Client.ProbeAfter), ProbeTimeout: connect,
		Probe: c.ping,
		OnDown: func(id, addr string, err error) {
			slog.Warn("worker marked down; reading from the next owner", "worker", id, "err", err)
			// Its connections may hang (a partition): the next read after
			// it answers again opens new ones rather than waiting on them.
			c.blocks.Drop(addr)
		},
	}
	for _, ds := range cfg.Datasets {
		c.datasets[ds.Name] = ds
		c.metas[ds.Name] = meta.New(ds.Name, ds.MetadataSync.Interval)
		c.fallbacks[ds.Name] = newFallback(cfg.Client.FallbackReadsPerSecond)
	}
	return c
}

// SetReadHook has every Open and read of a dataset's file call fn with
// the dataset's name (a prefetcher's Touch). fn must be cheap.
func (c *Client) SetReadHook(fn func(dataset string)) { c.readHook.Store(&fn) }

// touched calls the read hook.
func (c *Client) touched(dataset string) {
	if fn := c.readHook.Load(); fn != nil {
		(*fn)(dataset)
	}
}

// Close releases connections and open block files.
func (c *Client) Close() error {
	c.reach.Close()
	c.http.CloseIdleConnections()
	c.blocks.Close()
	if c.localFrames != nil {
		c.localFrames.Close()
	}
	c.sockets.closeAll()
	c.local.closeAll()
	if c.ufs != nil {
		c.ufs.Close()
	}
	return c.members.Close()
}

// Stats returns how reads were served so far.
func (c *Client) Stats() Stats {
	st := Stats{RemoteReads: c.remote.Load(), ShortCircuitReads: c.short.Load(), Retries: c.retries.Load(), NearReads: c.nearReads.Load(), FallbackByDataset: map[string]int64{}}
	for name, fb := range c.fallbacks {
		n := fb.reads.Load()
		st.FallbackReads += n
		st.FallbackByDataset[name] = n
	}
	return st
}

// Membership is where the client learns who the workers are.
func (c *Client) Membership() membership.Source { return c.members }

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

// Dataset returns a configured dataset.
func (c *Client) Dataset(name string) (config.Dataset, bool) {
	ds, ok := c.datasets[name]
	return ds, ok
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

// owners returns the workers to try for key, best first: the dataset's
// replicas, spread so that each client reads a key from one of them (its
// own choice, the same every time), then one more owner; workers marked
// down go last.
func (c *Client) owners(key string, replicas int) []placement.Member {
	replicas = max(replicas, 1)
	var buf [maxReplicas + 1]placement.Member
	all := c.members.Current().Owners(buf[:0], key, min(replicas, maxReplicas)+1)
	if r := min(replicas, len(all)); r > 1 {
		// Rotate the replicas by a hash of the key and this client's seed.
		k := int(mix64(hashKey(key)^c.seed) % uint64(r))
		slices.Reverse(all[:k])
		slices.Reverse(all[k:r])
		slices.Reverse(all[:r])
	}
	// Workers marked down go last, in their order (one look at Reach each:
	// this is on every read).
	out := make([]placement.Member, 0, len(all))
	var down []placement.Member
	for _, m := range all {
		if c.reach.Down(m.ID) {
			down = append(down, m)
		} else {
			out = append(out, m)
		}
	}
	return append(out, down...)
}

// maxReplicas bounds the owners a read considers.
const maxReplicas = 15

// mix64 spreads every bit of x over the result (splitmix64's finaliser):
// without it, the choice among two replicas would depend on one bit of the
// seed and of the key's hash.
func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	return x ^ x>>31
}

func hashKey(s string) uint64 {
	h := uint64(14695981039346656037)
	for i := range len(s) {
		h = (h ^ uint64(s[i])) * 1099511628211
	}
	return h
}

// try runs fn on each owner in turn until one succeeds or fails with an
// error of the UFS itself (which another worker would only repeat). Each
// call runs under Reach's guard: a worker that does not answer a probe is
// marked down for every reader of this client, and the calls in flight to
// it move on at once.
func (c *Client) try(ctx context.Context, owners []placement.Member, fn func(context.Context, placement.Member) error) error {
	var errs []error
	for i, m := range owners {
		if i > 0 {
			c.retries.Add(1)
		}
		tctx, cancel := context.WithTimeout(ctx, c.timeout)
		rctx, done := c.reach.Guard(tctx, m.ID, m.Addr)
		err := fn(rctx, m)
		down := membership.ErrMarkedDown(rctx)
		done()
		cancel()
		if err == nil || ctx.Err() != nil || (!down && !workerFault(err)) {
			return err
		}
		if down {
			err = fmt.Errorf("%w: %s did not answer a probe", wire.ErrWorker, m.Addr)
		}
		slog.Debug("worker failed; trying the next owner", "worker", m.ID, "err", err)
		if !wire.Answered(err) {
			// No answer at all (refused, reset, timed out): read around it
			// until it answers again. A worker that answered with an error
			// (busy, its UFS throttling) is only passed over this once.
			c.reach.MarkDown(m.ID, m.Addr, err)
		}
		errs = append(errs, fmt.Errorf("worker %s: %w", m.ID, err))
	}
	if len(errs) == 0 {
		return fmt.Errorf("%w: %w: no live workers in the membership", errAllOwnersFailed, wire.ErrWorker)
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

// ping checks that a worker answers (Reach's probe): a small request on
// the data endpoint, through the same transport as reads.
func (c *Client) ping(ctx context.Context, _, addr string) error {
	resp, err := c.send(ctx, c.http, http.MethodGet, c.url(addr, wire.PathPing), nil, "ping", "", "")
	if err != nil {
		return err
	}
	resp.Body.Close()
	return nil
}

// url is the URL of a path on a worker's data endpoint.
func (c *Client) url(addr, path string) string { return c.scheme + "://" + addr + path }

// get sends a GET to a worker and returns the response when it is a
// success; otherwise the error it carries.
func (c *Client) get(ctx context.Context, m placement.Member, path string, q url.Values, hdr http.Header, op, ds, name string) (*http.Response, error) {
	return c.send(ctx, c.http, http.MethodGet, c.url(m.Addr, path)+"?"+q.Encode(), hdr, op, ds, name)
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
			resp, err := s.c.get(ctx, m, wire.PathList, q, nil, "list", s.ds.Name, dir)
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			if all, err = wire.ReadListing(resp.Body); err != nil {
				return fmt.Errorf("/%s/%s: %w", s.ds.Name, dir, err)
			}
			return nil
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
