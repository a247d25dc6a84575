package cli

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/granary-cache/granary/internal/config"
	"github.com/granary-cache/granary/internal/fluid"
)

func newFluidCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "fluid",
		Short: "Serve as a runtime of Fluid (fluid-cloudnative): ThinRuntime FUSE entrypoint and cache-runtime commands",
	}
	cmd.AddCommand(newFluidThinCmd(g))
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
