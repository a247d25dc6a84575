package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/granary-cache/granary/examples/demo"
	"github.com/granary-cache/granary/internal/cephstat"
	"github.com/granary-cache/granary/internal/client"
	"github.com/granary-cache/granary/internal/config"
	"github.com/granary-cache/granary/internal/localcluster"
	"github.com/granary-cache/granary/internal/membership"
	"github.com/granary-cache/granary/internal/worker"
)

func newWorkerCmd(g *globals) *cobra.Command {
	var over config.Worker
	cmd := &cobra.Command{
		Use:   "worker --config FILE",
		Short: "Run a cache worker: serve the configured datasets from its tiers",
		Long: `worker serves the configured datasets from its tiers. The flags override the
worker section of the configuration, for what differs between the workers that
share one file (a Kubernetes DaemonSet passes its node's name and its pod's
address).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := g.loadConfig()
			if err != nil {
				return err
			}
			if err := overrideWorker(cfg, over); err != nil {
				return err
			}
			if len(cfg.Datasets) == 0 {
				return errors.New("no datasets: give --config FILE or --dataset NAME=URI")
			}
			w, err := worker.New(cfg, slog.Default())
			if err != nil {
				return err
			}
			return w.Serve(cmd.Context())
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&over.ID, "id", "", "worker.id: the worker's name in the membership")
	fl.StringVar(&over.Listen, "listen", "", "worker.listen: the data endpoint, host:port")
	fl.StringVar(&over.Admin, "admin", "", "worker.admin: metrics, health and status, host:port")
	fl.StringVar(&over.Advertise, "advertise", "", "worker.advertise: the data address others dial")
	fl.StringVar(&over.Host, "host", "", "worker.host: the machine the worker runs on")
	fl.StringVar(&over.Zone, "zone", "", "worker.zone: its failure domain")
	return cmd
}

// overrideWorker applies the worker command's flags to the configuration
// and checks it again, so that a bad flag gets the same clear error as a bad
// line of the file.
func overrideWorker(cfg *config.Config, over config.Worker) error {
	w := &cfg.Worker
	for _, f := range []struct {
		dst *string
		v   string
	}{{&w.ID, over.ID}, {&w.Listen, over.Listen}, {&w.Admin, over.Admin},
		{&w.Advertise, over.Advertise}, {&w.Host, over.Host}, {&w.Zone, over.Zone}} {
		if f.v != "" {
			*f.dst = f.v
		}
	}
	return cfg.Recheck()
}

type upFlags struct {
	workers            int
	stateDir, memDir   string
	memQuota, ssdQuota string
	check              bool
	mount              string
	mountFlags         mountFlags
}

func newUpCmd(g *globals) *cobra.Command {
	var f upFlags
	cmd := &cobra.Command{
		Use:   "up [--dataset NAME=URI]... [--workers N]",
		Short: "Bring up a complete cache on this machine (the bundled demo dataset when none is given)",
		Long: `up starts cache workers on loopback, each with a MEM tier (tmpfs) and an SSD
tier under the state directory, writes a client configuration next to them and
prints how to read through them. It runs until interrupted.

With --check it instead reads every file of every dataset through the cache
twice, prints what the UFS was asked in each pass, and exits.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return g.up(cmd.Context(), f) },
	}
	fl := cmd.Flags()
	fl.IntVarP(&f.workers, "workers", "n", 1, "number of workers")
	fl.StringVar(&f.stateDir, "state-dir", defaultStateDir(), "where the workers keep their SSD tiers, sockets and the client config")
	fl.StringVar(&f.memDir, "mem-dir", config.DefaultMemPath, "tmpfs directory for the MEM tiers")
	fl.StringVar(&f.memQuota, "mem", "1GiB", "MEM tier quota per worker (0: no MEM tier)")
	fl.StringVar(&f.ssdQuota, "ssd", "10GiB", "SSD tier quota per worker (0: no SSD tier)")
	fl.BoolVar(&f.check, "check", false, "read every dataset through the cache twice, report, and exit")
	fl.StringVar(&f.mount, "mount", "", "also mount the datasets with FUSE at this directory")
	f.mountFlags.register(cmd, "mount-")
	return cmd
}

func defaultStateDir() string {
	if dir, err := os.UserCacheDir(); err == nil {
		return filepath.Join(dir, "granary", "up")
	}
	return filepath.Join(os.TempDir(), "granary-up")
}

func (g *globals) up(ctx context.Context, f upFlags) error {
	mem, err := config.ParseSize(f.memQuota)
	if err != nil {
		return fmt.Errorf("--mem: %w", err)
	}
	ssd, err := config.ParseSize(f.ssdQuota)
	if err != nil {
		return fmt.Errorf("--ssd: %w", err)
	}
	root, err := g.rootDataset()
	if err != nil {
		return err
	}
	cfg, err := g.loadConfig()
	if err != nil {
		return err
	}
	if len(cfg.Datasets) == 0 {
		dir, err := demo.Extract(f.stateDir)
		if err != nil {
			return fmt.Errorf("extract the demo dataset: %w", err)
		}
		ds, err := config.FromURI("demo", "file://"+dir)
		if err != nil {
			return err
		}
		cfg.Datasets = append(cfg.Datasets, ds)
	}
	log := slog.Default()
	if f.check {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	cl, err := localcluster.Start(localcluster.Options{Config: cfg, Workers: f.workers, StateDir: f.stateDir,
		MemDir: f.memDir, MemQuota: int64(mem), SSDQuota: int64(ssd), Log: log})
	if err != nil {
		return err
	}
	// The workers outlive the mount: on a signal the mount goes first, so
	// that no read in flight loses its worker.
	signalled := ctx
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	served := make(chan error, 1)
	go func() { served <- cl.Serve(ctx) }()
	if f.mount != "" {
		self, err := os.Executable()
		if err != nil {
			stop()
			return errors.Join(err, <-served)
		}
		// The datasets of --dataset are in the configuration up wrote,
		// and so are the workers it started (cfg knows none of them).
		upCfg, err := config.Load(cl.ConfigPath)
		if err != nil {
			stop()
			return errors.Join(err, <-served)
		}
		mountErr := g.mountNamespace(signalled, upCfg, root, f.mount, f.mountFlags, self, cl.ConfigPath, nil)
		stop()
		return errors.Join(mountErr, <-served)
	}

	out := g.stdout
	fmt.Fprintf(out, "granary: %d worker(s) on loopback serving:\n", len(cl.Workers))
	for _, ds := range cfg.Datasets {
		fmt.Fprintf(out, "  /%s  <-  %s\n", ds.Name, ds.URI)
	}
	scheme := "http"
	if cfg.Auth.TLS.Enabled() {
		scheme = "https"
	}
	for _, w := range cl.Workers {
		fmt.Fprintf(out, "  worker %s  data %s  admin %s://%s/metrics\n", w.ID(), w.Addr(), scheme, w.AdminAddr())
	}
	self, _ := os.Executable()
	fmt.Fprintf(out, "read through the cache with:\n  %s ls -l --config %s /%s/\n  %s status --config %s\n",
		self, cl.ConfigPath, cfg.Datasets[0].Name, self, cl.ConfigPath)
	if f.check {
		err := check(ctx, out, cl)
		stop()
		return errors.Join(err, <-served)
	}
	fmt.Fprintln(out, "press Ctrl-C to stop")
	select {
	case <-signalled.Done():
		stop()
		err = <-served
	case err = <-served:
	}
	fmt.Fprintln(out, "granary: stopped")
	return err
}

// check reads every dataset twice through a client and reports what the
// UFS saw: the second pass must cost it nothing.
func check(ctx context.Context, out io.Writer, cl *localcluster.Cluster) error {
	c, err := client.New(cl.Client)
	if err != nil {
		return err
	}
	defer c.Close()
	for pass := 1; pass <= 2; pass++ {
		before := ufsOps(cl)
		files, bytes, err := readAll(ctx, c, "/")
		if err != nil {
			return err
		}
		after := ufsOps(cl)
		fmt.Fprintf(out, "pass %d: read %d files, %d bytes through the cache; UFS asked: %d stat, %d list, %d read (%d bytes)\n",
			pass, files, bytes, after.Stat-before.Stat, after.List-before.List, after.Read-before.Read, after.BytesRead-before.BytesRead)
		if pass == 2 && after != before {
			return errors.New("the second pass reached the UFS: the cache did not hold")
		}
	}
	return nil
}

type opCounts struct{ Stat, List, Read, BytesRead int64 }

func ufsOps(cl *localcluster.Cluster) opCounts {
	var o opCounts
	for _, w := range cl.Workers {
		for _, ds := range w.Status().Datasets {
			o.Stat += ds.UFS.Stat
			o.List += ds.UFS.List
			o.Read += ds.UFS.Read
			o.BytesRead += ds.UFS.BytesRead
		}
	}
	return o
}

// readAll walks dir and reads every file under it.
func readAll(ctx context.Context, c *client.Client, dir string) (files, bytes int64, err error) {
	entries, err := c.List(ctx, dir)
	if err != nil {
		return 0, 0, err
	}
	for _, e := range entries {
		p := nsJoin(dir, e.Name)
		if e.IsDir() {
			f, b, err := readAll(ctx, c, p)
			files, bytes = files+f, bytes+b
			if err != nil {
				return files, bytes, err
			}
			continue
		}
		var n int64
		if err := (cachedNamespace{c}).Copy(ctx, countWriter{&n}, p, 0, -1); err != nil {
			return files, bytes, err
		}
		files, bytes = files+1, bytes+n
	}
	return files, bytes, nil
}

type countWriter struct{ n *int64 }

func (w countWriter) Write(p []byte) (int, error) { *w.n += int64(len(p)); return len(p), nil }

func newStatusCmd(g *globals) *cobra.Command {
	var asJSON bool
	var mountAdmin, mdsSocket, osdSocket string
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the workers: capacity, use, hit ratio and UFS operations per dataset (and a mount's, with --mount-admin)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if mountAdmin != "" || mdsSocket != "" {
				if mountAdmin != "" {
					if err := printMountStatus(g.stdout, mountAdmin, asJSON); err != nil {
						return err
					}
				}
				if mdsSocket != "" {
					if err := printCephStatus(cmd.Context(), g.stdout, mdsSocket, osdSocket, asJSON); err != nil {
						return err
					}
				}
				if g.configPath == "" && len(g.datasets) == 0 {
					return nil
				}
			}
			c, _, err := g.openClient()
			if err != nil {
				return err
			}
			defer c.Close()
			st := c.ClusterStatus(cmd.Context())
			if asJSON {
				return writeJSON(g.stdout, st)
			}
			return printStatus(g.stdout, st)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.Flags().StringVar(&mountAdmin, "mount-admin", "", "also show the mount whose --admin address this is")
	cmd.Flags().StringVar(&mdsSocket, "mds-admin-socket", "", "also show what CephFS's MDS serves: its admin socket, e.g. /var/run/ceph/ceph-mds.a.asok")
	cmd.Flags().StringVar(&osdSocket, "osd-admin-socket", "", "with --mds-admin-socket, also an OSD's reads")
	return cmd
}

// printCephStatus shows the MDS's requests, sessions and caps (and an
// OSD's reads): run it before and after a workload to see what it cost.
func printCephStatus(ctx context.Context, out io.Writer, mdsSocket, osdSocket string, asJSON bool) error {
	mds, err := cephstat.ReadMDS(ctx, mdsSocket)
	if err != nil {
		return err
	}
	var osd *cephstat.OSD
	if osdSocket != "" {
		o, err := cephstat.ReadOSD(ctx, osdSocket)
		if err != nil {
			return err
		}
		osd = &o
	}
	if asJSON {
		return writeJSON(out, struct {
			MDS cephstat.MDS  `json:"mds"`
			OSD *cephstat.OSD `json:"osd,omitempty"`
		}{mds, osd})
	}
	ops := make([]string, 0, len(mds.ByOp))
	for op, n := range mds.ByOp {
		ops = append(ops, fmt.Sprintf("%s %.0f", op, n))
	}
	slices.Sort(ops)
	fmt.Fprintf(out, "MDS %s\n  requests %.0f (%s)\n  client sessions %d holding %d caps\n", mdsSocket, mds.Requests, strings.Join(ops, ", "), len(mds.Sessions), mds.Caps())
	for _, s := range mds.Sessions {
		fmt.Fprintf(out, "    session %d  host %s  pid %s  caps %d\n", s.ID, s.Host, s.PID, s.Caps)
	}
	if osd != nil {
		fmt.Fprintf(out, "OSD %s\n  reads %.0f (%.1f MiB)\n", osdSocket, osd.Reads, osd.ReadBytes/(1<<20))
	}
	return nil
}

// printMountStatus shows what a mount did: passthrough in use, opens,
// reads that reached the daemon.
func printMountStatus(out io.Writer, admin string, asJSON bool) error {
	resp, err := http.Get("http://" + admin + "/v1/status")
	if err != nil {
		return fmt.Errorf("mount admin %s: %w", admin, err)
	}
	defer resp.Body.Close()
	var st mountStatus
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return fmt.Errorf("mount admin %s: %w", admin, err)
	}
	if asJSON {
		return writeJSON(out, st)
	}
	m := st.Mount
	_, err = fmt.Fprintf(out, "MOUNT %s  server generation %d  passthrough: %v\n  opens %d (passthrough %d, direct I/O %d)  daemon reads %d (%s)  lookups %d  errors %d\n  client: %d remote reads, %d short-circuit, %d fallback, %d retries\n",
		admin, m.Generation, m.PassthroughSupported, m.Opens, m.PassthroughOpens, m.DirectOpens, m.DaemonReads, config.Size(m.DaemonReadBytes),
		m.Lookups, m.Errors, st.Client.RemoteReads, st.Client.ShortCircuitReads, st.Client.FallbackReads, st.Client.Retries)
	return err
}

// printStatus shows the members, then the datasets.
func printStatus(out io.Writer, st client.ClusterStatus) error {
	fmt.Fprintf(out, "%s\n\n", st.Membership)
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "WORKER\tADDRESS\tHOST\tSTATE\tUP SINCE\tTIERS (used/capacity)\tHIT RATIO")
	var down int
	for _, w := range st.Members {
		m := w.Member
		state := m.State.String()
		if m.State == membership.NotLive && !m.Since.IsZero() {
			state += " for " + time.Since(m.Since).Round(time.Second).String()
		}
		if w.Error != "" {
			down++
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s, not answering: %s\t\t\t\n", m.ID, m.Addr, m.Host, state, w.Error)
			continue
		}
		s := w.Status
		if s == nil {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t\t\t\n", m.ID, m.Addr, m.Host, state)
			continue
		}
		var tiers []string
		for _, t := range s.Tiers {
			tier := fmt.Sprintf("%s %s/%s", t.Name, config.Size(t.Used), config.Size(t.Capacity))
			if strings.HasPrefix(t.Pages, "4 KiB") {
				tier += " (4 KiB pages: see the worker's log)"
			}
			tiers = append(tiers, tier)
		}
		ratio := "-"
		if total := s.Hits + s.Misses; total > 0 {
			ratio = fmt.Sprintf("%.1f%%", 100*float64(s.Hits)/float64(total))
		}
		if !s.MembershipOK {
			state += " (" + s.Membership + ")"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", m.ID, m.Addr, s.Host, state, s.Since.Local().Format(time.DateTime), strings.Join(tiers, ", "), ratio)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(out)
	tw = tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "DATASET\tUFS SIZE\tFILES\tCACHED\tCACHED %\tUFS OPS (stat/list/read)\tUFS BYTES READ\tUFS")
	for _, ds := range st.Datasets {
		size, files, pct := "unknown", "unknown", "-"
		if u := ds.Usage; u != nil {
			size, files = config.Size(u.Bytes).String(), fmt.Sprint(u.Files)
			if !u.Complete {
				size, files = size+" (measuring)", files+"+"
			}
		}
		if ds.CachedPercent >= 0 {
			pct = fmt.Sprintf("%.1f%%", ds.CachedPercent)
		}
		o := ds.Operations
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d/%d/%d\t%s\t%s\n", ds.Name, size, files, config.Size(ds.CachedBytes), pct,
			o.Stat, o.List, o.Read, config.Size(o.BytesRead), ds.UFS)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if down > 0 {
		return fmt.Errorf("%d of %d members did not answer", down, len(st.Members))
	}
	return nil
}

func newRefreshCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "refresh /DATASET/PATH...",
		Short: "Forget cached metadata of paths (and below) so that the next access sees the UFS as it is now",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, _, err := g.openClient()
			if err != nil {
				return err
			}
			defer c.Close()
			for _, p := range args {
				if err := c.Refresh(cmd.Context(), p); err != nil {
					return err
				}
				fmt.Fprintf(g.stdout, "refreshed %s\n", p)
			}
			return nil
		},
	}
}
