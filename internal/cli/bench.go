package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"

	"github.com/granary-cache/granary/internal/bench"
	"github.com/granary-cache/granary/internal/config"
	"github.com/granary-cache/granary/internal/dataset"
)

func newBenchCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Generate training-shaped datasets and read them like a training job, against baselines",
	}
	cmd.AddCommand(newBenchGenCmd(g), newBenchRunCmd(g))
	return cmd
}

func newBenchGenCmd(g *globals) *cobra.Command {
	var (
		o                 bench.GenOptions
		uri, to           string
		scale, fileSize   string
		shardMin, shardMx string
		writers           int
		quiet             bool
	)
	cmd := &cobra.Command{
		Use:   "gen (--ufs URI | --to DATASET) --profile imagenet|shards|records|meta",
		Short: "Write a synthetic dataset (deterministic for a seed) to a directory or a bucket",
		Long: `gen writes a synthetic dataset, the same bytes for the same flags and seed:
  imagenet  directories of ~110 KiB files (log-normal sizes), --scale bytes in all
  shards    WebDataset-style tar files of 256 MiB to 1 GiB of samples
  records   a few large files, read at random offsets by 'bench run'
  meta      a three-level tree of empty files (--scale is the number of files)
--ufs takes a file:// or s3:// URI (S3 keys from the environment, as for the
AWS CLI); --to names a dataset of --config, with its options. To write CephFS, use
file:// on a ceph-fuse or kernel mount.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var err error
			if o.Scale, err = sizeOrCount(scale, o.Profile); err != nil {
				return fmt.Errorf("--scale: %w", err)
			}
			for _, s := range []struct {
				flag, val string
				dst       *int64
			}{{"--file-size", fileSize, &o.FileSize}, {"--shard-min", shardMin, &o.ShardMin}, {"--shard-max", shardMx, &o.ShardMax}} {
				if s.val == "" {
					continue
				}
				v, err := config.ParseSize(s.val)
				if err != nil {
					return fmt.Errorf("%s: %w", s.flag, err)
				}
				*s.dst = int64(v)
			}
			ds, err := g.benchDataset(uri, to)
			if err != nil {
				return err
			}
			if !slices.Contains(bench.Profiles, o.Profile) {
				return fmt.Errorf("unknown profile %q (profiles: %v)", o.Profile, bench.Profiles)
			}
			if ds.URI.Scheme == "file" {
				// A new dataset goes into a new directory.
				if err := os.MkdirAll(ds.URI.Path, 0o755); err != nil {
					return fmt.Errorf("%s: %w", ds.URI, err)
				}
			}
			backend, err := dataset.OpenBackend(ds.URI, ds.Options)
			if err != nil {
				return fmt.Errorf("%s: %w", ds.URI, err)
			}
			defer backend.Close()
			sink, ok := backend.(bench.Sink)
			if !ok {
				return fmt.Errorf("%s: gen cannot write to %s:// (for CephFS, write to a ceph-fuse or kernel mount with file://)", ds.URI, ds.URI.Scheme)
			}
			if b, ok := backend.(interface{ CreateBucket(context.Context) error }); ok {
				if err := b.CreateBucket(cmd.Context()); err != nil {
					return fmt.Errorf("%s: %w", ds.URI, err)
				}
			}
			files, err := bench.Manifest(o)
			if err != nil {
				return err
			}
			var planned int64
			for _, f := range files {
				planned += f.Size
			}
			var bar *progressbar.ProgressBar
			progress := func(int64) {}
			if !quiet {
				// By bytes, so that the ETA holds for files of unequal
				// sizes; by files for trees of empty ones (meta).
				opts := []progressbar.Option{progressbar.OptionSetWriter(g.stderr),
					progressbar.OptionSetDescription(fmt.Sprintf("gen %s → %s", o.Profile, ds.URI)),
					progressbar.OptionSetPredictTime(true), progressbar.OptionShowElapsedTimeOnFinish(), progressbar.OptionThrottle(100 * time.Millisecond)}
				if planned > 0 {
					bar = progressbar.NewOptions64(planned, append(opts, progressbar.OptionShowBytes(true))...)
					progress = func(n int64) { bar.Add64(n) }
				} else {
					bar = progressbar.NewOptions64(int64(len(files)), append(opts, progressbar.OptionShowCount())...)
					progress = func(int64) { bar.Add(1) }
				}
			}
			start := time.Now()
			_, written, err := bench.Generate(cmd.Context(), o, sink, writers, progress)
			if bar != nil {
				bar.Finish()
				fmt.Fprintln(g.stderr)
			}
			if err != nil {
				return err
			}
			fmt.Fprintf(g.stdout, "wrote %d files, %.1f MB, profile %s, seed %d, to %s in %v\n", len(files), float64(written)/1e6, o.Profile, o.Seed, ds.URI, time.Since(start).Round(time.Millisecond))
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&uri, "ufs", "", "where to write: file:///DIR or s3://BUCKET/PREFIX")
	fl.StringVar(&to, "to", "", "or: the name of a dataset of --config")
	fl.StringVar(&o.Profile, "profile", "imagenet", "imagenet, shards, records or meta")
	fl.StringVar(&scale, "scale", "", "total size, e.g. 10GiB (meta: a number of files); default 1GiB, 4GiB, 2GiB, 100000")
	fl.Uint64Var(&o.Seed, "seed", 1, "the same seed writes the same bytes")
	fl.StringVar(&fileSize, "file-size", "", "imagenet: mean file size (default 110KiB)")
	fl.Float64Var(&o.SizeSpread, "size-spread", 0, "imagenet: sigma of the log-normal file sizes (default 0.5)")
	fl.IntVar(&o.FilesPerDir, "files-per-dir", 0, "imagenet (default 500), meta (default 100)")
	fl.StringVar(&shardMin, "shard-min", "", "shards: smallest shard (default 256MiB)")
	fl.StringVar(&shardMx, "shard-max", "", "shards: largest shard (default 1GiB)")
	fl.IntVar(&o.Records, "records", 0, "records: number of files (default 4)")
	fl.IntVar(&writers, "writers", 8, "files written at once")
	fl.BoolVar(&quiet, "quiet", false, "no progress bar")
	return cmd
}

// sizeOrCount reads --scale: a size, or for meta a number of files.
func sizeOrCount(s, profile string) (int64, error) {
	if s == "" {
		return 0, nil
	}
	if profile == "meta" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil || n <= 0 {
			return 0, fmt.Errorf("%q: the meta profile takes a number of files", s)
		}
		return n, nil
	}
	v, err := config.ParseSize(s)
	if err != nil {
		return 0, err
	}
	if v <= 0 {
		return 0, fmt.Errorf("%q: want a positive size", s)
	}
	return int64(v), nil
}

// benchDataset resolves --ufs URI or --to NAME to a dataset with options.
func (g *globals) benchDataset(uri, name string) (config.Dataset, error) {
	switch {
	case uri != "" && name != "":
		return config.Dataset{}, fmt.Errorf("give --ufs or --to, not both")
	case uri != "":
		return config.FromURI("bench", uri)
	case name != "":
		cfg, err := g.loadConfig()
		if err != nil {
			return config.Dataset{}, err
		}
		ds, ok := cfg.Dataset(name)
		if !ok {
			return config.Dataset{}, fmt.Errorf("--to %s: no such dataset in the configuration", name)
		}
		return *ds, nil
	}
	return config.Dataset{}, fmt.Errorf("where to? give --ufs URI or --to DATASET")
}

func newBenchRunCmd(g *globals) *cobra.Command {
	var (
		o            bench.RunOptions
		paths, bases []string
		jsonOut      string
		pngOut       string
		mdsSocket    string
		quiet        bool
	)
	cmd := &cobra.Command{
		Use:   "run --path [NAME=]DIR_OR_URI [--baseline [NAME=]DIR_OR_URI]... --profile P",
		Short: "Read a dataset like a training job: shuffled epochs, concurrent readers, against baselines",
		Long: `run reads the whole dataset once per epoch in a new shuffled order (seeded), with
--readers concurrent readers; for the records profile it makes random reads of
4 KiB to 1 MiB instead. Each --path and --baseline is a directory (a granary mount,
a local copy, a ceph-fuse or rclone mount), or a UFS read directly, without
cache: a URI, or dataset:NAME for a dataset of --config with its options. Epochs alternate between targets: epoch 1 of each, then epoch 2 of each...

With --config, the UFS operations of the granary workers are reported per epoch;
with --mds-admin-socket, the CephFS MDS's requests. The CPU time of every granary
process of this machine and of the reader itself is reported too.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			var targets []bench.NamedTarget
			defer func() {
				for _, t := range targets {
					t.Target.Close()
				}
			}()
			for _, group := range []struct {
				specs    []string
				baseline bool
			}{{paths, false}, {bases, true}} {
				for _, spec := range group.specs {
					t, err := g.openTarget(spec, group.baseline)
					if err != nil {
						return err
					}
					targets = append(targets, t)
				}
			}
			if len(paths) == 0 {
				return fmt.Errorf("--path is required")
			}
			if g.configPath != "" {
				c, _, err := g.openClient()
				if err != nil {
					return err
				}
				defer c.Close()
				o.Probes.UFS = bench.WorkersUFS(c)
			}
			if mdsSocket != "" {
				o.Probes.MDSRequests = bench.MDSRequests(mdsSocket)
				if _, err := o.Probes.MDSRequests(ctx); err != nil {
					return err
				}
			}
			o.Probes.GranaryCPU = bench.GranaryCPU
			var bar *progressbar.ProgressBar
			if !quiet {
				o.Progress = func(done, total int64, what string) {
					if bar == nil || done == 1 {
						if bar != nil {
							bar.Finish()
							fmt.Fprintln(g.stderr)
						}
						bar = progressbar.NewOptions64(total, progressbar.OptionSetWriter(g.stderr), progressbar.OptionSetDescription(what),
							progressbar.OptionShowCount(), progressbar.OptionShowIts(), progressbar.OptionSetItsString("reads"),
							progressbar.OptionSetPredictTime(true), progressbar.OptionThrottle(100*time.Millisecond))
					}
					bar.Set64(done)
				}
			}
			rep, err := bench.Run(ctx, targets, o)
			if bar != nil {
				bar.Finish()
				fmt.Fprintln(g.stderr)
			}
			if err != nil {
				return err
			}
			if err := rep.WriteTable(g.stdout); err != nil {
				return err
			}
			if jsonOut != "" {
				if err := writeFile(jsonOut, rep.WriteJSON); err != nil {
					return err
				}
			}
			if pngOut != "" {
				if err := rep.WritePNG(pngOut); err != nil {
					return fmt.Errorf("--png: %w", err)
				}
			}
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringArrayVar(&paths, "path", nil, "what to measure: [NAME=]DIR, URI or dataset:NAME (repeatable)")
	fl.StringArrayVar(&bases, "baseline", nil, "what to compare with: [NAME=]DIR, URI, or dataset:NAME (a dataset of --config read straight from its UFS)")
	fl.StringVar(&o.Profile, "profile", "imagenet", "imagenet, shards, records or meta (the shape written by bench gen)")
	fl.IntVar(&o.Epochs, "epochs", 3, "passes over the dataset")
	fl.IntVar(&o.Readers, "readers", 16, "concurrent readers, like DataLoader workers")
	fl.IntVar(&o.Batch, "batch", 0, "each reader reads this many files at once and waits for all (0: one at a time)")
	fl.Uint64Var(&o.Seed, "seed", 1, "seed of the shuffles and random reads")
	fl.IntVar(&o.RecordReads, "record-reads", 0, "records: random reads per epoch (default: about the dataset's size)")
	fl.BoolVar(&o.DropCaches, "drop-caches", false, "drop the kernel's page cache before every epoch (root)")
	fl.StringVar(&jsonOut, "json", "", "write the report as JSON to this file")
	fl.StringVar(&pngOut, "png", "", "draw throughput and latency to this PNG file")
	fl.StringVar(&mdsSocket, "mds-admin-socket", "", "count the CephFS MDS's requests through its admin socket")
	fl.BoolVar(&quiet, "quiet", false, "no progress bar")
	return cmd
}

// openTarget opens [NAME=]DIR, [NAME=]URI or [NAME=]dataset:DATASET (a
// dataset of --config, read directly through its UFS with its options).
func (g *globals) openTarget(spec string, baseline bool) (bench.NamedTarget, error) {
	name, where, ok := strings.Cut(spec, "=")
	if !ok || strings.Contains(name, "/") {
		name, where = "", spec
	}
	role := "--path"
	if baseline {
		role = "--baseline"
	}
	t := bench.NamedTarget{Name: name, Path: where, Baseline: baseline}
	if dsName, ok := strings.CutPrefix(where, "dataset:"); ok || strings.Contains(where, "://") {
		var ds config.Dataset
		var err error
		if ok {
			ds, err = g.benchDataset("", dsName)
		} else {
			ds, err = config.FromURI("bench", where)
		}
		if err != nil {
			return t, fmt.Errorf("%s %s: %w", role, spec, err)
		}
		backend, err := dataset.OpenBackend(ds.URI, ds.Options)
		if err != nil {
			return t, fmt.Errorf("%s %s: %w", role, spec, err)
		}
		t.Target = &bench.UFSTarget{FS: backend}
	} else {
		d, err := bench.OpenDir(where)
		if err != nil {
			return t, fmt.Errorf("%s %s: %w", role, spec, err)
		}
		t.Target = d
	}
	if t.Name == "" {
		t.Name = where
	}
	return t, nil
}

// writeFile writes a file through fn, reporting the file in errors.
func writeFile(path string, fn func(w io.Writer) error) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := fn(f); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	return f.Close()
}
