package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/granary-cache/granary/internal/config"
	"github.com/granary-cache/granary/internal/load"
	"github.com/granary-cache/granary/internal/membership"
	"github.com/granary-cache/granary/internal/operator"
	"github.com/granary-cache/granary/internal/wire"
)

func newLoadCmd(g *globals) *cobra.Command {
	var (
		o        load.Options
		asJSON   bool
		reportTo string
	)
	cmd := &cobra.Command{
		Use:   "load /DATASET/PATH-OR-GLOB... | load status",
		Short: "Warm a dataset across the cluster: every owner worker fetches its share from the UFS",
		Long: `load lists the paths through the workers (so that the listing is cached too) and
hands each worker the blocks it owns; the workers fetch them from the UFS in
parallel, within the dataset's ufs_limits, and the bytes never pass through this
process. A path may be a directory (everything under it), a file, or a glob
(path.Match within a name; ** for any number of directories).

It shows files and bytes done of the total, the rate, the time left and the
failures (--json: one JSON object per second, then the result). A second run
skips what is cached and says how much. Ctrl-C cancels every worker's part.
A worker that does not answer when the load starts is left out, and its share
goes to the next owner; one that dies during the load is reported, and the next
run loads its share on the next owner.

granary load status lists running and recent loads, from any machine.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, _, err := g.openClient()
			if err != nil {
				return err
			}
			defer c.Close()
			o.Targets = args
			show := g.loadProgress(asJSON)
			o.Progress = show.update
			var rep *operator.LoadReporter
			if reportTo != "" {
				if rep, err = openLoadReporter(cmd.Context(), reportTo); err != nil {
					return err
				}
				o.Progress = func(p wire.LoadProgress) { show.update(p); rep.Progress(p) }
			}
			res, err := load.Run(cmd.Context(), c, o)
			show.finish()
			if rep != nil {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				if rerr := rep.Finish(ctx, res, err); rerr != nil {
					fmt.Fprintf(g.stderr, "granary load: %v\n", rerr)
				}
				cancel()
			}
			if asJSON {
				// One line, like the progress lines before it.
				if werr := json.NewEncoder(g.stdout).Encode(res); werr != nil {
					return werr
				}
			} else {
				printLoadResult(g.stdout, res)
			}
			if errors.Is(err, context.Canceled) {
				return errors.New("load cancelled; run it again to resume: what is cached is skipped")
			}
			return err
		},
	}
	fl := cmd.Flags()
	fl.IntVar(&o.Replicas, "replicas", 0, "copies of each block to load (default: the dataset's replicas)")
	fl.BoolVar(&o.MetadataOnly, "metadata-only", false, "warm listings and file attributes only")
	fl.BoolVar(&asJSON, "json", false, "progress and result as JSON")
	fl.StringVar(&reportTo, "report-to", "", "also write the progress into a Kubernetes DataLoad's status: dataload/NAMESPACE/NAME (in a pod, or with $KUBECONFIG)")
	cmd.AddCommand(newLoadStatusCmd(g))
	return cmd
}

// openLoadReporter reaches the DataLoad that --report-to names and marks
// the load as running there.
func openLoadReporter(ctx context.Context, target string) (*operator.LoadReporter, error) {
	name, err := operator.ParseReportTarget(target)
	if err != nil {
		return nil, err
	}
	rc, err := membership.KubeConfig("")
	if err != nil {
		return nil, fmt.Errorf("--report-to: %w", err)
	}
	rep, err := operator.NewLoadReporter(ctx, rc, name)
	if err != nil {
		return nil, err
	}
	if err := rep.Start(ctx); err != nil {
		return nil, err
	}
	return rep, nil
}

func newLoadStatusCmd(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "List running and recent loads, as the workers remember them",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, _, err := g.openClient()
			if err != nil {
				return err
			}
			defer c.Close()
			loads, failed := load.List(cmd.Context(), c)
			if asJSON {
				return writeJSON(g.stdout, struct {
					Loads      []load.Summary    `json:"loads"`
					Unanswered map[string]string `json:"unanswered,omitempty"`
				}{loads, errStrings(failed)})
			}
			tw := tabwriter.NewWriter(g.stdout, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tDATASET\tSTATE\tFILES\tBYTES\tSKIPPED\tFAILED\tRATE\tSTARTED\tCLIENT\tPATHS")
			for _, l := range loads {
				p := l.Progress
				fmt.Fprintf(tw, "%s\t%s\t%s\t%d/%d\t%s/%s\t%s\t%d\t%s/s\t%s\t%s\t%s\n", l.ID, l.Dataset, l.State,
					p.FilesDone, p.Files, config.Size(p.BytesDone), config.Size(p.Bytes), config.Size(p.BytesSkipped), p.Failed,
					config.Size(int64(p.Rate)), l.Started.Local().Format(time.DateTime), l.Client, strings.Join(l.Paths, " "))
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			for id, err := range failed {
				fmt.Fprintf(g.stderr, "worker %s did not answer: %v\n", id, err)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func errStrings(m map[string]error) map[string]string {
	if len(m) == 0 {
		return nil
	}
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v.Error()
	}
	return out
}

// loadDisplay shows a load's progress: a bar on a terminal, a line every
// few seconds otherwise, JSON lines with --json.
type loadDisplay struct {
	out     io.Writer
	asJSON  bool
	bar     *progressbar.ProgressBar
	tty     bool
	last    time.Time
	started time.Time
}

func (g *globals) loadProgress(asJSON bool) *loadDisplay {
	d := &loadDisplay{out: g.stderr, asJSON: asJSON, started: time.Now()}
	if asJSON {
		d.out = g.stdout
	} else if f, ok := g.stderr.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		d.tty = true
	}
	return d
}

func (d *loadDisplay) update(p wire.LoadProgress) {
	now := time.Now()
	switch {
	case d.asJSON:
		if now.Sub(d.last) >= time.Second || p.State != wire.LoadLoading && p.State != wire.LoadListing {
			d.last = now
			json.NewEncoder(d.out).Encode(p)
		}
	case d.tty:
		if p.State == wire.LoadListing {
			return
		}
		if d.bar == nil {
			d.bar = progressbar.NewOptions64(max(p.Bytes, 1), progressbar.OptionSetWriter(d.out), progressbar.OptionShowBytes(true),
				progressbar.OptionSetPredictTime(true), progressbar.OptionThrottle(200*time.Millisecond), progressbar.OptionFullWidth())
		}
		d.bar.Describe(fmt.Sprintf("files %d/%d  failed %d", p.FilesDone, p.Files, p.Failed))
		d.bar.Set64(p.BytesDone)
	default:
		if now.Sub(d.last) >= 5*time.Second {
			d.last = now
			fmt.Fprintln(d.out, progressLine(p, now.Sub(d.started)))
		}
	}
}

func (d *loadDisplay) finish() {
	if d.bar != nil {
		d.bar.Finish()
		fmt.Fprintln(d.out)
	}
}

// progressLine says how far a load is in one line.
func progressLine(p wire.LoadProgress, elapsed time.Duration) string {
	eta := "-"
	if p.Rate > 0 && p.Bytes > p.BytesDone {
		eta = (time.Duration(float64(p.Bytes-p.BytesDone)/p.Rate) * time.Second / time.Second).Round(time.Second).String()
	}
	return fmt.Sprintf("%s: files %d/%d, %s/%s, %s/s, ETA %s, %d failed, %s elapsed", p.State, p.FilesDone, p.Files,
		config.Size(p.BytesDone), config.Size(p.Bytes), config.Size(int64(p.Rate)), eta, p.Failed, elapsed.Round(time.Second))
}

func printLoadResult(out io.Writer, res load.Result) {
	p := res.Progress
	fmt.Fprintf(out, "load %s of /%s: %s in %s\n", res.ID, res.Dataset, p.State, (time.Duration(res.Elapsed * float64(time.Second))).Round(time.Millisecond))
	fmt.Fprintf(out, "  %d directories listed, %d files (%s, counting each copy)\n", res.Dirs, p.Files, config.Size(p.Bytes))
	fmt.Fprintf(out, "  done: %d files, %s; already cached (skipped): %d files, %s; loaded at %s/s\n",
		p.FilesDone, config.Size(p.BytesDone), p.FilesSkipped, config.Size(p.BytesSkipped), config.Size(int64(p.Rate)))
	for id, err := range res.Unreachable {
		fmt.Fprintf(out, "  worker %s did not answer (%s): its share went to the next owners\n", id, err)
	}
	if p.Failed > 0 {
		fmt.Fprintf(out, "  %d blocks failed; run the load again to retry them (the next owner takes over a dead worker's share):\n", p.Failed)
		for i, f := range res.Failures {
			if i == 10 {
				fmt.Fprintf(out, "    ... (--json lists up to %d)\n", len(res.Failures))
				break
			}
			fmt.Fprintf(out, "    /%s/%s block %d on %s: %s\n", res.Dataset, f.Path, f.Index, f.Worker, f.Error)
		}
	}
}
