package bench_test

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"image/png"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/granary-cache/granary/internal/bench"
	"github.com/granary-cache/granary/internal/ufs"
	"github.com/granary-cache/granary/internal/ufs/local"
)

func digest(t *testing.T, o bench.GenOptions) [sha256.Size]byte {
	t.Helper()
	files, err := bench.Manifest(o)
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	for _, f := range files {
		io.WriteString(h, f.Name)
		h.Write(bench.Content(o.Profile, f))
	}
	return [sha256.Size]byte(h.Sum(nil))
}

func TestGeneratorIsDeterministic(t *testing.T) {
	for _, c := range []bench.GenOptions{
		{Profile: "imagenet", Scale: 4 << 20},
		{Profile: "shards", Scale: 3 << 20, ShardMin: 1 << 20, ShardMax: 2 << 20},
		{Profile: "records", Scale: 2 << 20, Records: 3},
		{Profile: "meta", Scale: 300},
	} {
		t.Run(c.Profile, func(t *testing.T) {
			a, b := digest(t, c), digest(t, c)
			if a != b {
				t.Error("the same options gave different datasets")
			}
			other := c
			other.Seed = 2
			if c.Profile != "meta" && digest(t, other) == a { // meta: empty files, named by number
				t.Error("another seed gave the same dataset")
			}
		})
	}
}

func TestProfilesHaveTheirShape(t *testing.T) {
	files, _ := bench.Manifest(bench.GenOptions{Profile: "imagenet", Scale: 64 << 20})
	var total int64
	dirs := map[string]bool{}
	for _, f := range files {
		total += f.Size
		dirs[filepath.Dir(f.Name)] = true
	}
	if total != 64<<20 {
		t.Errorf("imagenet: %d bytes; want exactly the scale", total)
	}
	if mean := total / int64(len(files)); mean < 90<<10 || mean > 130<<10 {
		t.Errorf("imagenet: mean file size %d; want about 110 KiB", mean)
	}
	if len(dirs) < 2 {
		t.Errorf("imagenet: %d directories", len(dirs))
	}

	shards, _ := bench.Manifest(bench.GenOptions{Profile: "shards", Scale: 5 << 20, ShardMin: 2 << 20, ShardMax: 3 << 20})
	if len(shards) < 2 {
		t.Fatalf("shards: %d", len(shards))
	}
	tr := tar.NewReader(bytes.NewReader(bench.Content("shards", shards[0])))
	var samples int
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("shard is not a tar: %v", err)
		}
		if strings.HasSuffix(h.Name, ".jpg") {
			samples++
		}
	}
	if samples < 10 {
		t.Errorf("shard of %d bytes holds %d samples", shards[0].Size, samples)
	}

	// Every leaf holds FilesPerDir files, however many there are.
	big, _ := bench.Manifest(bench.GenOptions{Profile: "meta", Scale: 250_000})
	perLeaf := map[string]int{}
	for _, f := range big {
		perLeaf[path.Dir(f.Name)]++
	}
	if len(perLeaf) != 2500 || perLeaf["meta/a24/b9/c9"] != 100 {
		t.Errorf("meta of 250,000 files: %d leaves, %d files in the last; want 2,500 of 100", len(perLeaf), perLeaf["meta/a24/b9/c9"])
	}
	meta, _ := bench.Manifest(bench.GenOptions{Profile: "meta", Scale: 1000})
	if len(meta) != 1000 || meta[0].Size != 0 || strings.Count(meta[999].Name, "/") != 4 {
		t.Errorf("meta: %d files, first %+v, last %+v; want 1000 empty files three directories deep", len(meta), meta[0], meta[999])
	}
}

func TestGenOptionErrors(t *testing.T) {
	for _, c := range []struct {
		o    bench.GenOptions
		want string
	}{
		{bench.GenOptions{Profile: "videos"}, `unknown profile "videos"`},
		{bench.GenOptions{Profile: "shards", ShardMin: 2 << 20, ShardMax: 1 << 20}, "shard size"},
	} {
		if _, err := bench.Manifest(c.o); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Manifest(%+v) = %v; want an error with %q", c.o, err, c.want)
		}
	}
}

// gen writes a small dataset to a new directory.
func gen(t *testing.T, o bench.GenOptions) string {
	t.Helper()
	dir := t.TempDir()
	fsys, err := local.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer fsys.Close()
	if _, _, err := bench.Generate(context.Background(), o, fsys, 4, nil); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestRunReport reads a tiny dataset from a directory against the same
// files read through the UFS layer, and checks the report: every field of
// the JSON, a PNG that decodes.
func TestRunReport(t *testing.T) {
	dir := gen(t, bench.GenOptions{Profile: "imagenet", Scale: 2 << 20, FilesPerDir: 5})
	fsys, err := local.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	targets := []bench.NamedTarget{
		{Name: "dir", Path: dir, Target: &bench.DirTarget{Root: dir}},
		{Name: "ufs", Path: "file://" + dir, Baseline: true, Target: &bench.UFSTarget{FS: fsys}},
	}
	var progressed int64
	// Counters that grow with every call stand for the workers, the MDS and
	// the granary processes (test/cluster reads real ones).
	var calls atomic.Int64
	probes := bench.Probes{
		UFS: func(context.Context) (ufs.Stats, error) {
			n := calls.Add(1)
			return ufs.Stats{Stat: n, List: n, Read: 2 * n, BytesRead: n << 20}, nil
		},
		MDSRequests: func(context.Context) (float64, error) { return float64(calls.Add(1)), nil },
		GranaryCPU:  func() (time.Duration, error) { return time.Duration(calls.Add(1)) * time.Millisecond, nil },
	}
	rep, err := bench.Run(context.Background(), targets, bench.RunOptions{Profile: "imagenet", Epochs: 2, Readers: 3, Batch: 2, Seed: 7,
		Probes: probes, Progress: func(done, total int64, what string) { progressed++ }})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Files == 0 || progressed != 4*rep.Files {
		t.Errorf("%d files, %d progress calls; want 4 per file (2 targets, 2 epochs)", rep.Files, progressed)
	}
	var buf bytes.Buffer
	if err := rep.WriteJSON(&buf); err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := json.Unmarshal(buf.Bytes(), &doc); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"profile", "epochs", "readers", "batch", "seed", "started", "page_cache", "warm_up", "files", "bytes", "targets"} {
		if _, ok := doc[k]; !ok {
			t.Errorf("report has no %q", k)
		}
	}
	tgt := doc["targets"].([]any)[0].(map[string]any)
	ep := tgt["epochs"].([]any)[1].(map[string]any)
	for _, k := range []string{"epoch", "seconds", "walk_seconds", "reads", "bytes", "mb_per_s", "files_per_s", "latency_ms", "first_byte_ms",
		"batch_ms", "ufs", "mds_requests", "cpu_seconds", "ratio_to_baseline", "ratios_to_baseline"} {
		if _, ok := ep[k]; !ok {
			t.Errorf("epoch has no %q: %v", k, ep)
		}
	}
	for field, keys := range map[string][]string{
		"latency_ms":    {"p50", "p95", "p99", "max"},
		"first_byte_ms": {"p50", "p95", "p99", "max"},
		"ufs":           {"stat", "list", "read", "bytes_read", "errors"},
		"cpu_seconds":   {"reader", "granary"},
	} {
		m, _ := ep[field].(map[string]any)
		for _, k := range keys {
			if _, ok := m[k]; !ok {
				t.Errorf("epoch's %s has no %q: %v", field, k, m)
			}
		}
	}
	ratios, _ := ep["ratios_to_baseline"].(map[string]any)["ufs"].(map[string]any)
	for _, k := range []string{"mb_per_s", "files_per_s", "latency_p50", "latency_p95", "latency_p99", "first_byte_p50",
		"granary_cpu", "ufs_operations", "ufs_bytes", "mds_requests"} {
		if v, ok := ratios[k].(float64); !ok || v <= 0 {
			t.Errorf("ratios to the baseline have no %q: %v", k, ratios)
		}
	}
	if r := ep["ratio_to_baseline"].(map[string]any)["ufs"].(float64); r <= 0 {
		t.Errorf("ratio to the baseline %v", r)
	}
	if rep.Targets[0].Epochs[0].Bytes != rep.Bytes {
		t.Errorf("epoch read %d bytes of %d", rep.Targets[0].Epochs[0].Bytes, rep.Bytes)
	}
	var table bytes.Buffer
	rep.WriteTable(&table)
	if !strings.Contains(table.String(), "× ufs") {
		t.Errorf("the table shows no ratio:\n%s", table.String())
	}
	out := filepath.Join(t.TempDir(), "r.png")
	if err := rep.WritePNG(out); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := png.Decode(f); err != nil {
		t.Errorf("the PNG does not decode: %v", err)
	}
}

// TestRunWarnings: what cannot be measured is said, once, and left out
// rather than shown as zero; so is a baseline that holds other files.
func TestRunWarnings(t *testing.T) {
	dir := gen(t, bench.GenOptions{Profile: "imagenet", Scale: 1 << 20, FilesPerDir: 5})
	other := gen(t, bench.GenOptions{Profile: "imagenet", Scale: 1 << 20, FilesPerDir: 5, Seed: 2})
	os.Remove(filepath.Join(other, firstFile(t, other)))
	probes := bench.Probes{
		UFS: func(context.Context) (ufs.Stats, error) {
			return ufs.Stats{}, errors.New("worker w2 at 127.0.0.1:1: connection refused")
		},
		GranaryCPU: func() (time.Duration, error) { return 0, errors.New("no granary process") },
	}
	rep, err := bench.Run(context.Background(), []bench.NamedTarget{
		{Name: "a", Path: dir, Target: &bench.DirTarget{Root: dir}},
		{Name: "b", Path: other, Baseline: true, Target: &bench.DirTarget{Root: other}},
	}, bench.RunOptions{Profile: "imagenet", Epochs: 2, Readers: 2, Probes: probes})
	if err != nil {
		t.Fatal(err)
	}
	var table bytes.Buffer
	rep.WriteTable(&table)
	for _, want := range []string{"connection refused", "granary CPU not measured", "b holds"} {
		if n := strings.Count(table.String(), want); n != 1 {
			t.Errorf("the table says %q %d times; want once:\n%s", want, n, table.String())
		}
	}
	if e := rep.Targets[0].Epochs[0]; e.UFS != nil || e.CPU.Granary != nil {
		t.Errorf("unmeasured values are in the report: %+v", e)
	}
}

// firstFile is some file below dir.
func firstFile(t *testing.T, dir string) string {
	var found string
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && found == "" {
			found, _ = filepath.Rel(dir, p)
		}
		return err
	})
	if found == "" {
		t.Fatalf("no file below %s", dir)
	}
	return found
}

// TestRunMetaRatio: a tree of empty files is compared by files/s.
func TestRunMetaRatio(t *testing.T) {
	dir := gen(t, bench.GenOptions{Profile: "meta", Scale: 50})
	rep, err := bench.Run(context.Background(), []bench.NamedTarget{
		{Name: "a", Path: dir, Target: &bench.DirTarget{Root: dir}},
		{Name: "b", Path: dir, Baseline: true, Target: &bench.DirTarget{Root: dir}},
	}, bench.RunOptions{Profile: "meta", Epochs: 1, Readers: 2})
	if err != nil {
		t.Fatal(err)
	}
	e := rep.Targets[0].Epochs[0]
	if r := e.Ratio["b"]; r <= 0 || r != e.Ratios["b"].FilesPerS {
		t.Errorf("ratio %v, ratios %+v; want the files/s ratio", r, e.Ratios["b"])
	}
}

func TestRunRecords(t *testing.T) {
	dir := gen(t, bench.GenOptions{Profile: "records", Scale: 8 << 20, Records: 2})
	rep, err := bench.Run(context.Background(), []bench.NamedTarget{{Name: "dir", Path: dir, Target: &bench.DirTarget{Root: dir}}},
		bench.RunOptions{Profile: "records", Epochs: 1, Readers: 4, RecordReads: 50})
	if err != nil {
		t.Fatal(err)
	}
	e := rep.Targets[0].Epochs[0]
	if e.Reads != 50 || e.Bytes < 50*4<<10 || e.Bytes > 50<<20 {
		t.Errorf("%d reads of %d bytes; want 50 reads of 4 KiB to 1 MiB", e.Reads, e.Bytes)
	}
}

func TestRunErrors(t *testing.T) {
	dir := gen(t, bench.GenOptions{Profile: "meta", Scale: 20})
	empty := t.TempDir()
	ok := []bench.NamedTarget{{Name: "dir", Path: dir, Target: &bench.DirTarget{Root: dir}}}
	for _, c := range []struct {
		targets []bench.NamedTarget
		o       bench.RunOptions
		want    string
	}{
		{ok, bench.RunOptions{Profile: "videos", Epochs: 1, Readers: 1}, "unknown profile"},
		{ok, bench.RunOptions{Profile: "meta", Epochs: 1, Readers: 0}, "readers must be at least 1"},
		{ok, bench.RunOptions{Profile: "meta", Epochs: 0, Readers: 1}, "epochs must be at least 1"},
		{nil, bench.RunOptions{Profile: "meta", Epochs: 1, Readers: 1}, "--path"},
		{[]bench.NamedTarget{{Name: "empty", Path: empty, Target: &bench.DirTarget{Root: empty}}}, bench.RunOptions{Profile: "meta", Epochs: 1, Readers: 1}, "holds no files"},
	} {
		if _, err := bench.Run(context.Background(), c.targets, c.o); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Run(%+v) = %v; want an error with %q", c.o, err, c.want)
		}
	}
	if _, err := bench.OpenDir(filepath.Join(dir, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("OpenDir(missing) = %v", err)
	}
	// A file that vanishes mid-epoch fails the epoch, naming it.
	victim := filepath.Join(dir, "meta/a0/b0/c0/f00000003")
	gone := &vanishing{DirTarget: bench.DirTarget{Root: dir}, victim: victim}
	_, err := bench.Run(context.Background(), []bench.NamedTarget{{Name: "dir", Path: dir, Target: gone}}, bench.RunOptions{Profile: "meta", Epochs: 1, Readers: 2})
	if err == nil || !strings.Contains(err.Error(), "f00000003") {
		t.Errorf("a file removed mid-epoch: %v; want an error naming it", err)
	}
}

// vanishing removes a file after the walk.
type vanishing struct {
	bench.DirTarget
	victim string
}

func (v *vanishing) Walk(ctx context.Context) ([]bench.Entry, error) {
	e, err := v.DirTarget.Walk(ctx)
	os.Remove(v.victim)
	return e, err
}
