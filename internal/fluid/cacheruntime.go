package fluid

import (
	"errors"
	"fmt"
	"path"
	"sort"
	"strconv"
	"strings"

	"github.com/granary-cache/granary/internal/client"
	"github.com/granary-cache/granary/internal/load"
)

// RuntimeConfigEnv is the variable Fluid's generic cache runtime
// (CacheRuntimeClass) sets in every component's container: the path of
// its runtime.json, which has the Dataset's mounts and targetPath as a
// ThinRuntime's config.json does, plus the master/worker/client settings.
const RuntimeConfigEnv = "FLUID_RUNTIME_CONFIG_PATH"

// Component is a master, worker or client entry of a CacheRuntime's
// runtime.json; granary reads its options only.
type Component struct {
	Enabled  bool              `json:"enabled"`
	Name     string            `json:"name"`
	Options  map[string]string `json:"options"`
	Replicas int               `json:"replicas"`
}

// normalize makes a CacheRuntime's runtime.json read like a ThinRuntime's
// config.json: without runtimeOptions, the granary.* options of the
// master, worker and client (in that order, the later winning) take their
// place, and each mount's encryptOptions (NAME: file) join its options.
func (c *ThinConfig) normalize() {
	if len(c.RuntimeOptions) == 0 {
		for _, comp := range []*Component{c.Master, c.Worker, c.Client} {
			if comp == nil {
				continue
			}
			for k, v := range comp.Options {
				if strings.HasPrefix(k, OptPrefix) {
					if c.RuntimeOptions == nil {
						c.RuntimeOptions = map[string]string{}
					}
					c.RuntimeOptions[k] = v
				}
			}
		}
	}
	for i := range c.Mounts {
		m := &c.Mounts[i]
		for k, v := range m.EncryptOptions {
			if m.Options == nil {
				m.Options = map[string]string{}
			}
			if _, set := m.Options[k]; !set {
				m.Options[k] = v
			}
		}
	}
}

// UFSPath is where Fluid expects a mount in the runtime's namespace: its
// path when that is absolute, else /NAME. Fluid compares mountUFS's
// answer with these.
func UFSPath(m Mount) string {
	if path.IsAbs(m.Path) {
		return m.Path
	}
	return "/" + m.Name
}

// MountUFSOutput is what `granary fluid mount-ufs` prints, the shape of
// Fluid's CacheRuntimeMountUfsOutput. Mounted is never null: no mount
// prints {"mounted":[]}.
type MountUFSOutput struct {
	Mounted []string `json:"mounted"`
}

// Mounted pairs Fluid's mounts with the datasets Translate made of them
// (in their order) and lists the Fluid paths of those served (served
// says whether the workers serve a dataset). Without Fluid mounts (a
// granary configuration given outright) every served dataset is /NAME.
func Mounted(mounts []Mount, datasets []string, served func(string) bool) MountUFSOutput {
	out := MountUFSOutput{Mounted: []string{}}
	if len(mounts) == 0 {
		for _, ds := range datasets {
			if served(ds) {
				out.Mounted = append(out.Mounted, "/"+ds)
			}
		}
		return out
	}
	for i, m := range mounts {
		if i < len(datasets) && served(datasets[i]) {
			out.Mounted = append(out.Mounted, UFSPath(m))
		}
	}
	return out
}

// Summary is what `granary fluid report-summary` prints, the shape of
// Fluid's CacheRuntimeReportSummary: strings as Fluid shows them in a
// Dataset's status ("1.50GiB", "37.5%"). FileNum and UFSTotal are left
// out while the datasets' size on the UFS is still being measured.
type Summary struct {
	Cached           string `json:"cached"`
	CachedPercentage string `json:"cachedPercentage"`
	CacheCapacity    string `json:"cacheCapacity"`
	CacheHitRatio    string `json:"cacheHitRatio"`
	FileNum          string `json:"fileNum,omitempty"`
	UFSTotal         string `json:"ufsTotal,omitempty"`
}

// Summarize makes a Summary of a cluster's status. datasets narrows the
// cached bytes, the percentage and the UFS size to those datasets (all
// when empty); the capacity and the hit ratio are the workers' own, since
// every dataset shares them. Members that did not answer count for
// nothing.
//
// cached is what the workers hold as owners; cachedPercentage is it over
// the datasets' UFS size times their replicas, as granary status shows it
// ("0.0%" while that size is not known); cacheCapacity sums the workers'
// tiers; cacheHitRatio is page hits over page reads ("0.0%" before any).
func Summarize(st client.ClusterStatus, datasets []string) Summary {
	var capacity, hits, misses int64
	for _, w := range st.Members {
		if w.Status == nil {
			continue
		}
		for _, t := range w.Status.Tiers {
			capacity += t.Capacity
		}
		hits += w.Status.Hits
		misses += w.Status.Misses
	}
	want := map[string]bool{}
	for _, d := range datasets {
		want[d] = true
	}
	var cached, size, files int64
	complete, found := true, false
	for _, ds := range st.Datasets {
		if len(want) > 0 && !want[ds.Name] {
			continue
		}
		found = true
		cached += ds.CachedBytes
		if ds.Usage == nil || !ds.Usage.Complete {
			complete = false
			continue
		}
		size += ds.Usage.Bytes * int64(max(ds.Replicas, 1))
		files += ds.Usage.Files
	}
	s := Summary{
		Cached:           Bytes(cached),
		CachedPercentage: percent(0, 0),
		CacheCapacity:    Bytes(capacity),
		CacheHitRatio:    percent(hits, hits+misses),
	}
	if found && complete {
		s.CachedPercentage = percent(min(cached, size), size)
		s.FileNum = strconv.FormatInt(files, 10)
		var ufsBytes int64
		for _, ds := range st.Datasets {
			if (len(want) == 0 || want[ds.Name]) && ds.Usage != nil {
				ufsBytes += ds.Usage.Bytes
			}
		}
		s.UFSTotal = Bytes(ufsBytes)
	}
	return s
}

func percent(part, whole int64) string {
	if whole <= 0 {
		return "0.0%"
	}
	return strconv.FormatFloat(100*float64(part)/float64(whole), 'f', 1, 64) + "%"
}

// Bytes formats a size the way Fluid shows one: two decimals and a
// binary unit, e.g. "0.00B", "512.00KiB", "4.00GiB".
func Bytes(n int64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"}
	f, i := float64(n), 0
	for f >= 1024 && i < len(units)-1 {
		f /= 1024
		i++
	}
	return strconv.FormatFloat(f, 'f', 2, 64) + units[i]
}

// LoadTargets turns the paths Fluid asks a DataLoad to warm (paths in the
// runtime's namespace, e.g. /coco/train, as FLUID_DATALOAD_DATA_PATH
// lists them separated by ':') into granary's /DATASET/PATH targets,
// grouped by dataset in the order first seen. mounts and datasets pair
// Fluid's mounts with their datasets as in Mounted; without mounts the
// paths are granary's already. A path of no mount is an error.
func LoadTargets(paths []string, mounts []Mount, datasets []string) (order []string, targets map[string][]string, err error) {
	targets = map[string][]string{}
	add := func(ds, rest string) {
		if _, seen := targets[ds]; !seen {
			order = append(order, ds)
		}
		targets[ds] = append(targets[ds], "/"+ds+rest)
	}
	var errs []error
	for _, p := range paths {
		if p == "" {
			continue
		}
		clean := path.Clean("/" + p)
		if len(mounts) == 0 {
			ds, rest, _ := strings.Cut(strings.TrimPrefix(clean, "/"), "/")
			if ds == "" {
				errs = append(errs, fmt.Errorf("%q: name a dataset, /DATASET/PATH", p))
				continue
			}
			if rest != "" {
				rest = "/" + rest
			}
			add(ds, rest)
			continue
		}
		// The longest mount path that holds p.
		best, bestLen := -1, -1
		for i, m := range mounts {
			if i >= len(datasets) {
				break
			}
			mp := path.Clean(UFSPath(m))
			if (mp == "/" || clean == mp || strings.HasPrefix(clean, mp+"/")) && len(mp) > bestLen {
				best, bestLen = i, len(mp)
			}
		}
		if best < 0 {
			var known []string
			for _, m := range mounts {
				known = append(known, UFSPath(m))
			}
			sort.Strings(known)
			errs = append(errs, fmt.Errorf("%q is in no mount of the Dataset (%s)", p, strings.Join(known, ", ")))
			continue
		}
		rest := strings.TrimPrefix(clean, path.Clean(UFSPath(mounts[best])))
		if rest != "" && !strings.HasPrefix(rest, "/") {
			rest = "/" + rest
		}
		add(datasets[best], rest)
	}
	return order, targets, errors.Join(errs...)
}

// LoadOutput is what `granary fluid load` prints when it ends: the state
// of the whole load and each dataset's figures.
type LoadOutput struct {
	State        string        `json:"state"` // done or failed
	Files        int64         `json:"files"`
	Bytes        int64         `json:"bytes"`
	FilesDone    int64         `json:"filesDone"`
	BytesDone    int64         `json:"bytesDone"`
	BytesSkipped int64         `json:"bytesSkipped"`
	Failed       int64         `json:"failedBlocks"`
	Elapsed      float64       `json:"elapsedSeconds"`
	Error        string        `json:"error,omitempty"`
	Datasets     []load.Result `json:"datasets"`
}

// SummarizeLoads sums the loads of one DataLoad (one per dataset) and the
// error that ended them, if any.
func SummarizeLoads(results []load.Result, err error) LoadOutput {
	out := LoadOutput{State: "done", Datasets: results}
	if out.Datasets == nil {
		out.Datasets = []load.Result{}
	}
	for _, r := range results {
		p := r.Progress
		out.Files += p.Files
		out.Bytes += p.Bytes
		out.FilesDone += p.FilesDone
		out.BytesDone += p.BytesDone
		out.BytesSkipped += p.BytesSkipped
		out.Failed += p.Failed
		out.Elapsed += r.Elapsed
	}
	if err != nil || out.Failed > 0 {
		out.State = "failed"
	}
	if err != nil {
		out.Error = err.Error()
	}
	return out
}
