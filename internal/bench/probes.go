package bench

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/granary-cache/granary/internal/cephstat"
	"github.com/granary-cache/granary/internal/client"
	"github.com/granary-cache/granary/internal/ufs"
)

// WorkersUFS sums the UFS operations every worker of c reports, over all
// datasets. A worker that does not answer makes it fail: a partial sum
// would look like a saving.
func WorkersUFS(c *client.Client) func(ctx context.Context) (ufs.Stats, error) {
	return func(ctx context.Context) (ufs.Stats, error) {
		var sum ufs.Stats
		for _, ws := range c.Status(ctx) {
			if ws.Status == nil {
				return sum, &os.PathError{Op: "status", Path: ws.ID, Err: os.ErrNotExist}
			}
			for _, d := range ws.Status.Datasets {
				sum.Stat += d.UFS.Stat
				sum.List += d.UFS.List
				sum.Read += d.UFS.Read
				sum.BytesRead += d.UFS.BytesRead
				sum.Errors += d.UFS.Errors
			}
		}
		return sum, nil
	}
}

// MDSRequests reads the request counter of the MDS at asok.
func MDSRequests(asok string) func(ctx context.Context) (float64, error) {
	return func(ctx context.Context) (float64, error) {
		m, err := cephstat.ReadMDS(ctx, asok)
		return m.Requests, err
	}
}

// GranaryCPU sums the CPU time of the processes of this machine whose
// executable is named granary* (workers, mounts), this one excepted.
func GranaryCPU() (time.Duration, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return 0, err
	}
	self := os.Getpid()
	var ticks int64
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		cmd, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || len(cmd) == 0 {
			continue
		}
		exe, _, _ := bytes.Cut(cmd, []byte{0})
		if !strings.HasPrefix(filepath.Base(string(exe)), "granary") {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// Fields after the command (which may hold spaces), from field 3:
		// utime and stime are fields 14 and 15.
		i := bytes.LastIndexByte(stat, ')')
		f := strings.Fields(string(stat[i+1:]))
		if len(f) < 13 {
			continue
		}
		u, _ := strconv.ParseInt(f[11], 10, 64)
		s, _ := strconv.ParseInt(f[12], 10, 64)
		ticks += u + s
	}
	return time.Duration(ticks) * time.Second / 100, nil // USER_HZ is 100 on Linux
}
