package load

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/granary-cache/granary/internal/client"
	"github.com/granary-cache/granary/internal/membership"
	"github.com/granary-cache/granary/internal/placement"
	"github.com/granary-cache/granary/internal/wire"
)

// Summary is one load as the cluster remembers it: its client's latest
// figures, and each worker's share.
type Summary struct {
	wire.LoadHeader
	State   string            `json:"state"`
	Workers []wire.LoadRecord `json:"workers"`
	Missing map[string]string `json:"unanswered,omitempty"` // workers that did not answer
}

// quiet is how long a load may go without a batch before, if its client
// never said how it ended, it counts as interrupted.
const quiet = 30 * time.Second

// List returns the running and recent loads that the live workers
// remember, newest first. It works from any machine that reaches the
// workers: it asks them, not the process that ran the load.
func List(ctx context.Context, c *client.Client) ([]Summary, map[string]error) {
	var mu sync.Mutex
	byID := map[string]*Summary{}
	failed := map[string]error{}
	var wg sync.WaitGroup
	for _, m := range c.Membership().Current().Members() {
		if m.State == membership.NotLive {
			continue
		}
		wg.Go(func() {
			recs, err := records(ctx, c, placement.Member{ID: m.ID, Addr: m.Addr})
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				failed[m.ID] = err
				return
			}
			for _, rec := range recs {
				s := byID[rec.ID]
				if s == nil {
					s = &Summary{LoadHeader: rec.LoadHeader}
					byID[rec.ID] = s
				}
				if rec.Progress.Updated.After(s.Progress.Updated) {
					s.LoadHeader = rec.LoadHeader
				}
				s.Workers = append(s.Workers, rec)
			}
		})
	}
	wg.Wait()
	out := make([]Summary, 0, len(byID))
	for _, s := range byID {
		s.State = summaryState(s)
		slices.SortFunc(s.Workers, func(a, b wire.LoadRecord) int { return strings.Compare(a.Worker, b.Worker) })
		out = append(out, *s)
	}
	slices.SortFunc(out, func(a, b Summary) int { return b.Started.Compare(a.Started) })
	return out, failed
}

// summaryState decides a load's state from its workers' records.
func summaryState(s *Summary) string {
	var last time.Time
	for _, w := range s.Workers {
		if w.Ended {
			return w.Progress.State
		}
		if w.Active > 0 {
			return s.Progress.State
		}
		if w.LastBatch.After(last) {
			last = w.LastBatch
		}
	}
	if time.Since(last) > quiet {
		return wire.LoadInterrupted
	}
	return s.Progress.State
}

func records(ctx context.Context, c *client.Client, m placement.Member) ([]wire.LoadRecord, error) {
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	resp, err := c.Do(rctx, m, http.MethodGet, wire.PathLoads, nil, nil)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var recs []wire.LoadRecord
	if err := json.NewDecoder(io.LimitReader(resp.Body, 16<<20)).Decode(&recs); err != nil {
		return nil, fmt.Errorf("worker %s: malformed load records: %w", m.ID, err)
	}
	return recs, nil
}
