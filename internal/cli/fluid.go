package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/granary-cache/granary/internal/client"
	"github.com/granary-cache/granary/internal/config"
	"github.com/granary-cache/granary/internal/fluid"
	"github.com/granary-cache/granary/internal/load"
)

func newFluidCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "fluid",
		Short: "Serve as a runtime of Fluid (fluid-cloudnative): ThinRuntime FUSE entrypoint and cache-runtime commands",
	}
	cmd.AddCommand(newFluidThinCmd(g), newFluidMountUFSCmd(g), newFluidReportSummaryCmd(g), newFluidLoadCmd(g))
	return cmd
}

// fluidSource says where the cache-runtime commands find the granary
// configuration: --config or --dataset if given, else Fluid's
// configuration (--config-file, $FLUID_RUNTIME_CONFIG_PATH, then
// ThinRuntime's paths), else this machine's one configuration.
type fluidSource struct {
	configFile string
	secretsDir string
	writeTo    string
}

func (s *fluidSource) register(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringVar(&s.configFile, "config-file", "", "Fluid's runtime.json or config.json (default $"+fluid.RuntimeConfigEnv+", then "+fluid.ConfigPath+"); ignored with --config")
	fl.StringVar(&s.secretsDir, "secrets-dir", fluid.SecretsDir, "where Fluid mounts encryptOptions' Secrets")
	fl.StringVar(&s.writeTo, "write-config", filepath.Join(os.TempDir(), "granary-fluid", "granary-runtime.yaml"), "where to write the granary configuration made of Fluid's")
}

// open makes a client of the configuration, and says the Fluid mounts it
// came from (none with --config) and their datasets, in their order.
func (s *fluidSource) open(g *globals) (*client.Client, []fluid.Mount, []string, error) {
	if g.configPath == "" && len(g.datasets) == 0 {
		tc, from, err := fluid.ReadThinConfig(s.configFile)
		switch {
		case err == nil:
			if tc.TargetPath == "" {
				tc.TargetPath = "/" // unused here: only the FUSE client mounts
			}
			tr, err := fluid.Translate(tc, fluid.TranslateOptions{SecretsDir: s.secretsDir})
			if err != nil {
				return nil, nil, nil, fmt.Errorf("%s: %w", from, err)
			}
			if err := os.MkdirAll(filepath.Dir(s.writeTo), 0o755); err != nil {
				return nil, nil, nil, err
			}
			if err := os.WriteFile(s.writeTo, tr.Config, 0o600); err != nil {
				return nil, nil, nil, err
			}
			cfg, err := config.Load(s.writeTo)
			if err != nil {
				return nil, nil, nil, fmt.Errorf("the granary configuration made of %s: %w", from, err)
			}
			c, err := client.New(cfg)
			if err != nil {
				return nil, nil, nil, err
			}
			return c, tc.Mounts, tr.Datasets, nil
		case s.configFile != "" || from != "":
			return nil, nil, nil, err
		}
	}
	c, _, err := g.openClient()
	if err != nil {
		return nil, nil, nil, err
	}
	return c, nil, c.Datasets(), nil
}

func printJSONLine(g *globals, v any) error {
	return json.NewEncoder(g.stdout).Encode(v)
}

func newFluidMountUFSCmd(g *globals) *cobra.Command {
	var (
		src  fluidSource
		wait time.Duration
	)
	cmd := &cobra.Command{
		Use:   "mount-ufs",
		Short: "Fluid CacheRuntime's mountUFS: check that the workers serve the Dataset's mounts and print them as JSON",
		Long: `mount-ufs is the mountUFS entry of granary's CacheRuntimeClass. granary's
workers serve the datasets of their configuration, so there is nothing to mount:
it checks, waiting up to --wait, that the workers answer for each dataset (of
--config, or made of Fluid's configuration as ` + "`granary fluid thin`" + ` makes them) and
prints {"mounted":[...]}: each Fluid mount's path in the runtime (its path, or
/NAME), or /DATASET with --config. It fails, after printing, when some are not
served.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, mounts, datasets, err := src.open(g)
			if err != nil {
				return err
			}
			defer c.Close()
			served := map[string]error{}
			deadline := time.Now().Add(wait)
			for {
				for _, ds := range datasets {
					if err, done := served[ds]; done && err == nil {
						continue
					}
					ctx, cancel := context.WithTimeout(cmd.Context(), 10*time.Second)
					_, err := c.Stat(ctx, "/"+ds)
					cancel()
					served[ds] = err
				}
				var missing int
				for _, err := range served {
					if err != nil {
						missing++
					}
				}
				if missing == 0 || !time.Now().Before(deadline) || cmd.Context().Err() != nil {
					break
				}
				time.Sleep(time.Second)
			}
			out := fluid.Mounted(mounts, datasets, func(ds string) bool { return served[ds] == nil })
			if err := printJSONLine(g, out); err != nil {
				return err
			}
			var errs []error
			for _, ds := range datasets {
				if err := served[ds]; err != nil {
					errs = append(errs, fmt.Errorf("dataset %s is not served: %w", ds, err))
				}
			}
			return errors.Join(errs...)
		},
	}
	src.register(cmd)
	cmd.Flags().DurationVar(&wait, "wait", 15*time.Second, "how long to wait for the workers to serve every dataset")
	return cmd
}

func newFluidReportSummaryCmd(g *globals) *cobra.Command {
	var src fluidSource
	cmd := &cobra.Command{
		Use:   "report-summary",
		Short: "Fluid CacheRuntime's reportSummary: the cache's figures as JSON",
		Long: `report-summary is the reportSummary entry of granary's CacheRuntimeClass. It
asks every worker for its status and prints one line of JSON:

  cached            what the workers hold of the Dataset's datasets (all with
                    --config), e.g. "1.50GiB"
  cachedPercentage  cached over the datasets' size on the UFS times their
                    replicas, as granary status shows it ("0.0%" until the
                    size is measured)
  cacheCapacity     the workers' tiers together
  cacheHitRatio     page hits over page reads on the workers
  fileNum, ufsTotal the datasets' files and size on the UFS, once measured

Workers that do not answer count for nothing (see granary status).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, mounts, datasets, err := src.open(g)
			if err != nil {
				return err
			}
			defer c.Close()
			st := c.ClusterStatus(cmd.Context())
			var only []string
			if len(mounts) > 0 {
				only = datasets
			}
			for _, w := range st.Members {
				if w.Error != "" {
					slog.Warn("worker did not answer", "worker", w.ID, "err", w.Error)
				}
			}
			return printJSONLine(g, fluid.Summarize(st, only))
		},
	}
	src.register(cmd)
	return cmd
}

// Variables Fluid sets in a CacheRuntime's DataLoad job.
const (
	envDataLoadPaths    = "FLUID_DATALOAD_DATA_PATH"
	envDataLoadReplicas = "FLUID_DATALOAD_PATH_REPLICAS"
)

func newFluidLoadCmd(g *globals) *cobra.Command {
	var (
		src      fluidSource
		replicas int
	)
	cmd := &cobra.Command{
		Use:   "load [PATH...]",
		Short: "Fluid CacheRuntime's DataLoad: warm paths with granary load and print the result as JSON",
		Long: `load is the DataLoad operation of granary's CacheRuntimeClass. It warms the
paths (default: $` + envDataLoadPaths + `, separated by ':'; none: every
mount) as granary load does, one load per dataset, and prints one line of JSON
when it ends: its state (done or failed), files and bytes, and each dataset's
result. Paths are Fluid's, in the runtime (/MOUNT-PATH/...), when the
configuration comes from Fluid, and granary's (/DATASET/...) with --config.
Replicas: --replicas, else the largest of $` + envDataLoadReplicas + `, else the
datasets' own.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			paths := args
			if len(paths) == 0 {
				paths = strings.Split(os.Getenv(envDataLoadPaths), ":")
			}
			if replicas == 0 {
				for _, r := range strings.Split(os.Getenv(envDataLoadReplicas), ":") {
					if n, err := strconv.Atoi(strings.TrimSpace(r)); err == nil && n > replicas {
						replicas = n
					}
				}
			}
			c, mounts, datasets, err := src.open(g)
			if err != nil {
				return err
			}
			defer c.Close()
			var nonEmpty []string
			for _, p := range paths {
				if p = strings.TrimSpace(p); p != "" {
					nonEmpty = append(nonEmpty, p)
				}
			}
			if len(nonEmpty) == 0 {
				// Everything: the root of every mount.
				for i, ds := range datasets {
					if i < len(mounts) {
						nonEmpty = append(nonEmpty, fluid.UFSPath(mounts[i]))
					} else {
						nonEmpty = append(nonEmpty, "/"+ds)
					}
				}
			}
			order, targets, err := fluid.LoadTargets(nonEmpty, mounts, datasets)
			if err != nil {
				return err
			}
			var results []load.Result
			var errs []error
			for _, ds := range order {
				slog.Info("loading", "dataset", ds, "targets", targets[ds])
				res, err := load.Run(cmd.Context(), c, load.Options{Targets: targets[ds], Replicas: replicas})
				results = append(results, res)
				if err != nil {
					errs = append(errs, fmt.Errorf("%s: %w", ds, err))
				}
				if cmd.Context().Err() != nil {
					break
				}
			}
			runErr := errors.Join(errs...)
			if err := printJSONLine(g, fluid.SummarizeLoads(results, runErr)); err != nil {
				return err
			}
			return runErr
		},
	}
	src.register(cmd)
	cmd.Flags().IntVar(&replicas, "replicas", 0, "copies of each block to load")
	return cmd
}

func newFluidThinCmd(g *globals) *cobra.Command {
	var (
		f          mountFlags
		configFile string
		writeTo    string
		printOnly  bool
		secretsDir string
	)
	cmd := &cobra.Command{
		Use:   "thin",
		Short: "The FUSE entrypoint of a Fluid ThinRuntime: mount the Dataset's mounts at Fluid's target path",
		Long: `thin reads the configuration Fluid gives a ThinRuntime's FUSE container
(` + fluid.ConfigPath + `, or ` + fluid.LegacyConfigPath + ` before Fluid 1.1, or
--config-file), makes each of the Dataset's mounts a granary dataset, writes the
granary configuration to --write-config and mounts it at the target path, as
` + "`granary mount`" + ` does: a lone mount is the target path itself, several are each a
directory named by its path or name. It runs until SIGTERM, then unmounts.

The ThinRuntime's options (spec.fuse.options of the profile or runtime) say where
the workers are: granary.membership.cluster and granary.membership.namespace (the
Leases of the workers a granary CacheRuntime runs), or granary.membership.workers
(ID=HOST:PORT,...), or granary.membership.endpoints (etcd); granary.auth.token_file;
granary.config (a granary YAML file whose membership, auth and client sections and
same-named datasets' settings are kept); granary.dataset.FIELD (a dataset setting
such as metadata_sync for every mount). A mount's options are granary's (or the
Alluxio/s3a names); encryptOptions are read from their files.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			tc, from, err := fluid.ReadThinConfig(configFile)
			if err != nil {
				return err
			}
			tr, err := fluid.Translate(tc, fluid.TranslateOptions{SecretsDir: secretsDir})
			if err != nil {
				return fmt.Errorf("%s: %w", from, err)
			}
			for _, w := range tr.Warnings {
				slog.Warn(w, "config", from)
			}
			if printOnly {
				_, err := g.stdout.Write(tr.Config)
				return err
			}
			if err := os.MkdirAll(filepath.Dir(writeTo), 0o755); err != nil {
				return err
			}
			if err := os.WriteFile(writeTo, tr.Config, 0o600); err != nil {
				return err
			}
			cfg, err := config.Load(writeTo) // reads the secrets' files: a missing one fails here
			if err != nil {
				return fmt.Errorf("the granary configuration made of %s: %w", from, err)
			}
			if err := os.MkdirAll(tr.TargetPath, 0o755); err != nil {
				return err
			}
			self, err := os.Executable()
			if err != nil {
				return err
			}
			g.configPath, g.datasets = writeTo, nil
			// Fluid's application pods read the mount as any user.
			f.allowOther = true
			// Fluid's CSI plugin binds the mount into pods without the
			// mounts below it: a directory's connection of its own would
			// not reach them.
			f.oneConnection = true
			slog.Info("mounting for Fluid", "config", from, "target", tr.TargetPath, "datasets", tr.Datasets, "root", tr.Root, "granary_config", writeTo)
			return g.mountNamespace(cmd.Context(), cfg, tr.Root, tr.TargetPath, f, self, writeTo, nil)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&configFile, "config-file", "", "Fluid's config.json (default "+fluid.ConfigPath+", then "+fluid.LegacyConfigPath+")")
	fl.StringVar(&writeTo, "write-config", filepath.Join(os.TempDir(), "granary-fluid", "granary.yaml"), "where to write the granary configuration made of it")
	fl.StringVar(&secretsDir, "secrets-dir", fluid.SecretsDir, "where Fluid mounts encryptOptions' Secrets: an option whose value is a file below it is read from it")
	fl.BoolVar(&printOnly, "print", false, "print the granary configuration and exit without mounting")
	f.register(cmd, "")
	return cmd
}
