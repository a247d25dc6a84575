package bench

import (
	"encoding/json"
	"fmt"
	"image/color"
	"io"
	"math"
	"os"
	"slices"
	"text/tabwriter"
	"time"

	"github.com/granary-cache/granary/internal/bench/chart"
	"github.com/granary-cache/granary/internal/ufs"
)

// Report is what run measured, as written by --json.
type Report struct {
	Profile   string    `json:"profile"`
	Epochs    int       `json:"epochs"`
	Readers   int       `json:"readers"`
	Batch     int       `json:"batch"`
	Seed      uint64    `json:"seed"`
	Started   time.Time `json:"started"`
	PageCache string    `json:"page_cache"`
	// WarmUp says what the first epoch measures.
	WarmUp string `json:"warm_up"`
	// Files and Bytes are the dataset as the first target's walk saw it.
	Files   int64          `json:"files"`
	Bytes   int64          `json:"bytes"`
	Targets []TargetReport `json:"targets"`
	// Warnings say what could not be measured (a probe that failed, a
	// target that held other files than the first), once each.
	Warnings []string `json:"warnings,omitempty"`
}

// TargetReport is one target's epochs.
type TargetReport struct {
	Name     string  `json:"name"`
	Path     string  `json:"path"`
	Baseline bool    `json:"baseline"`
	Epochs   []Epoch `json:"epochs"`
}

// Epoch is one epoch of one target.
type Epoch struct {
	Epoch        int          `json:"epoch"`
	Seconds      float64      `json:"seconds"`
	WalkSeconds  float64      `json:"walk_seconds"`
	Reads        int64        `json:"reads"`
	Bytes        int64        `json:"bytes"`
	MBps         float64      `json:"mb_per_s"`
	ReadsPerS    float64      `json:"files_per_s"`
	Latency      Percentiles  `json:"latency_ms"`
	FirstByte    Percentiles  `json:"first_byte_ms"`
	BatchLatency *Percentiles `json:"batch_ms,omitempty"`
	// UFS is what the granary workers asked of the storage during the
	// epoch (needs --config); MDSRequests what CephFS's MDS served (needs
	// --mds-admin-socket).
	UFS         *ufs.Stats `json:"ufs,omitempty"`
	MDSRequests *float64   `json:"mds_requests,omitempty"`
	CPU         CPU        `json:"cpu_seconds"`
	// Ratio is this epoch's MB/s ÷ the same epoch's MB/s of each baseline
	// (files/s for a dataset of empty files).
	Ratio map[string]float64 `json:"ratio_to_baseline,omitempty"`
	// Ratios compares every measure of this epoch with the same epoch of
	// each baseline: this target's value ÷ the baseline's (above 1 is
	// better for throughput, worse for latency, CPU and load).
	Ratios map[string]Ratios `json:"ratios_to_baseline,omitempty"`
}

// Ratios are target ÷ baseline for one epoch; a measure missing on either
// side (the UFS load of a local directory, say) is left out.
type Ratios struct {
	MBps         float64  `json:"mb_per_s"`
	FilesPerS    float64  `json:"files_per_s"`
	P50          *float64 `json:"latency_p50,omitempty"`
	P95          *float64 `json:"latency_p95,omitempty"`
	P99          *float64 `json:"latency_p99,omitempty"`
	FirstByteP50 *float64 `json:"first_byte_p50,omitempty"`
	ReaderCPU    *float64 `json:"reader_cpu,omitempty"`
	GranaryCPU   *float64 `json:"granary_cpu,omitempty"`
	UFSOps       *float64 `json:"ufs_operations,omitempty"`
	UFSBytes     *float64 `json:"ufs_bytes,omitempty"`
	MDSRequests  *float64 `json:"mds_requests,omitempty"`
}

// compare returns t ÷ b for every measure both have.
func compare(t, b Epoch) Ratios {
	div := func(x, y float64) *float64 {
		if y <= 0 || math.IsNaN(x) {
			return nil
		}
		q := x / y
		return &q
	}
	both := func(x, y *float64) *float64 {
		if x == nil || y == nil {
			return nil
		}
		return div(*x, *y)
	}
	r := Ratios{
		P50: div(t.Latency.P50, b.Latency.P50), P95: div(t.Latency.P95, b.Latency.P95), P99: div(t.Latency.P99, b.Latency.P99),
		FirstByteP50: div(t.FirstByte.P50, b.FirstByte.P50), ReaderCPU: div(t.CPU.Reader, b.CPU.Reader),
		GranaryCPU: both(t.CPU.Granary, b.CPU.Granary), MDSRequests: both(t.MDSRequests, b.MDSRequests),
	}
	if q := div(t.MBps, b.MBps); q != nil {
		r.MBps = *q
	}
	if q := div(t.ReadsPerS, b.ReadsPerS); q != nil {
		r.FilesPerS = *q
	}
	if t.UFS != nil && b.UFS != nil {
		r.UFSOps = div(float64(t.UFS.Ops()), float64(b.UFS.Ops()))
		r.UFSBytes = div(float64(t.UFS.BytesRead), float64(b.UFS.BytesRead))
	}
	return r
}

// CPU is the processor time an epoch cost.
type CPU struct {
	Reader float64 `json:"reader"`
	// Granary is the CPU time of the granary processes on this machine;
	// nil when none was found.
	Granary *float64 `json:"granary,omitempty"`
}

// Percentiles of a latency, in milliseconds.
type Percentiles struct {
	P50 float64 `json:"p50"`
	P95 float64 `json:"p95"`
	P99 float64 `json:"p99"`
	Max float64 `json:"max"`
}

func percentiles(d []time.Duration) Percentiles {
	if len(d) == 0 {
		return Percentiles{}
	}
	slices.Sort(d)
	at := func(q float64) float64 {
		i := int(math.Ceil(q*float64(len(d)))) - 1
		return float64(d[max(i, 0)]) / 1e6
	}
	return Percentiles{P50: at(0.50), P95: at(0.95), P99: at(0.99), Max: float64(d[len(d)-1]) / 1e6}
}

// ratios fills every target's ratio to each baseline, epoch by epoch.
func (r *Report) ratios() {
	for i := range r.Targets {
		t := &r.Targets[i]
		if t.Baseline {
			continue
		}
		for _, b := range r.Targets {
			if !b.Baseline {
				continue
			}
			for e := range t.Epochs {
				if e >= len(b.Epochs) || b.Epochs[e].ReadsPerS <= 0 {
					continue
				}
				te := &t.Epochs[e]
				if te.Ratio == nil {
					te.Ratio, te.Ratios = map[string]float64{}, map[string]Ratios{}
				}
				r := compare(*te, b.Epochs[e])
				te.Ratios[b.Name] = r
				te.Ratio[b.Name] = r.MBps
				if b.Epochs[e].MBps <= 0 { // files with no bytes (meta): files/s
					te.Ratio[b.Name] = r.FilesPerS
				}
			}
		}
	}
}

// warn records a warning once.
func (r *Report) warn(format string, args ...any) {
	w := fmt.Sprintf(format, args...)
	if !slices.Contains(r.Warnings, w) {
		r.Warnings = append(r.Warnings, w)
	}
}

// WriteJSON writes the report as indented JSON.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// WriteTable writes the report for a person: one line per target and epoch.
func (r *Report) WriteTable(w io.Writer) error {
	fmt.Fprintf(w, "profile %s: %d files, %.1f MB; %d readers", r.Profile, r.Files, float64(r.Bytes)/1e6, r.Readers)
	if r.Batch > 0 {
		fmt.Fprintf(w, " in batches of %d", r.Batch)
	}
	fmt.Fprintf(w, "; page cache %s; %s\n", r.PageCache, r.WarmUp)
	for _, warning := range r.Warnings {
		fmt.Fprintf(w, "warning: %s\n", warning)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "TARGET\tEPOCH\tMB/s\tFILES/s\tP50 ms\tP95 ms\tP99 ms\tTTFB P50\tUFS OPS\tUFS MB\tMDS REQ\tCPU s (granary/reader)\tGRANARY CPU s/GB\tRATIO\t")
	for _, t := range r.Targets {
		for _, e := range t.Epochs {
			ufsOps, ufsMB, mds, cpu, perGB := "-", "-", "-", fmt.Sprintf("-/%.2f", e.CPU.Reader), "-"
			if e.UFS != nil {
				ufsOps = fmt.Sprint(e.UFS.Ops())
				ufsMB = fmt.Sprintf("%.1f", float64(e.UFS.BytesRead)/1e6)
			}
			if e.MDSRequests != nil {
				mds = fmt.Sprintf("%.0f", *e.MDSRequests)
			}
			if e.CPU.Granary != nil {
				cpu = fmt.Sprintf("%.2f/%.2f", *e.CPU.Granary, e.CPU.Reader)
				if e.Bytes > 0 {
					perGB = fmt.Sprintf("%.3f", *e.CPU.Granary/(float64(e.Bytes)/1e9))
				}
			}
			ratio := ""
			names := make([]string, 0, len(e.Ratio))
			for n := range e.Ratio {
				names = append(names, n)
			}
			slices.Sort(names)
			for _, n := range names {
				ratio += fmt.Sprintf("%.2f× %s ", e.Ratio[n], n)
			}
			fmt.Fprintf(tw, "%s\t%d\t%.1f\t%.0f\t%.2f\t%.2f\t%.2f\t%.2f\t%s\t%s\t%s\t%s\t%s\t%s\t\n", t.Name, e.Epoch, e.MBps, e.ReadsPerS,
				e.Latency.P50, e.Latency.P95, e.Latency.P99, e.FirstByte.P50, ufsOps, ufsMB, mds, cpu, perGB, ratio)
		}
	}
	return tw.Flush()
}

// WritePNG draws throughput per epoch per target beside the latency
// percentiles (p50, p95, p99 of every epoch, by target).
func (r *Report) WritePNG(path string) error {
	epochs := r.Epochs
	for _, t := range r.Targets {
		for _, e := range t.Epochs {
			epochs = max(epochs, e.Epoch)
		}
	}
	names := make([]string, epochs)
	for i := range names {
		names[i] = fmt.Sprint(i + 1)
	}
	byEpoch := func(t TargetReport, get func(Epoch) float64) []float64 {
		v := make([]float64, epochs)
		for i := range v {
			v[i] = math.NaN()
		}
		for _, e := range t.Epochs {
			if e.Epoch >= 1 && e.Epoch <= epochs {
				v[e.Epoch-1] = get(e)
			}
		}
		return v
	}
	tp := chart.Chart{Title: fmt.Sprintf("%s: throughput per epoch", r.Profile), XLabel: "epoch", YLabel: "MB/s", Categories: names}
	lp := chart.Chart{Title: "read latency (ms)", XLabel: "epoch", YLabel: "ms", Categories: names, Bars: true}
	for i, t := range r.Targets {
		c := palette(i)
		tp.Series = append(tp.Series, chart.Series{Name: t.Name, Color: c, Values: byEpoch(t, func(e Epoch) float64 { return e.MBps })})
		for k, q := range []struct {
			name string
			get  func(Percentiles) float64
		}{{"p50", func(p Percentiles) float64 { return p.P50 }}, {"p95", func(p Percentiles) float64 { return p.P95 }}, {"p99", func(p Percentiles) float64 { return p.P99 }}} {
			lp.Series = append(lp.Series, chart.Series{Name: t.Name + " " + q.name, Color: shade(c, k),
				Values: byEpoch(t, func(e Epoch) float64 { return q.get(e.Latency) })})
		}
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := chart.WritePNG(f, 1344, 480, tp, lp); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	return f.Close()
}

// shade lightens c for the k-th percentile of a target.
func shade(c color.Color, k int) color.Color {
	r, g, b, _ := c.RGBA()
	return color.NRGBA{uint8(r >> 8), uint8(g >> 8), uint8(b >> 8), uint8(255 - 70*k)}
}

func palette(i int) color.Color {
	colors := []color.RGBA{{31, 119, 180, 255}, {255, 127, 14, 255}, {44, 160, 44, 255}, {214, 39, 40, 255}, {148, 103, 189, 255}, {140, 86, 75, 255}}
	return colors[i%len(colors)]
}
