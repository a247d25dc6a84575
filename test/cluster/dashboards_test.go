package cluster

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"go.yaml.in/yaml/v3"
)

// The files under deploy/ that this test keeps honest.
var (
	dashJSONFile   = filepath.Join("..", "..", "deploy", "grafana", "granary.json")
	dashAlertsFile = filepath.Join("..", "..", "deploy", "prometheus", "granary-alerts.yaml")
	dashREADME     = filepath.Join("..", "..", "deploy", "README.md")
)

// The scrape jobs the dashboard and the rules assume (deploy/README.md).
const (
	dashWorkerJob = "granary-worker"
	dashMountJob  = "granary-mount"
)

// The alerts an operator was promised, by name.
var dashRequiredAlerts = []string{
	"GranaryWorkerDown",
	"GranaryMembershipUnhealthy",
	"GranaryFallbackStorm",
	"GranaryTierFull",
	"GranaryCorruptPages",
}

// dashExpr is one PromQL expression of deploy/ and where it came from.
type dashExpr struct{ where, expr string }

// TestDashboardAndAlerts starts a worker and a mount, reads a file through
// the mount, scrapes both, and checks that every metric the Grafana
// dashboard and the Prometheus alert rules name is one of theirs, with the
// labels and label values the queries select on; and that the files are
// well formed (every panel has a title and a query, every rule a for, a
// severity and a summary, the alerts the README promises are there).
func TestDashboardAndAlerts(t *testing.T) {
	exprs := dashboardExprs(t)
	exprs = append(exprs, alertExprs(t)...)

	needFUSE(t)
	dir := t.TempDir()
	// Six whole blocks through a MEM tier of two: it fills past its high
	// watermark and blocks are demoted to SSD, so that
	// granary_cache_evictions_total has a sample to show.
	data := make([]byte, 6*blockSize)
	for i := range data {
		data[i] = byte(i*7 + i>>12)
	}
	if err := os.WriteFile(filepath.Join(dir, "big.bin"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	c := startCluster(t, clusterOpts{workers: 1,
		datasets: fmt.Sprintf("  - {name: dash, ufs: \"file://%s\"}\n", dir),
		tiers: func(_ int, dir string) string {
			return fmt.Sprintf("    - {name: MEM, path: %s/mem, quota: 2MiB}\n    - {name: SSD, path: %s/ssd, quota: 64MiB}\n", dir, dir)
		}})
	m := c.mount(t)
	got, err := os.ReadFile(filepath.Join(m.dir, "dash", "big.bin"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("read %d bytes through the mount, not the file's", len(got))
	}

	// The evictor runs within a second; wait for its first demotion.
	var worker map[string]*dto.MetricFamily
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		worker = dashScrape(t, c.workers[0].admin)
		if worker["granary_cache_evictions_total"] != nil {
			break
		}
		if time.Now().After(deadline) {
			var state []string
			for _, n := range []string{"granary_cache_tier_used_bytes", "granary_cache_tier_blocks", "granary_worker_uncached_pages_total", "granary_cache_store_errors_total"} {
				for _, m := range worker[n].GetMetric() {
					state = append(state, fmt.Sprintf("%s%v %g", n, m.GetLabel(), m.GetGauge().GetValue()+m.GetCounter().GetValue()))
				}
			}
			t.Fatalf("no eviction after reading %d bytes through a MEM tier of 2MiB:\n%s\n%s", len(data), strings.Join(state, "\n"), c.workers[0].log)
		}
	}
	mount := dashScrape(t, m.admin)
	for name := range mount {
		if strings.HasPrefix(name, "granary_") && worker[name] != nil {
			t.Errorf("%s is exported by both the worker and the mount: the job label is all that tells them apart", name)
		}
	}

	// Membership: one gauge per state, set once the worker's watch ran.
	states := dashLabelValues(worker["granary_membership_members"], "state")
	for _, s := range []string{"live", "not live", "leaving"} {
		if !states[s] {
			t.Errorf("granary_membership_members has no state=%q sample (has %v)", s, dashSortedKeys(states))
		}
	}

	var unknown []string
	for _, e := range exprs {
		sels := dashSelectors(e.expr)
		for _, name := range dashMetricNames(e.expr) {
			base := dashBaseName(name, worker, mount)
			if worker[base] == nil && mount[base] == nil {
				unknown = append(unknown, fmt.Sprintf("%s (%s)", name, e.where))
			}
			if !slices.ContainsFunc(sels, func(s dashSelector) bool { return s.metric == name }) {
				t.Errorf("%s: %s without {job=...}: it would mix the jobs", e.where, name)
			}
		}
		for _, s := range sels {
			base := dashBaseName(s.metric, worker, mount)
			fam, job := worker[base], dashWorkerJob
			if fam == nil {
				fam, job = mount[base], dashMountJob
			}
			if fam == nil {
				continue // reported above
			}
			checkDashSelector(t, e, s, fam, job)
		}
	}
	// The other way round, only said: a metric no panel shows.
	shown := map[string]bool{}
	for _, e := range exprs {
		for _, name := range dashMetricNames(e.expr) {
			shown[dashBaseName(name, worker, mount)] = true
		}
	}
	for _, fams := range []map[string]*dto.MetricFamily{worker, mount} {
		for name := range fams {
			if strings.HasPrefix(name, "granary_") && !shown[name] {
				t.Logf("%s is on no panel and in no rule", name)
			}
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		t.Errorf("deploy/ names %d metrics that neither a worker nor a mount exports:\n  %s", len(unknown), strings.Join(unknown, "\n  "))
	}
}

// dashboardExprs parses the dashboard, checks its shape and returns its
// PromQL: every target's expr and every query variable's query.
func dashboardExprs(t *testing.T) []dashExpr {
	t.Helper()
	raw, err := os.ReadFile(dashJSONFile)
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Title         string            `json:"title"`
		UID           string            `json:"uid"`
		SchemaVersion int               `json:"schemaVersion"`
		Panels        []json.RawMessage `json:"panels"`
		Templating    struct {
			List []struct {
				Name       string          `json:"name"`
				Type       string          `json:"type"`
				Query      json.RawMessage `json:"query"`
				Definition string          `json:"definition"`
				Datasource json.RawMessage `json:"datasource"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(raw, &d); err != nil {
		t.Fatalf("%s: %v", dashJSONFile, err)
	}
	if d.Title == "" || d.UID == "" || d.SchemaVersion < 36 {
		t.Errorf("%s: title %q, uid %q, schemaVersion %d: want a title, a uid and schemaVersion >= 36", dashJSONFile, d.Title, d.UID, d.SchemaVersion)
	}

	var out []dashExpr
	vars := map[string]bool{}
	for _, v := range d.Templating.List {
		vars[v.Name] = true
		switch v.Type {
		case "datasource":
			if string(v.Query) != `"prometheus"` {
				t.Errorf("variable %s: a data source variable of type %s, want prometheus", v.Name, v.Query)
			}
		case "query":
			checkDashDatasource(t, "variable "+v.Name, v.Datasource)
			var q string
			if json.Unmarshal(v.Query, &q) != nil {
				var obj struct{ Query string }
				json.Unmarshal(v.Query, &obj)
				q = obj.Query
			}
			if q == "" {
				t.Errorf("variable %s has no query", v.Name)
			}
			for _, e := range []string{q, v.Definition} {
				if e != "" {
					out = append(out, dashExpr{"variable " + v.Name, e})
				}
			}
		}
	}
	if !vars["datasource"] {
		t.Errorf("%s: no ${datasource} variable", dashJSONFile)
	}

	ids := map[int]bool{}
	var walk func(panels []json.RawMessage)
	walk = func(panels []json.RawMessage) {
		for _, rp := range panels {
			var p struct {
				ID         int               `json:"id"`
				Type       string            `json:"type"`
				Title      string            `json:"title"`
				Datasource json.RawMessage   `json:"datasource"`
				Panels     []json.RawMessage `json:"panels"`
				Targets    []struct {
					Expr       string          `json:"expr"`
					RefID      string          `json:"refId"`
					Datasource json.RawMessage `json:"datasource"`
				} `json:"targets"`
			}
			if err := json.Unmarshal(rp, &p); err != nil {
				t.Fatalf("%s: panel: %v", dashJSONFile, err)
			}
			where := fmt.Sprintf("panel %d %q", p.ID, p.Title)
			if ids[p.ID] {
				t.Errorf("%s: id %d used twice", where, p.ID)
			}
			ids[p.ID] = true
			if p.Title == "" {
				t.Errorf("panel %d (%s) has no title", p.ID, p.Type)
			}
			if p.Type == "row" { // a row holds panels; it has no query of its own
				walk(p.Panels)
				continue
			}
			checkDashDatasource(t, where, p.Datasource)
			if len(p.Targets) == 0 {
				t.Errorf("%s has no target", where)
			}
			for _, tg := range p.Targets {
				if strings.TrimSpace(tg.Expr) == "" || tg.RefID == "" {
					t.Errorf("%s: a target without an expr or a refId", where)
					continue
				}
				checkDashDatasource(t, where, tg.Datasource)
				out = append(out, dashExpr{where, tg.Expr})
			}
		}
	}
	walk(d.Panels)
	if len(ids) == 0 {
		t.Errorf("%s has no panels", dashJSONFile)
	}
	return out
}

// checkDashDatasource wants the ${datasource} variable, so that the dashboard
// imports into any Grafana.
func checkDashDatasource(t *testing.T, where string, raw json.RawMessage) {
	t.Helper()
	var ds struct{ Type, UID string }
	json.Unmarshal(raw, &ds)
	if ds.UID != "${datasource}" {
		t.Errorf("%s: data source %s, want uid ${datasource}", where, raw)
	}
}

// alertExprs parses the rule file, checks every rule and returns the exprs.
func alertExprs(t *testing.T) []dashExpr {
	t.Helper()
	raw, err := os.ReadFile(dashAlertsFile)
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Groups []struct {
			Name  string `yaml:"name"`
			Rules []struct {
				Alert       string            `yaml:"alert"`
				Record      string            `yaml:"record"`
				Expr        string            `yaml:"expr"`
				For         string            `yaml:"for"`
				Labels      map[string]string `yaml:"labels"`
				Annotations map[string]string `yaml:"annotations"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil {
		t.Fatalf("%s: %v", dashAlertsFile, err)
	}
	readme, err := os.ReadFile(dashREADME)
	if err != nil {
		t.Error(err)
	}
	var out []dashExpr
	alerts := map[string]bool{}
	groups := map[string]bool{}
	for _, g := range f.Groups {
		if g.Name == "" || groups[g.Name] {
			t.Errorf("%s: group name %q empty or repeated", dashAlertsFile, g.Name)
		}
		groups[g.Name] = true
		for i, r := range g.Rules {
			where := fmt.Sprintf("rule %s[%d] %s", g.Name, i, r.Alert)
			if r.Alert == "" {
				t.Errorf("%s: not an alert (record %q)", where, r.Record)
			}
			alerts[r.Alert] = true
			if strings.TrimSpace(r.Expr) == "" {
				t.Errorf("%s: no expr", where)
			} else {
				out = append(out, dashExpr{where, r.Expr})
			}
			if d, err := model.ParseDuration(r.For); r.For == "" || err != nil || d <= 0 {
				t.Errorf("%s: for %q: want a duration such as 5m (%v)", where, r.For, err)
			}
			if s := r.Labels["severity"]; s != "critical" && s != "warning" && s != "info" {
				t.Errorf("%s: severity %q: want critical, warning or info", where, s)
			}
			if r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
				t.Errorf("%s: want annotations summary and description", where)
			}
			if readme != nil && !bytes.Contains(readme, []byte(r.Alert)) {
				t.Errorf("%s: %s does not say what to do about it", where, dashREADME)
			}
		}
	}
	for _, a := range dashRequiredAlerts {
		if !alerts[a] {
			t.Errorf("%s: no alert %s", dashAlertsFile, a)
		}
	}
	return out
}

// dashScrape reads the /metrics of an admin address.
func dashScrape(t *testing.T, addr string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s/metrics: %s", addr, resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("%s/metrics: %v", addr, err)
	}
	return fams
}

var (
	// dashMetricRE finds granary metric names; one followed by "(" would be a
	// function, which granary has none of.
	dashMetricRE = regexp.MustCompile(`(?:^|[^a-zA-Z0-9_:])(granary_[a-zA-Z0-9_:]+)`)
	// dashSelectorRE finds a metric with its label matchers.
	dashSelectorRE = regexp.MustCompile(`(granary_[a-zA-Z0-9_:]+)\s*\{([^}]*)\}`)
	dashMatcherRE  = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"`)
	// dashLiteralAlternatives is a regex value that lists label values: a|b|c.
	dashLiteralAlternatives = regexp.MustCompile(`^[a-zA-Z0-9_ .-]+(\|[a-zA-Z0-9_ .-]+)*$`)
)

// dashMetricNames returns the granary metric names in a PromQL expression.
func dashMetricNames(expr string) []string {
	var out []string
	for _, m := range dashMetricRE.FindAllStringSubmatchIndex(expr, -1) {
		name := expr[m[2]:m[3]]
		if rest := strings.TrimLeft(expr[m[3]:], " \t\n"); strings.HasPrefix(rest, "(") {
			continue
		}
		if !slices.Contains(out, name) {
			out = append(out, name)
		}
	}
	return out
}

// dashBaseName strips the _bucket, _sum or _count of a histogram's (or
// summary's) series to give the family's name.
func dashBaseName(name string, sets ...map[string]*dto.MetricFamily) string {
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		base, ok := strings.CutSuffix(name, suffix)
		if !ok {
			continue
		}
		for _, fams := range sets {
			if f := fams[base]; f != nil {
				switch f.GetType() {
				case dto.MetricType_HISTOGRAM:
					return base
				case dto.MetricType_SUMMARY:
					if suffix != "_bucket" {
						return base
					}
				}
			}
		}
	}
	return name
}

type dashSelector struct {
	metric   string
	matchers [][3]string // label, op, value
}

func dashSelectors(expr string) []dashSelector {
	var out []dashSelector
	for _, m := range dashSelectorRE.FindAllStringSubmatch(expr, -1) {
		s := dashSelector{metric: m[1]}
		for _, mm := range dashMatcherRE.FindAllStringSubmatch(m[2], -1) {
			s.matchers = append(s.matchers, [3]string{mm[1], mm[2], mm[3]})
		}
		out = append(out, s)
	}
	return out
}

// checkDashSelector wants the dashSelector's job to be the one that exports the
// metric, and every other label it matches on to be one the metric has,
// with values (where they are literal) that it takes.
func checkDashSelector(t *testing.T, e dashExpr, s dashSelector, fam *dto.MetricFamily, job string) {
	t.Helper()
	sawJob := false
	for _, m := range s.matchers {
		label, op, value := m[0], m[1], m[2]
		switch label {
		case "job":
			sawJob = true
			if op != "=" || value != job {
				t.Errorf("%s: %s{job%s%q}: %s is scraped by job %q", e.where, s.metric, op, value, fam.GetName(), job)
			}
			continue
		case "instance":
			continue // a target label, not the exporter's
		case "le":
			if fam.GetType() == dto.MetricType_HISTOGRAM {
				continue
			}
		}
		values := dashLabelValues(fam, label)
		if len(values) == 0 {
			t.Errorf("%s: %s has no label %q", e.where, s.metric, label)
			continue
		}
		if strings.Contains(value, "$") {
			continue // a dashboard variable
		}
		var want []string
		switch op {
		case "=", "!=":
			want = []string{value}
		default:
			if !dashLiteralAlternatives.MatchString(value) {
				continue // a real regex: nothing to compare
			}
			want = strings.Split(value, "|")
		}
		for _, v := range want {
			if !values[v] {
				t.Errorf("%s: %s{%s%s%q}: %q is not a value of %s (it takes %q)", e.where, s.metric, label, op, value, v, label, dashSortedKeys(values))
			}
		}
	}
	if !sawJob {
		t.Errorf("%s: %s has no job=%q matcher", e.where, s.metric, job)
	}
}

// dashLabelValues returns the values a label takes in a family's samples.
func dashLabelValues(fam *dto.MetricFamily, label string) map[string]bool {
	out := map[string]bool{}
	for _, m := range fam.GetMetric() {
		for _, lp := range m.GetLabel() {
			if lp.GetName() == label {
				out[lp.GetValue()] = true
			}
		}
	}
	return out
}

func dashSortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
