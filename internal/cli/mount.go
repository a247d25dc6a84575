package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"

	"github.com/granary-cache/granary/internal/client"
	"github.com/granary-cache/granary/internal/mount"
	"github.com/granary-cache/granary/internal/prefetch"
)

type mountFlags struct {
	admin                     string
	entryTimeout, attrTimeout time.Duration
	noPassthrough, allowOther bool
	noDirectIO                bool
	subdir                    string // with a dataset at the root: the directory of it mounted
	readyFile                 string // written once every connection is up or has failed
	// oneConnection keeps every directory of a dataset on the dataset's
	// connection (no split by open mode): for Fluid, whose CSI plugin binds
	// the mount into pods without the mounts below it.
	oneConnection    bool
	zeroMessageOpens bool
	debug            bool
	prefetch         bool
	prefetchIdle     time.Duration
}

func (f *mountFlags) register(cmd *cobra.Command, prefix string) {
	fl := cmd.Flags()
	fl.StringVar(&f.admin, prefix+"admin", "", "serve the mount's /metrics and /v1/status on this address (e.g. 127.0.0.1:7711)")
	fl.DurationVar(&f.entryTimeout, prefix+"entry-timeout", 0, "kernel entry cache timeout (default: 1h for metadata_sync: never, else the interval)")
	fl.DurationVar(&f.attrTimeout, prefix+"attr-timeout", 0, "kernel attribute cache timeout (default: as --entry-timeout)")
	fl.BoolVar(&f.noPassthrough, prefix+"no-passthrough", false, "serve every read through granary, never with FUSE passthrough")
	fl.BoolVar(&f.noDirectIO, prefix+"no-direct-io", false, "keep the page cache for the first open of a large file not cached yet (for readers of small pieces), instead of direct I/O")
	fl.BoolVar(&f.allowOther, prefix+"allow-other", false, "let other users read the mount")
	fl.BoolVar(&f.zeroMessageOpens, prefix+"zero-message-opens", false, "open files without a FUSE round trip (fastest warm small files; rules out passthrough)")
	fl.BoolVar(&f.debug, prefix+"fuse-debug", false, "log every FUSE request")
	fl.BoolVar(&f.prefetch, prefix+"prefetch", false, "fetch a dataset ahead of the job reading it, when it fits in the cache's room")
	fl.DurationVar(&f.prefetchIdle, prefix+"prefetch-idle", 30*time.Second, "stop a dataset's prefetch after this long without a read of it")
}

// args renders the flags for a mount server started by `granary up`.
func (f *mountFlags) args() []string {
	var a []string
	if f.admin != "" {
		a = append(a, "--admin", f.admin)
	}
	if f.entryTimeout > 0 {
		a = append(a, "--entry-timeout", f.entryTimeout.String())
	}
	if f.attrTimeout > 0 {
		a = append(a, "--attr-timeout", f.attrTimeout.String())
	}
	if f.noPassthrough {
		a = append(a, "--no-passthrough")
	}
	if f.noDirectIO {
		a = append(a, "--no-direct-io")
	}
	if f.allowOther {
		a = append(a, "--allow-other")
	}
	if f.prefetch {
		a = append(a, "--prefetch")
	}
	if f.prefetchIdle != 30*time.Second && f.prefetchIdle > 0 {
		a = append(a, "--prefetch-idle", f.prefetchIdle.String())
	}
	if f.zeroMessageOpens {
		a = append(a, "--zero-message-opens")
	}
	if f.subdir != "" {
		a = append(a, "--subdir", f.subdir)
	}
	if f.debug {
		a = append(a, "--fuse-debug")
	}
	return a
}

// rootDataset takes the --dataset values without "=" (a dataset to mount at
// the root, as in `granary mount --dataset imagenet /mnt`) out of the list
// of NAME=URI definitions.
func (g *globals) rootDataset() (string, error) {
	var defs []string
	root := ""
	for _, d := range g.datasets {
		if strings.Contains(d, "=") {
			defs = append(defs, d)
			continue
		}
		if root != "" {
			return "", fmt.Errorf("--dataset %s and --dataset %s: only one dataset can be mounted at the root", root, d)
		}
		root = d
	}
	g.datasets = defs
	return root, nil
}

func newMountCmd(g *globals) *cobra.Command {
	var f mountFlags
	cmd := &cobra.Command{
		Use:   "mount --config FILE [--dataset NAME [--subdir DIR]] MOUNTPOINT",
		Short: "Mount the datasets read-only with FUSE (each dataset a directory, or one at the root)",
		Long: `mount serves every dataset as a top-level directory of MOUNTPOINT (or, with
--dataset NAME, that dataset at the root; with --subdir DIR as well, that
directory of it), read through the cache workers of the configuration. It runs
until interrupted (SIGINT/SIGTERM), then unmounts.

Files open in the dataset's open_mode. With open_mode auto (the default), the
first listings decide: zero-message opens for small files, passthrough for
large ones; a top-level directory whose files differ from the rest of its
dataset (checkpoints among images) gets a FUSE connection of its own, mounted
at that directory, in the other mode. The log and the status say which mode
each got and why.

The mount survives its serving process: this process holds the FUSE connection
and starts the server as a child; when the child dies it starts another on the
same connection, so readers see at most the requests in flight fail.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if mount.IsServer() {
				return g.serveMount(cmd.Context(), args[0], f)
			}
			self, err := os.Executable()
			if err != nil {
				return err
			}
			root, err := g.rootDataset()
			if err != nil {
				return err
			}
			if err := g.discoverConfig(); err != nil {
				return err
			}
			cfg, err := g.loadConfig() // a bad config fails here, before anything is mounted
			if err != nil {
				return err
			}
			return g.mountNamespace(cmd.Context(), cfg, root, args[0], f, self, g.configPath, g.datasets)
		},
	}
	f.register(cmd, "")
	cmd.Flags().StringVar(&f.subdir, "subdir", "", "with --dataset NAME: mount this directory of the dataset at the root")
	cmd.Flags().StringVar(&f.readyFile, "ready-file", "", "write the mount points served to this file once every connection of the mount is up (removed when the mount stops)")
	return cmd
}

// serveMount is the serving process of a mount: it serves until ctx ends
// (then unmounts) or the file system is unmounted from outside.
func (g *globals) serveMount(ctx context.Context, mountpoint string, f mountFlags) error {
	root, err := g.rootDataset()
	if err != nil {
		return err
	}
	c, cfg, err := g.openClient()
	if err != nil {
		return err
	}
	defer c.Close()
	var pf *prefetch.Prefetcher
	if f.prefetch {
		o := prefetch.Options{Idle: f.prefetchIdle, Log: slog.Default()}
		if root != "" && f.subdir != "" {
			o.Dirs = map[string]string{root: f.subdir}
		} else {
			o.Skip = servedElsewhere(mountpoint, root, splitDirs(openModesFromEnv()))
		}
		pf = prefetch.New(c, o)
		defer pf.Close() // after the mount is gone (deferred calls run last first)
		c.SetReadHook(pf.Touch)
	}
	m, err := mount.Serve(mountpoint, mount.Options{Client: c, Config: cfg, Dataset: root, Dir: f.subdir,
		EntryTimeout: f.entryTimeout, AttrTimeout: f.attrTimeout, NoPassthrough: f.noPassthrough, NoDirectIO: f.noDirectIO,
		ZeroMessageOpens: f.zeroMessageOpens, Debug: f.debug, Log: slog.Default()})
	if err != nil {
		return err
	}
	if f.admin != "" {
		addr, stop, err := serveMountAdmin(f.admin, m, c, pf)
		if err != nil {
			mount.Unmount(mountpoint)
			return err
		}
		defer stop()
		fmt.Fprintf(g.stdout, "mount admin: http://%s/v1/status\n", addr)
	}
	if st := m.Stats(); st.Generation == 1 {
		fmt.Fprintf(g.stdout, "mounted at %s (passthrough: %v)\n", mountpoint, st.PassthroughSupported)
	}
	select {
	case <-ctx.Done():
		if err := mount.Unmount(mountpoint); err != nil {
			return err
		}
		<-m.Done()
		fmt.Fprintf(g.stdout, "unmounted %s\n", mountpoint)
	case <-m.Done(): // unmounted from outside (granary umount, fusermount3 -u)
	}
	return nil
}

// mountStatus is what a mount's /v1/status reports.
type mountStatus struct {
	Mount  mount.Stats  `json:"mount"`
	Client client.Stats `json:"client"`
	// OpenModes are the open modes the mount chose for its datasets, and
	// why (open_mode auto decides at mount time).
	OpenModes map[string]mount.OpenChoice `json:"open_modes,omitempty"`
	// Prefetch is each dataset's prefetch (with --prefetch).
	Prefetch map[string]prefetch.Status `json:"prefetch,omitempty"`
}

func serveMountAdmin(addr string, m *mount.Mount, c *client.Client, pf *prefetch.Prefetcher) (string, func(), error) {
	openModes := openModesFromEnv()
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return "", nil, fmt.Errorf("--admin: %w", err)
	}
	reg := prometheus.NewRegistry()
	gauge := func(name, help string, v func(mount.Stats) int64) {
		reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help},
			func() float64 { return float64(v(m.Stats())) }))
	}
	gauge("granary_mount_opens_total", "Files opened through the mount.", func(s mount.Stats) int64 { return s.Opens })
	gauge("granary_mount_passthrough_opens_total", "Opens handed to the kernel as FUSE passthrough: their reads never reach granary.", func(s mount.Stats) int64 { return s.PassthroughOpens })
	gauge("granary_mount_direct_opens_total", "Cold opens of large files answered with direct I/O: read through granary with no second copy in the page cache.", func(s mount.Stats) int64 { return s.DirectOpens })
	gauge("granary_mount_small_direct_reads_total", "Reads under 64 KiB of files opened with direct I/O: each a round trip (read in larger chunks, or mount with --no-direct-io).", func(s mount.Stats) int64 { return s.SmallDirectReads })
	gauge("granary_mount_daemon_reads_total", "READ requests served by the granary process.", func(s mount.Stats) int64 { return s.DaemonReads })
	gauge("granary_mount_daemon_read_bytes_total", "Bytes of READ requests served by the granary process.", func(s mount.Stats) int64 { return s.DaemonReadBytes })
	gauge("granary_mount_ioctls_total", "ioctls readers asked of files: each a round trip (Python's open() asks isatty of every file unless unbuffered).", func(s mount.Stats) int64 { return s.Ioctls })
	gauge("granary_mount_errors_total", "Requests that failed with an error other than ENOENT.", func(s mount.Stats) int64 { return s.Errors })
	reg.MustRegister(c.Collector())
	if pf != nil {
		reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "granary_mount_prefetch_bytes_total",
			Help: "Bytes the mount's prefetches had the workers load ahead of the jobs reading."}, func() float64 { return float64(pf.LoadedBytes()) }))
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /v1/status", func(rw http.ResponseWriter, _ *http.Request) {
		rw.Header().Set("Content-Type", "application/json")
		st := mountStatus{Mount: m.Stats(), Client: c.Stats(), OpenModes: openModes}
		if pf != nil {
			st.Prefetch = pf.Status()
		}
		json.NewEncoder(rw).Encode(st)
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(l)
	return l.Addr().String(), func() { srv.Close() }, nil
}

func newUmountCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "umount MOUNTPOINT",
		Short: "Unmount a granary mount",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := mount.UnmountTree(args[0]); err != nil {
				return err
			}
			_, err := fmt.Fprintf(g.stdout, "unmounted %s\n", args[0])
			return err
		},
	}
}
