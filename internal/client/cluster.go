package client

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"

	"github.com/granary-cache/granary/internal/membership"
	"github.com/granary-cache/granary/internal/ufs"
	"github.com/granary-cache/granary/internal/wire"
)

// Refresh forgets cached metadata of a namespace path and below, here and on
// every live worker, so the next access fetches it from the UFS again.
func (c *Client) Refresh(ctx context.Context, p string) error {
	ds, rel, err := c.resolve(p)
	if err != nil {
		return err
	}
	c.metas[ds.Name].Invalidate(rel)
	var errs []error
	q := "?ds=" + urlEscape(ds.Name) + "&path=" + urlEscape(rel)
	for _, m := range c.members.Current().Members() {
		if m.State == membership.NotLive {
			continue
		}
		rctx, cancel := context.WithTimeout(ctx, c.timeout)
		resp, err := c.send(rctx, c.http, http.MethodPost, c.url(m.Addr, wire.PathRefresh)+q, nil, "refresh", ds.Name, rel)
		cancel()
		if err != nil {
			errs = append(errs, fmt.Errorf("worker %s: %w", m.ID, err))
			continue
		}
		resp.Body.Close()
	}
	return errors.Join(errs...)
}

// Status asks every member that membership says is up for its status; a
// member that cannot answer is reported with its error, and one that is
// not live with its state alone.
func (c *Client) Status(ctx context.Context) []WorkerStatus {
	members := c.members.Current().Members()
	out := make([]WorkerStatus, len(members))
	var wg sync.WaitGroup
	for i, m := range members {
		out[i].Member = m
		out[i].ID, out[i].Addr = m.ID, m.Addr
		if m.State == membership.NotLive {
			continue
		}
		wg.Go(func() {
			rctx, cancel := context.WithTimeout(ctx, c.timeout)
			defer cancel()
			resp, err := c.send(rctx, c.http, http.MethodGet, c.url(m.Addr, wire.PathStatus), nil, "status", "", "")
			if err != nil {
				out[i].Error = err.Error()
				return
			}
			defer resp.Body.Close()
			out[i].Status = &wire.Status{}
			if err := decodeJSON(resp.Body, out[i].Status); err != nil {
				out[i].Error = err.Error()
			}
		})
	}
	wg.Wait()
	return out
}

// WorkerStatus is one member's answer to Status.
type WorkerStatus struct {
	ID     string            `json:"id"`
	Addr   string            `json:"addr"`
	Member membership.Member `json:"member"`
	Error  string            `json:"error,omitempty"`
	Status *wire.Status      `json:"status,omitempty"`
}

// ClusterStatus is the whole cluster as any client sees it: who the members
// are and how each is doing, and per dataset its size on the UFS, what is
// cached of it and what it cost the UFS.
type ClusterStatus struct {
	Membership membership.Health `json:"membership"`
	Members    []WorkerStatus    `json:"members"`
	Datasets   []DatasetStatus   `json:"datasets"`
}

// DatasetStatus is one dataset over the whole cluster.
type DatasetStatus struct {
	Name     string `json:"name"`
	UFS      string `json:"ufs"`
	Replicas int    `json:"replicas"`
	// Usage is the dataset's size on the UFS as measured so far (see
	// Usage.Complete); nil when the worker that measures it did not answer.
	Usage *wire.UFSUsage `json:"ufs_usage,omitempty"`
	// CachedBytes sums what the workers hold as owners; CachedPercent is
	// it over the UFS size times the replicas (capped at 100), or -1 while
	// the size is not known.
	CachedBytes   int64     `json:"cached_bytes"`
	CachedPercent float64   `json:"cached_percent"`
	Operations    ufs.Stats `json:"ufs_operations"`
}

// ClusterStatus asks every member for its status and sums the datasets.
func (c *Client) ClusterStatus(ctx context.Context) ClusterStatus {
	st := ClusterStatus{Membership: c.members.Health(), Members: c.Status(ctx)}
	for _, name := range c.Datasets() {
		cfg := c.datasets[name]
		ds := DatasetStatus{Name: name, UFS: cfg.UFS, Replicas: max(cfg.Replicas, 1)}
		var total wire.DatasetTotal
		for _, w := range st.Members {
			if w.Status == nil {
				continue
			}
			d := w.Status.Datasets[name]
			total.Add(wire.DatasetFigures{CachedBytes: d.CachedBytes, Usage: d.Usage})
			ds.Operations = ds.Operations.Add(d.UFS)
		}
		total.Finish(ds.Replicas)
		ds.Usage, ds.CachedBytes, ds.CachedPercent = total.Usage, total.CachedBytes, total.CachedPercent
		st.Datasets = append(st.Datasets, ds)
	}
	return st
}
