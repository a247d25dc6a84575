// Package cli holds granary's subcommands (cobra). Each command parses its
// flags and hands the work to the package that owns it; nothing here should
// be worth testing on its own beyond argument handling.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/granary-cache/granary/internal/client"
	"github.com/granary-cache/granary/internal/config"
	"github.com/granary-cache/granary/internal/version"
)

// globals are the flags every command shares.
type globals struct {
	configPath string
	datasets   []string // NAME=URI
	logLevel   string
	direct     bool // file commands read the UFS, not the cache
	stdout     io.Writer
	stderr     io.Writer
}

// Main runs the granary command line with args and returns the exit code.
func Main(args []string) int {
	return run(args, os.Stdout, os.Stderr)
}

func run(args []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	g := &globals{stdout: stdout, stderr: stderr}
	root := newRoot(g)
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintf(stderr, "granary: %v\n", err)
		return 1
	}
	return 0
}

func newRoot(g *globals) *cobra.Command {
	root := &cobra.Command{
		Use:   "granary",
		Short: "A distributed cache for AI-training data in front of CephFS, S3 and POSIX storage",
		Long: `granary caches training data from CephFS, Ceph RGW, any S3 service or a POSIX
path on the memory and SSDs of the nodes that read it.

Paths name a dataset first: /<dataset>/<path inside it>. Datasets come from
--config FILE (or $GRANARY_CONFIG) and from --dataset NAME=URI.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       version.Get().String(),
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			return g.setupLogging()
		},
	}
	root.SetVersionTemplate("{{.Version}}\n")
	pf := root.PersistentFlags()
	pf.StringVarP(&g.configPath, "config", "c", os.Getenv("GRANARY_CONFIG"), "configuration file (YAML); default $GRANARY_CONFIG")
	pf.StringArrayVarP(&g.datasets, "dataset", "d", nil, "add a dataset NAME=URI, e.g. demo=file:///data/demo (repeatable)")
	pf.StringVar(&g.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	pf.BoolVar(&g.direct, "direct", false, "ls, stat and cat read the UFS directly instead of through the cache workers")
	root.AddCommand(newVersionCmd(g), newConfigCmd(g), newLsCmd(g), newStatCmd(g), newCatCmd(g),
		newWorkerCmd(g), newUpCmd(g), newStatusCmd(g), newRefreshCmd(g), newMountCmd(g), newUmountCmd(g), newBenchCmd(g),
		newLoadCmd(g), newMemberCmd(g), newOperatorCmd(g), newCSICmd(g), newFluidCmd(g))
	return root
}

func (g *globals) setupLogging() error {
	var level slog.Level
	if err := level.UnmarshalText([]byte(g.logLevel)); err != nil {
		return fmt.Errorf("--log-level: %q is not one of debug, info, warn, error", g.logLevel)
	}
	slog.SetDefault(slog.New(slog.NewTextHandler(g.stderr, &slog.HandlerOptions{Level: level})))
	return nil
}

// loadConfig reads --config (if any) and adds the --dataset flags.
func (g *globals) loadConfig() (*config.Config, error) {
	var cfg *config.Config
	var err error
	if g.configPath != "" {
		cfg, err = config.Load(g.configPath)
	} else {
		cfg, err = config.Parse("defaults", nil)
	}
	if err != nil {
		return nil, err
	}
	for _, spec := range g.datasets {
		name, uri, ok := strings.Cut(spec, "=")
		if !ok {
			return nil, fmt.Errorf("--dataset %q: expected NAME=URI, e.g. demo=file:///data/demo", spec)
		}
		ds, err := config.FromURI(name, uri)
		if err != nil {
			return nil, err
		}
		if err := cfg.Add(ds); err != nil {
			return nil, fmt.Errorf("--dataset %s: %w", spec, err)
		}
	}
	return cfg, nil
}

// openClient loads the configuration and makes a client of its workers.
// Without --config, it uses the one configuration of this machine (see
// discoverConfig).
func (g *globals) openClient() (*client.Client, *config.Config, error) {
	if err := g.discoverConfig(); err != nil {
		return nil, nil, err
	}
	cfg, err := g.loadConfig()
	if err != nil {
		return nil, nil, err
	}
	c, err := client.New(cfg)
	if err != nil {
		return nil, nil, err
	}
	return c, cfg, nil
}

func newVersionCmd(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Print version, commit and Go version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if asJSON {
				return writeJSON(g.stdout, version.Get())
			}
			_, err := fmt.Fprintln(g.stdout, version.Get())
			return err
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func newConfigCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "config", Short: "Work with configuration files"}
	cmd.AddCommand(&cobra.Command{
		Use:   "check",
		Short: "Validate the configuration and print it resolved, with defaults filled in and secrets masked",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if g.configPath == "" && len(g.datasets) == 0 {
				return errors.New("nothing to check: give --config FILE")
			}
			cfg, err := g.loadConfig()
			if err != nil {
				return err
			}
			out, err := cfg.YAML()
			if err != nil {
				return err
			}
			_, err = g.stdout.Write(out)
			return err
		},
	})
	return cmd
}
