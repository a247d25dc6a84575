package cephstat_test

import (
	"bufio"
	"context"
	"encoding/binary"
	"net"
	"path/filepath"
	"strings"
	"testing"

	"github.com/granary-cache/granary/internal/cephstat"
	"github.com/granary-cache/granary/internal/cephtest"
)

// fakeSocket answers admin-socket commands from answers, by prefix.
func fakeSocket(t *testing.T, answers map[string]string) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "x.asok")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			req, err := bufio.NewReader(c).ReadString(0)
			if err != nil {
				c.Close()
				continue
			}
			out := "ERROR: unknown command"
			for prefix, a := range answers {
				if strings.Contains(req, `"prefix":"`+prefix+`"`) {
					out = a
				}
			}
			var n [4]byte
			binary.BigEndian.PutUint32(n[:], uint32(len(out)))
			c.Write(append(n[:], out...))
			c.Close()
		}
	}()
	return sock
}

func TestReadMDSAndSince(t *testing.T) {
	perf := func(req string) string {
		return `{"mds": {"request": ` + req + `}, "mds_server": {"req_lookup_latency": {"avgcount": ` + req + `, "sum": 0.1}, "handle_client_request": 3}}`
	}
	ctx := context.Background()
	before, err := cephstat.ReadMDS(ctx, fakeSocket(t, map[string]string{"perf dump": perf("10"), "session ls": `[{"id": 1, "num_caps": 5}]`}))
	if err != nil {
		t.Fatal(err)
	}
	after, err := cephstat.ReadMDS(ctx, fakeSocket(t, map[string]string{"perf dump": perf("17"),
		"session ls": `[{"id": 1, "num_caps": 2}, {"id": 4, "num_caps": 40, "client_metadata": {"hostname": "gpu1", "pid": "99"}}]`}))
	if err != nil {
		t.Fatal(err)
	}
	d := after.Since(before)
	if d.Requests != 7 || d.ByOp["lookup"] != 7 || len(d.ByOp) != 1 {
		t.Errorf("requests %v by op %v; want 7, lookup 7", d.Requests, d.ByOp)
	}
	if len(d.Sessions) != 1 || d.Sessions[0] != (cephstat.Session{ID: 4, Caps: 40, Host: "gpu1", PID: "99"}) {
		t.Errorf("new sessions %+v; want the one with id 4", d.Sessions)
	}
	if after.Caps() != 42 {
		t.Errorf("caps %d; want 42", after.Caps())
	}
}

func TestCommandErrors(t *testing.T) {
	ctx := context.Background()
	missing := filepath.Join(t.TempDir(), "none.asok")
	if _, err := cephstat.ReadMDS(ctx, missing); err == nil || !strings.Contains(err.Error(), missing) {
		t.Errorf("missing socket: %v; want an error naming it", err)
	}
	sock := fakeSocket(t, map[string]string{"perf dump": `{"osd": {"op_r": 3, "op_r_out_bytes": 300}}`})
	if _, err := cephstat.ReadMDS(ctx, sock); err == nil || !strings.Contains(err.Error(), "session ls") {
		t.Errorf("unknown command: %v; want an error naming it", err)
	}
	osd, err := cephstat.ReadOSD(ctx, sock)
	if err != nil || osd != (cephstat.OSD{Reads: 3, ReadBytes: 300}) {
		t.Errorf("ReadOSD = %+v, %v", osd, err)
	}
	garbled := fakeSocket(t, map[string]string{"perf dump": `{"mds": [`})
	if _, err := cephstat.ReadMDS(ctx, garbled); err == nil {
		t.Error("a garbled answer was accepted")
	}
}

// TestRealCluster reads the test cluster's MDS and OSD.
func TestRealCluster(t *testing.T) {
	dir := cephtest.Dir(t)
	ctx := context.Background()
	m, err := cephstat.ReadMDS(ctx, filepath.Join(dir, "run", "ceph-mds.a.asok"))
	if err != nil {
		t.Fatal(err)
	}
	if m.Requests <= 0 {
		t.Errorf("the MDS reports %v requests; a file system was created, so want some", m.Requests)
	}
	if _, err := cephstat.ReadOSD(ctx, filepath.Join(dir, "run", "ceph-osd.0.asok")); err != nil {
		t.Fatal(err)
	}
}
