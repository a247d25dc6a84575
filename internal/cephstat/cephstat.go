// Package cephstat reads what a workload costs a Ceph cluster from its
// daemons' admin sockets: the MDS's client requests (by operation), its
// client sessions and the capabilities each holds, and the OSD's reads.
// It speaks the admin-socket protocol itself, so it needs no ceph CLI.
package cephstat

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"strings"
	"time"
)

// Command sends one command (such as "perf dump") to the admin socket at
// asok and returns its JSON answer.
func Command(ctx context.Context, asok, prefix string) ([]byte, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", asok)
	if err != nil {
		return nil, fmt.Errorf("admin socket %s: %w", asok, err)
	}
	defer c.Close()
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(30 * time.Second)
	}
	c.SetDeadline(deadline)
	req, _ := json.Marshal(map[string]string{"prefix": prefix, "format": "json"})
	// A request ends with a NUL; the answer is a 4-byte big-endian length
	// and that many bytes.
	if _, err := c.Write(append(req, 0)); err != nil {
		return nil, fmt.Errorf("admin socket %s: %s: %w", asok, prefix, err)
	}
	var n [4]byte
	if _, err := io.ReadFull(c, n[:]); err != nil {
		return nil, fmt.Errorf("admin socket %s: %s: %w", asok, prefix, err)
	}
	size := binary.BigEndian.Uint32(n[:])
	if size > 256<<20 {
		return nil, fmt.Errorf("admin socket %s: %s: an answer of %d bytes", asok, prefix, size)
	}
	out := make([]byte, size)
	if _, err := io.ReadFull(c, out); err != nil {
		return nil, fmt.Errorf("admin socket %s: %s: %w", asok, prefix, err)
	}
	if s := strings.TrimSpace(string(out)); strings.HasPrefix(s, "ERROR") {
		return nil, fmt.Errorf("admin socket %s: %s: %s", asok, prefix, s)
	}
	return out, nil
}

// MDS is a snapshot of an MDS's counters.
type MDS struct {
	// Requests is every client metadata request (mds.request).
	Requests float64 `json:"requests"`
	// ByOp counts requests by operation (lookup, getattr, readdir, open...).
	ByOp map[string]float64 `json:"by_op,omitempty"`
	// Sessions are the clients with a session now.
	Sessions []Session `json:"sessions"`
}

// Session is one client's session on the MDS.
type Session struct {
	ID   int64  `json:"id"`
	Caps int    `json:"caps"`
	Host string `json:"host,omitempty"`
	PID  string `json:"pid,omitempty"`
}

// Caps is the capabilities held by every session.
func (m MDS) Caps() int {
	n := 0
	for _, s := range m.Sessions {
		n += s.Caps
	}
	return n
}

// Since is what happened between an earlier snapshot and m: request counts
// are differences, sessions are m's that were not in before.
func (m MDS) Since(before MDS) MDS {
	d := MDS{Requests: m.Requests - before.Requests, ByOp: map[string]float64{}}
	for op, n := range m.ByOp {
		if n -= before.ByOp[op]; n != 0 {
			d.ByOp[op] = n
		}
	}
	old := map[int64]bool{}
	for _, s := range before.Sessions {
		old[s.ID] = true
	}
	for _, s := range m.Sessions {
		if !old[s.ID] {
			d.Sessions = append(d.Sessions, s)
		}
	}
	return d
}

// ReadMDS reads the MDS whose admin socket is asok
// (for example /var/run/ceph/ceph-mds.a.asok).
func ReadMDS(ctx context.Context, asok string) (MDS, error) {
	out, err := Command(ctx, asok, "perf dump")
	if err != nil {
		return MDS{}, err
	}
	var perf struct {
		MDS struct {
			Request float64 `json:"request"`
		} `json:"mds"`
		Server map[string]json.RawMessage `json:"mds_server"`
	}
	if err := json.Unmarshal(out, &perf); err != nil {
		return MDS{}, fmt.Errorf("admin socket %s: perf dump: %w", asok, err)
	}
	m := MDS{Requests: perf.MDS.Request, ByOp: map[string]float64{}}
	for k, raw := range perf.Server {
		op, ok := strings.CutPrefix(k, "req_")
		if op, ok2 := strings.CutSuffix(op, "_latency"); ok && ok2 {
			var lat struct {
				Count float64 `json:"avgcount"`
			}
			if json.Unmarshal(raw, &lat) == nil && lat.Count > 0 {
				m.ByOp[op] = lat.Count
			}
		}
	}
	out, err = Command(ctx, asok, "session ls")
	if err != nil {
		return MDS{}, err
	}
	var ls []struct {
		ID       int64 `json:"id"`
		NumCaps  int   `json:"num_caps"`
		Metadata struct {
			Host string `json:"hostname"`
			PID  string `json:"pid"`
		} `json:"client_metadata"`
	}
	if err := json.Unmarshal(out, &ls); err != nil {
		return MDS{}, fmt.Errorf("admin socket %s: session ls: %w", asok, err)
	}
	for _, s := range ls {
		m.Sessions = append(m.Sessions, Session{ID: s.ID, Caps: s.NumCaps, Host: s.Metadata.Host, PID: s.Metadata.PID})
	}
	return m, nil
}

// OSD is a snapshot of an OSD's client read counters.
type OSD struct {
	Reads     float64 `json:"reads"`      // osd.op_r
	ReadBytes float64 `json:"read_bytes"` // osd.op_r_out_bytes
}

// Since is the difference from an earlier snapshot.
func (o OSD) Since(before OSD) OSD {
	return OSD{Reads: o.Reads - before.Reads, ReadBytes: o.ReadBytes - before.ReadBytes}
}

// ReadOSD reads the OSD whose admin socket is asok.
func ReadOSD(ctx context.Context, asok string) (OSD, error) {
	out, err := Command(ctx, asok, "perf dump")
	if err != nil {
		return OSD{}, err
	}
	var perf struct {
		OSD struct {
			OpR         float64 `json:"op_r"`
			OpROutBytes float64 `json:"op_r_out_bytes"`
		} `json:"osd"`
	}
	if err := json.Unmarshal(out, &perf); err != nil {
		return OSD{}, fmt.Errorf("admin socket %s: perf dump: %w", asok, err)
	}
	return OSD{Reads: perf.OSD.OpR, ReadBytes: perf.OSD.OpROutBytes}, nil
}
