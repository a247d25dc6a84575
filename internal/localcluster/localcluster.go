// Package localcluster brings up a complete granary on one machine: one or
// more workers, each with its own MEM and SSD tiers and its own ports on
// loopback, and a client configuration that reaches them. It is what
// `granary up` runs, and what tests use to exercise placement on one host.
package localcluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"go.yaml.in/yaml/v3"

	"github.com/granary-cache/granary/internal/config"
	"github.com/granary-cache/granary/internal/membership"
	"github.com/granary-cache/granary/internal/worker"
)

// Options say what to bring up.
type Options struct {
	// Config holds the datasets (and any worker settings to start from).
	Config *config.Config
	// Workers is how many workers to start (default 1).
	Workers int
	// StateDir holds each worker's SSD tier, socket and journal, and the
	// client configuration.
	StateDir string
	// MemDir is where the MEM tiers go (default /dev/shm/granary).
	MemDir string
	// MemQuota and SSDQuota size each worker's tiers; 0 leaves a tier out.
	MemQuota, SSDQuota int64
	Log                *slog.Logger
}

// Cluster is a running set of workers.
type Cluster struct {
	Workers []*worker.Worker
	// Client is the configuration a reader needs: datasets and membership.
	Client *config.Config
	// ConfigPath is where Client was written, for other processes.
	ConfigPath string

	memRoot string // this cluster's MEM tiers, released when it stops
}

// Start binds every worker and writes the client configuration; Serve runs
// them.
func Start(o Options) (*Cluster, error) {
	if o.Workers <= 0 {
		o.Workers = 1
	}
	if o.MemDir == "" {
		o.MemDir = config.DefaultMemPath
	}
	if o.MemQuota == 0 && o.SSDQuota == 0 {
		return nil, errors.New("localcluster: every tier quota is 0")
	}
	state, err := filepath.Abs(o.StateDir)
	if err != nil {
		return nil, err
	}
	c := &Cluster{}
	if o.MemQuota > 0 {
		// Under the MEM directory, a name unique to this state dir, so that
		// two clusters on one host never share a tier.
		c.memRoot = filepath.Join(o.MemDir, filepath.Base(state)+"-"+shortHash(state))
	}
	var members []config.Member
	for i := range o.Workers {
		id := fmt.Sprintf("w%d", i+1)
		cfg := *o.Config
		w := cfg.Worker
		w.ID = id
		w.Listen, w.Admin = "127.0.0.1:0", "127.0.0.1:0"
		w.StateDir = filepath.Join(state, id)
		w.Socket = filepath.Join(w.StateDir, "worker.sock")
		w.Tiers = nil
		if c.memRoot != "" {
			w.Tiers = append(w.Tiers, config.Tier{Name: "MEM", Path: filepath.Join(c.memRoot, id),
				Quota: config.Size(o.MemQuota), High: config.DefaultHigh, Low: config.DefaultLow})
		}
		if o.SSDQuota > 0 {
			w.Tiers = append(w.Tiers, config.Tier{Name: "SSD", Path: filepath.Join(w.StateDir, "ssd"),
				Quota: config.Size(o.SSDQuota), High: config.DefaultHigh, Low: config.DefaultLow})
		}
		cfg.Worker = w
		wk, err := worker.New(&cfg, o.Log)
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("worker %s: %w", id, err)
		}
		c.Workers = append(c.Workers, wk)
		members = append(members, config.Member{ID: id, Addr: wk.Addr(), Socket: wk.Socket(), Host: cfg.Worker.Host, Weight: 1})
	}
	for _, wk := range c.Workers {
		ms := make([]membership.Member, len(members))
		for i, m := range members {
			ms[i] = membership.Member{ID: m.ID, Addr: m.Addr, Socket: m.Socket, Host: m.Host, Weight: m.Weight}
		}
		src, err := membership.NewStatic(ms)
		if err != nil {
			c.Close()
			return nil, err
		}
		wk.UseMembership(src)
	}
	cc := *o.Config
	cc.Membership = config.Membership{Type: "static", Workers: members}
	c.Client = &cc
	c.ConfigPath = filepath.Join(state, "granary.yaml")
	if err := writeConfig(c.ConfigPath, &cc); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// Serve runs every worker until ctx ends, then releases the MEM tiers: a
// tmpfs keeps its files in memory after their process is gone, so a cache
// left there would hold the host's RAM for nobody. The SSD tiers stay in
// the state directory for the next run.
func (c *Cluster) Serve(ctx context.Context) error {
	errs := make(chan error, len(c.Workers))
	for _, w := range c.Workers {
		go func() { errs <- w.Serve(ctx) }()
	}
	var all []error
	for range c.Workers {
		all = append(all, <-errs)
	}
	all = append(all, c.releaseMem())
	return errors.Join(all...)
}

// Close releases workers that were started but never served. It leaves
// the MEM tiers alone: Start may have failed because another cluster
// serves the same state directory, and they would be its tiers.
func (c *Cluster) Close() {
	for _, w := range c.Workers {
		w.Close()
	}
}

func (c *Cluster) releaseMem() error {
	if c.memRoot == "" {
		return nil
	}
	if err := os.RemoveAll(c.memRoot); err != nil {
		return fmt.Errorf("release the MEM tiers: %w", err)
	}
	return nil
}

// writeConfig writes the client configuration. It holds the datasets'
// resolved options, secrets included, so only its owner may read it.
func writeConfig(path string, cfg *config.Config) error {
	out := struct {
		Datasets   []clientDataset   `yaml:"datasets"`
		Worker     map[string]any    `yaml:"worker"`
		Membership config.Membership `yaml:"membership"`
		// Auth: the clients of workers with a token or TLS need it too.
		Auth config.Auth `yaml:"auth,omitempty"`
	}{
		Worker:     map[string]any{"block_size": cfg.Worker.BlockSize, "page_size": cfg.Worker.PageSize},
		Membership: cfg.Membership,
		Auth:       cfg.Auth,
	}
	for _, ds := range cfg.Datasets {
		out.Datasets = append(out.Datasets, clientDataset{Name: ds.Name, UFS: ds.UFS, Options: ds.Options,
			MetadataSync: ds.MetadataSync, Replicas: ds.Replicas, Fallback: ds.Fallback, BlockSize: ds.BlockSize, WholeFile: ds.WholeFile, OpenMode: ds.OpenMode, NearCache: ds.NearCache})
	}
	b, err := yaml.Marshal(out)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, append([]byte("# Written by granary up: the workers it started, for clients.\n"), b...), 0o600)
}

type clientDataset struct {
	Name         string            `yaml:"name"`
	UFS          string            `yaml:"ufs"`
	Options      map[string]string `yaml:"options,omitempty"`
	MetadataSync config.Sync       `yaml:"metadata_sync"`
	Replicas     int               `yaml:"replicas"`
	Fallback     string            `yaml:"fallback"`
	BlockSize    config.Size       `yaml:"block_size"`
	// WholeFile is written as resolved: the block size written above would
	// otherwise turn whole-file blocks off for the clients.
	WholeFile config.Size `yaml:"whole_file,omitempty"`
	OpenMode  string      `yaml:"open_mode"`
	NearCache bool        `yaml:"near_cache,omitempty"`
}

func shortHash(s string) string {
	var h uint32 = 2166136261
	for i := range len(s) {
		h = (h ^ uint32(s[i])) * 16777619
	}
	return fmt.Sprintf("%08x", h)
}
