package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
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
			if ws.Status == nil || ws.Error != "" {
				return sum, fmt.Errorf("worker %s at %s: %s", ws.ID, ws.Addr, ws.Error)
			}
			for _, d := range ws.Status.Datasets {
				sum = sum.Add(d.UFS)
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
	found := 0
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
		if len(f) < 15 {
			continue
		}
		// utime, stime, and cutime, cstime: a mount server the supervisor
		// restarted and reaped still counts.
		for _, v := range f[11:15] {
			n, _ := strconv.ParseInt(v, 10, 64)
			ticks += n
		}
		found++
	}
	if found == 0 {
		return 0, errors.New("no granary process runs on this machine (workers elsewhere are not counted)")
	}
	return time.Duration(ticks) * time.Second / 100, nil // USER_HZ is 100 on Linux
}
