package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/granary-cache/granary/internal/client"
	"github.com/granary-cache/granary/internal/config"
	"github.com/granary-cache/granary/internal/mount"
)

// A FUSE connection opens every file one way: zero-message opens (no round
// trip per open, the fastest for many small files) rule out passthrough
// (the fastest for large files), since the kernel stops sending OPEN for
// the whole connection. A mount of several datasets gets both by serving
// the datasets whose open_mode differs from the rest on a connection of
// their own, mounted at their directory of the namespace.

// openModes decides how a mount opens files: whether the mount at the
// mount point uses zero-message opens, and which datasets get a mount of
// their own (at MOUNTPOINT/DATASET, with zero-message opens). root is the
// dataset mounted at the root, if any.
func openModes(cfg *config.Config, root string, f mountFlags) (zeroMessage bool, own []string) {
	if f.zeroMessageOpens { // the flag sets the whole mount
		return true, nil
	}
	if root != "" {
		ds, ok := cfg.Dataset(root)
		return ok && ds.OpenMode == config.OpenZeroMessage, nil
	}
	for _, ds := range cfg.Datasets {
		if ds.OpenMode == config.OpenZeroMessage {
			own = append(own, ds.Name)
		}
	}
	if len(own) > 0 && len(own) == len(cfg.Datasets) {
		return true, nil
	}
	return false, own
}

// serverFunc returns the command of the server of a mount: of the whole
// namespace when dataset is "", else of that dataset alone.
type serverFunc func(mountpoint, dataset string, f mountFlags) *exec.Cmd

// superviseMounts mounts mountpoint, and the datasets of own each at its
// directory below it with zero-message opens, and keeps a server on each
// until ctx ends or the mount point is unmounted (granary umount takes the
// mounts below with it). The datasets' own mounts go first, so that the
// mount point is never left busy.
func superviseMounts(ctx context.Context, mountpoint string, f mountFlags, own []string, server serverFunc) error {
	opts := func(mp, ds string, f mountFlags, started func(int)) mount.SuperviseOptions {
		return mount.SuperviseOptions{AllowOther: f.allowOther, Log: slog.Default(), Started: started,
			Server: func() *exec.Cmd { return server(mp, ds, f) }}
	}
	if len(own) == 0 {
		return mount.Supervise(ctx, mountpoint, opts(mountpoint, "", f, nil))
	}
	rootCtx, stopRoot := context.WithCancel(context.WithoutCancel(ctx))
	defer stopRoot()
	up := make(chan struct{})
	var once sync.Once
	rootDone := make(chan error, 1)
	go func() {
		rootDone <- mount.Supervise(rootCtx, mountpoint, opts(mountpoint, "", f, func(int) { once.Do(func() { close(up) }) }))
	}()
	select {
	case <-up:
	case err := <-rootDone:
		return err
	}
	if ctx.Err() != nil { // stopped while the root was starting
		stopRoot()
		return <-rootDone
	}
	ownCtx, stopOwn := context.WithCancel(ctx)
	defer stopOwn()
	sf := f
	sf.zeroMessageOpens, sf.admin = true, "" // one admin address per process
	var wg sync.WaitGroup
	for _, ds := range own {
		dir := filepath.Join(mountpoint, ds)
		wg.Go(func() {
			err := mount.Supervise(ownCtx, dir, opts(dir, ds, sf, nil))
			switch {
			case ownCtx.Err() != nil:
			case err != nil:
				// The namespace's mount still serves the dataset, only
				// without zero-message opens.
				slog.Warn("the dataset's own mount (zero-message opens) failed; the namespace mount serves it", "dataset", ds, "mountpoint", dir, "err", err)
			default: // unmounted: by granary umount, or detached by the kernel
				slog.Info("the dataset's own mount is gone; the namespace mount serves it", "dataset", ds, "mountpoint", dir)
			}
		})
	}
	var err error
	select {
	case <-ctx.Done():
		stopOwn()
		wg.Wait()
		stopRoot()
		err = <-rootDone
	case err = <-rootDone: // unmounted from outside
		stopOwn()
		wg.Wait()
	}
	return err
}

// mountNamespace mounts the datasets of cfg (root: one dataset at the root,
// if any) at mountpoint and keeps servers on it until ctx ends: `granary
// mount` processes started from the executable self, reading configPath and
// the dataset definitions defs.
func (g *globals) mountNamespace(ctx context.Context, cfg *config.Config, root, mountpoint string, f mountFlags, self, configPath string, defs []string) error {
	choices := map[string]mount.OpenChoice{}
	if !f.zeroMessageOpens {
		var c *client.Client
		defer func() {
			if c != nil {
				c.Close()
			}
		}()
		choices = chooseOpenModes(cfg, root, func(ds string) (client.FileSizes, error) {
			if c == nil {
				var err error
				if c, err = client.New(cfg); err != nil {
					return client.FileSizes{}, err
				}
			}
			sctx, cancel := context.WithTimeout(ctx, sampleTimeout)
			defer cancel()
			return c.SampleSizes(sctx, ds, sampleDirs, sampleFiles)
		})
		for _, name := range slices.Sorted(maps.Keys(choices)) {
			slog.Info("open mode", "dataset", name, "mode", choices[name].Mode, "why", choices[name].Reason)
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
	var own []string
	f.zeroMessageOpens, own = openModes(cfg, root, f)
	return superviseMounts(ctx, mountpoint, f, own, func(mp, ds string, f mountFlags) *exec.Cmd {
		if ds == "" {
			ds = root
		}
		c := exec.Command(self, g.mountArgs(configPath, defs, mp, ds, f)...)
		c.Stdout, c.Stderr = g.stdout, g.stderr
		c.Env = append(os.Environ(), env)
		return c
	})
}

// How much of a dataset open_mode auto looks at: the first listings, within
// a bound of time (workers may still be starting).
const (
	sampleDirs    = 64
	sampleFiles   = 2000
	sampleTimeout = 20 * time.Second
)

// chooseOpenModes decides the open mode of each dataset of the mount (root
// alone when set): the configured one, or for open_mode auto the one
// mount.ChooseOpenMode picks from sample. A dataset that cannot be listed
// gets passthrough, and says why.
func chooseOpenModes(cfg *config.Config, root string, sample func(ds string) (client.FileSizes, error)) map[string]mount.OpenChoice {
	out := map[string]mount.OpenChoice{}
	for _, ds := range cfg.Datasets {
		if root != "" && ds.Name != root {
			continue
		}
		if ds.OpenMode != config.OpenAuto && ds.OpenMode != "" {
			out[ds.Name] = mount.OpenChoice{Mode: ds.OpenMode, Reason: "set in the configuration"}
			continue
		}
		sizes, err := sample(ds.Name)
		if err != nil {
			out[ds.Name] = mount.OpenChoice{Mode: config.OpenPassthrough, Reason: fmt.Sprintf("auto, but the dataset could not be listed (%v): passthrough", err)}
			continue
		}
		ch := mount.ChooseOpenMode(sizes, int64(max(ds.BlockSize, ds.WholeFile)))
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
