package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/granary-cache/granary/internal/client"
	"github.com/granary-cache/granary/internal/config"
	"github.com/granary-cache/granary/internal/mount"
	"github.com/granary-cache/granary/internal/ufs"
)

// A FUSE connection opens every file one way: zero-message opens (no round
// trip per open, the fastest for many small files) rule out passthrough
// (the fastest for large files), since the kernel stops sending OPEN for
// the whole connection. A mount gets both by serving what differs from the
// rest on a connection of its own, mounted at its directory: a dataset
// whose open_mode differs from the other datasets', and a top-level
// directory of a dataset whose files differ from the rest of it (open_mode
// auto: a directory of checkpoints in a dataset of images, say).

// plannedMount is one FUSE connection of a mount.
type plannedMount struct {
	dir         string // its mount point
	dataset     string // the dataset at its root; "" for the namespace
	subdir      string // with dataset: the directory of it at the root
	zeroMessage bool
	parent      int // the mount below which dir lies (an earlier one); -1 for the first
}

// planMounts lays out the connections of a mount at mountpoint: the first
// serves the namespace (or root, with subdir), the others what differs
// from the connection they lie in. modes holds the open mode of each
// dataset ("name") and of the directories open_mode auto split off
// ("name/dir"); a dataset missing from it keeps its configured mode.
func planMounts(cfg *config.Config, root, subdir, mountpoint string, f mountFlags, modes map[string]mount.OpenChoice) []plannedMount {
	zero := func(key string) bool {
		if ch, ok := modes[key]; ok {
			return ch.Mode == config.OpenZeroMessage
		}
		ds, _ := cfg.Dataset(key)
		return ds.OpenMode == config.OpenZeroMessage
	}
	first := plannedMount{dir: mountpoint, dataset: root, subdir: subdir, parent: -1}
	switch {
	case f.zeroMessageOpens: // the flag sets the whole mount
		return []plannedMount{{dir: mountpoint, dataset: root, subdir: subdir, zeroMessage: true, parent: -1}}
	case root != "":
		first.zeroMessage = zero(root)
	default:
		first.zeroMessage = len(cfg.Datasets) > 0
		for _, ds := range cfg.Datasets {
			first.zeroMessage = first.zeroMessage && zero(ds.Name)
		}
	}
	plan := []plannedMount{first}
	servedBy := map[string]int{} // dataset: the connection that serves it
	for _, ds := range cfg.Datasets {
		switch {
		case root != "" && ds.Name == root:
			servedBy[ds.Name] = 0
		case root != "":
		case zero(ds.Name) != first.zeroMessage:
			servedBy[ds.Name] = len(plan)
			plan = append(plan, plannedMount{dir: filepath.Join(mountpoint, ds.Name), dataset: ds.Name,
				zeroMessage: !first.zeroMessage, parent: 0})
		default:
			servedBy[ds.Name] = 0
		}
	}
	if subdir != "" {
		return plan // the split directories are those of the whole dataset
	}
	for _, key := range slices.Sorted(maps.Keys(modes)) {
		name, dir, ok := strings.Cut(key, "/")
		parent, served := servedBy[name]
		if !ok || !served || zero(key) == plan[parent].zeroMessage {
			continue
		}
		at := filepath.Join(plan[parent].dir, dir)
		if plan[parent].dataset == "" {
			at = filepath.Join(plan[parent].dir, name, dir)
		}
		plan = append(plan, plannedMount{dir: at, dataset: name, subdir: dir, zeroMessage: zero(key), parent: parent})
	}
	return plan
}

// settleTimeout bounds the wait for the connections of a mount before it
// says it is ready (--ready-file): a server that never answers the kernel's
// INIT must not hold up the mount's other connections.
const settleTimeout = 20 * time.Second

// serverFunc returns the command of the server of one connection of a
// mount.
type serverFunc func(pm plannedMount, f mountFlags) *exec.Cmd

// superviseMounts mounts the connections of plan, each once the one it
// lies in is up, and keeps a server on each until ctx ends or the first
// is unmounted (granary umount takes the mounts below with it). They stop
// in the reverse order, so that no mount point is left busy. When a
// connection other than the first fails, the one it lies in serves its
// directory, only without its open mode. Once every connection is up, has
// failed, or is not up after settleTimeout, settled (if not nil) is called
// with the mount points that are up, in the plan's order.
func superviseMounts(ctx context.Context, plan []plannedMount, f mountFlags, server serverFunc, settled func(up []string)) error {
	type running struct {
		up, gone chan struct{}
		err      error // set before gone is closed
		stop     context.CancelFunc
	}
	rs := make([]*running, len(plan))
	base := context.WithoutCancel(ctx)
	for i, pm := range plan {
		mctx, stop := context.WithCancel(base)
		r := &running{up: make(chan struct{}), gone: make(chan struct{}), stop: stop}
		rs[i] = r
		sf := f
		sf.zeroMessageOpens, sf.subdir = pm.zeroMessage, pm.subdir
		if i > 0 {
			sf.admin = "" // one admin address per process
		}
		var once sync.Once
		o := mount.SuperviseOptions{AllowOther: f.allowOther, Log: slog.Default(),
			Started: func(int) { once.Do(func() { close(r.up) }) },
			Server:  func() *exec.Cmd { return server(pm, sf) }}
		go func() {
			defer close(r.gone)
			if pm.parent >= 0 {
				p := rs[pm.parent]
				select {
				case <-p.up:
				case <-p.gone:
					return
				case <-mctx.Done():
					return
				}
			}
			r.err = mount.Supervise(mctx, pm.dir, o)
			if i == 0 {
				return
			}
			what := []any{"dataset", pm.dataset, "mountpoint", pm.dir, "zero_message_opens", pm.zeroMessage}
			if pm.subdir != "" {
				what = append(what, "dir", pm.subdir)
			}
			switch {
			case mctx.Err() != nil:
			case r.err != nil:
				slog.Warn("a connection of its own failed; the mount around it serves its files, in its open mode", append(what, "err", r.err)...)
			default: // unmounted: by granary umount, or detached by the kernel
				slog.Info("a connection of its own is gone; the mount around it serves its files", what...)
			}
		}()
	}
	stopAll := func() {
		for i := len(rs) - 1; i >= 0; i-- {
			rs[i].stop()
			<-rs[i].gone
		}
	}
	select {
	case <-rs[0].up:
	case <-rs[0].gone:
		stopAll()
		return rs[0].err
	case <-ctx.Done(): // stopped while the first was starting
	}
	// Settled: every connection is up, or has failed, or is still not up
	// after settleTimeout (its directory is served by the connection it
	// lies in meanwhile).
	var up []string
	deadline := time.NewTimer(settleTimeout)
	defer deadline.Stop()
	late := false
	for i, r := range rs {
		if late {
			select {
			case <-r.up:
				up = append(up, plan[i].dir)
			default:
			}
			continue
		}
		select {
		case <-r.up:
			up = append(up, plan[i].dir)
		case <-r.gone:
		case <-ctx.Done():
		case <-rs[0].gone:
		case <-deadline.C:
			late = true
			slog.Warn("a connection of its own is not up yet; the mount is ready without it", "mountpoint", plan[i].dir, "after", settleTimeout)
		}
	}
	select {
	case <-rs[0].gone: // the mount is gone: not ready
	default:
		if ctx.Err() == nil && settled != nil {
			settled(up)
		}
	}
	select {
	case <-ctx.Done():
	case <-rs[0].gone: // unmounted from outside
	}
	stopAll()
	return rs[0].err
}

// mountNamespace mounts the datasets of cfg (root: one dataset at the root,
// if any) at mountpoint and keeps servers on it until ctx ends: `granary
// mount` processes started from the executable self, reading configPath and
// the dataset definitions defs.
func (g *globals) mountNamespace(ctx context.Context, cfg *config.Config, root, mountpoint string, f mountFlags, self, configPath string, defs []string) error {
	var c *client.Client
	defer func() {
		if c != nil {
			c.Close()
		}
	}()
	getClient := func() (*client.Client, error) {
		var err error
		if c == nil {
			c, err = client.New(cfg)
		}
		return c, err
	}
	if f.subdir != "" {
		if err := checkSubdir(ctx, root, f.subdir, getClient); err != nil {
			return err
		}
	}
	choices := map[string]mount.OpenChoice{}
	if !f.zeroMessageOpens {
		choices = chooseOpenModes(cfg, root, f.subdir, f.splitByOpenMode(), func(p string) (client.FileSizes, error) {
			c, err := getClient()
			if err != nil {
				return client.FileSizes{}, err
			}
			sctx, cancel := context.WithTimeout(ctx, sampleTimeout)
			defer cancel()
			return c.SampleSizes(sctx, p, sampleDirs, sampleFiles)
		})
		for _, key := range slices.Sorted(maps.Keys(choices)) {
			what := []any{"dataset", key}
			if name, dir, ok := strings.Cut(key, "/"); ok {
				what = []any{"dataset", name, "dir", dir}
			}
			slog.Info("open mode", append(what, "mode", choices[key].Mode, "why", choices[key].Reason)...)
		}
		resolved := *cfg
		resolved.Datasets = slices.Clone(cfg.Datasets)
		for i, ds := range resolved.Datasets {
			if ch, ok := choices[ds.Name]; ok {
				resolved.Datasets[i].OpenMode = ch.Mode
			}
		}
		cfg = &resolved
	}
	env := openModesEnv(choices)
	plan := planMounts(cfg, root, f.subdir, mountpoint, f, choices)
	var settled func(up []string)
	if f.readyFile != "" {
		if err := os.Remove(f.readyFile); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("--ready-file %s: %w", f.readyFile, err)
		}
		defer os.Remove(f.readyFile)
		settled = func(up []string) {
			if err := writeReadyFile(f.readyFile, up); err != nil {
				slog.Error("the mount is up, but its ready file could not be written", "path", f.readyFile, "err", err)
			}
		}
	}
	return superviseMounts(ctx, plan, f, func(pm plannedMount, f mountFlags) *exec.Cmd {
		c := exec.Command(self, g.mountArgs(configPath, defs, pm.dir, pm.dataset, f)...)
		c.Stdout, c.Stderr = g.stdout, g.stderr
		c.Env = append(os.Environ(), env)
		return c
	}, settled)
}

// writeReadyFile writes the mount points that are up, one a line, to
// path, all at once: a reader sees the whole list or no file.
func writeReadyFile(path string, up []string) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(strings.Join(up, "\n")+"\n"), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// splitByOpenMode reports whether directories of a dataset may get a
// connection of their own in the other open mode: not without passthrough
// (both would be the same mode), not under --subdir (one directory
// already), not for Fluid.
func (f mountFlags) splitByOpenMode() bool {
	return !f.noPassthrough && f.subdir == "" && !f.oneConnection
}

// checkSubdir makes sure that --subdir names a directory of the dataset
// mounted at the root. A dataset that cannot be listed yet (its workers
// are starting) is not held against it: the mount serves it once they
// answer.
func checkSubdir(ctx context.Context, root, subdir string, getClient func() (*client.Client, error)) error {
	if root == "" {
		return fmt.Errorf("--subdir %s: mounts a directory of the dataset at the root; name it with --dataset NAME", subdir)
	}
	clean, err := ufs.CleanPath(subdir)
	if err != nil {
		return fmt.Errorf("--subdir: %w", err)
	}
	c, err := getClient()
	if err != nil {
		return err
	}
	sctx, cancel := context.WithTimeout(ctx, sampleTimeout)
	defer cancel()
	fi, err := c.Stat(sctx, "/"+root+"/"+clean)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("--subdir %s: dataset %s has no such directory", subdir, root)
	case err != nil:
		slog.Warn("cannot check --subdir yet; mounting it anyway", "dataset", root, "dir", clean, "err", err)
	case !fi.IsDir():
		return fmt.Errorf("--subdir %s: not a directory of dataset %s", subdir, root)
	}
	return nil
}

// How much of a dataset open_mode auto looks at: the first listings, within
// a bound of time (workers may still be starting).
const (
	sampleDirs    = 64
	sampleFiles   = 2000
	sampleTimeout = 20 * time.Second
)

// chooseOpenModes decides the open mode of each dataset of the mount (root
// alone when set, or its directory subdir): the configured one, or for
// open_mode auto the one mount.ChooseOpenMode picks from sample (given the
// path it lists: "dataset" or "dataset/dir"); with split, also the
// top-level directories of an auto dataset that want the other mode
// (mount.SplitOpenModes), keyed "dataset/dir". A dataset that cannot be
// listed gets passthrough, and says why.
func chooseOpenModes(cfg *config.Config, root, subdir string, split bool, sample func(p string) (client.FileSizes, error)) map[string]mount.OpenChoice {
	out := map[string]mount.OpenChoice{}
	for _, ds := range cfg.Datasets {
		if root != "" && ds.Name != root {
			continue
		}
		if ds.OpenMode != config.OpenAuto && ds.OpenMode != "" {
			out[ds.Name] = mount.OpenChoice{Mode: ds.OpenMode, Reason: "set in the configuration"}
			continue
		}
		p := ds.Name
		if root != "" && subdir != "" {
			p += "/" + subdir
		}
		sizes, err := sample(p)
		if err != nil {
			out[ds.Name] = mount.OpenChoice{Mode: config.OpenPassthrough, Reason: fmt.Sprintf("auto, but the dataset could not be listed (%v): passthrough", err)}
			continue
		}
		maxBlock := int64(max(ds.BlockSize, ds.WholeFile))
		ch := mount.ChooseOpenMode(sizes, maxBlock)
		if split {
			for dir, dch := range mount.SplitOpenModes(ch, sizes, maxBlock) {
				dch.Reason = "auto: " + dch.Reason
				out[ds.Name+"/"+dir] = dch
			}
		}
		ch.Reason = "auto: " + ch.Reason
		out[ds.Name] = ch
	}
	return out
}

// openModesEnv hands the choices to the mount's servers, for their status.
func openModesEnv(choices map[string]mount.OpenChoice) string {
	b, _ := json.Marshal(choices)
	return openModesVar + "=" + string(b)
}

// openModesVar is the environment variable that carries the open modes
// chosen to a mount's servers.
const openModesVar = "GRANARY_OPEN_MODES"

// splitDirs are the directories of each dataset that have a connection
// of their own, from the keys "dataset/dir" of the open modes chosen.
func splitDirs(choices map[string]mount.OpenChoice) map[string][]string {
	out := map[string][]string{}
	for _, key := range slices.Sorted(maps.Keys(choices)) {
		if ds, dir, ok := strings.Cut(key, "/"); ok {
			out[ds] = append(out[ds], dir)
		}
	}
	return out
}

// servedElsewhere returns, for the server of mountpoint (root: the dataset
// at its root, if any), the split directories of a dataset whose own
// connection is mounted now: one that failed is served, and prefetched,
// by this server.
func servedElsewhere(mountpoint, root string, split map[string][]string) func(ds string) []string {
	return func(ds string) []string {
		base := filepath.Join(mountpoint, ds)
		if root != "" {
			base = mountpoint
		}
		var out []string
		for _, dir := range split[ds] {
			if mount.Mounted(filepath.Join(base, dir)) {
				out = append(out, dir)
			}
		}
		return out
	}
}

// openModesFromEnv reads what openModesEnv wrote; nil when absent.
func openModesFromEnv() map[string]mount.OpenChoice {
	v := os.Getenv(openModesVar)
	if v == "" {
		return nil
	}
	var m map[string]mount.OpenChoice
	if json.Unmarshal([]byte(v), &m) != nil {
		return nil
	}
	return m
}

// mountArgs are the arguments of `granary mount` for a server of
// mountpoint: a configuration file and dataset definitions (NAME=URI), the
// flags f, and dataset (if any) at the root.
func (g *globals) mountArgs(configPath string, defs []string, mountpoint, dataset string, f mountFlags) []string {
	args := []string{"mount", "--log-level", g.logLevel}
	if configPath != "" {
		args = append(args, "--config", configPath)
	}
	for _, def := range defs {
		args = append(args, "--dataset", def)
	}
	args = append(args, f.args()...)
	if dataset != "" {
		args = append(args, "--dataset", dataset)
	}
	return append(args, mountpoint)
}
