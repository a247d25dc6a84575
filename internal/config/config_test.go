package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParseMinimal(t *testing.T) {
	cfg, err := Parse("min.yaml", []byte("datasets:\n  - name: demo\n    ufs: file:///data/demo\n"))
	if err != nil {
		t.Fatal(err)
	}
	ds := cfg.Datasets[0]
	if ds.URI.Scheme != "file" || ds.URI.Path != "/data/demo" {
		t.Errorf("URI = %+v", ds.URI)
	}
	if ds.Replicas != DefaultReplicas || ds.UFSLimits.MaxInflight != DefaultMaxInflight || !ds.MetadataSync.Never() {
		t.Errorf("defaults not applied: %+v", ds)
	}
}

func TestParseEmpty(t *testing.T) {
	for _, doc := range []string{"", "# only a comment\n", "datasets: []\n", "datasets:\n"} {
		cfg, err := Parse("empty.yaml", []byte(doc))
		if err != nil || len(cfg.Datasets) != 0 {
			t.Errorf("Parse(%q) = %+v, %v; want an empty config", doc, cfg, err)
		}
	}
}

func TestParseFull(t *testing.T) {
	dir := t.TempDir()
	secretFile := filepath.Join(dir, "secret")
	if err := os.WriteFile(secretFile, []byte("from-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("GRANARY_TEST_AK", "from-env")
	doc := `datasets:
  - name: imagenet
    ufs: s3://train-data/imagenet/
    options:
      endpoint: http://127.0.0.1:7070
      region: eu-1
      path_style: true
      access_key: ${GRANARY_TEST_AK}
      secret_key_file: ` + secretFile + `
    metadata_sync: 10m
    replicas: 2
    ufs_limits:
      max_inflight: 16
      metadata_ops_per_second: 500
      bytes_per_second: 1GiB
`
	cfg, err := Parse("full.yaml", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	ds := cfg.Datasets[0]
	if ds.URI.Host != "train-data" || ds.URI.Path != "imagenet" {
		t.Errorf("URI = %+v", ds.URI)
	}
	if ds.Options["access_key"] != "from-env" || ds.Options["secret_key"] != "from-file" || ds.Options["path_style"] != "true" {
		t.Errorf("options not resolved: %v", ds.Options)
	}
	if _, ok := ds.Options["secret_key_file"]; ok {
		t.Errorf("secret_key_file left in the resolved options")
	}
	if ds.MetadataSync.Interval != 10*time.Minute || ds.Replicas != 2 {
		t.Errorf("metadata_sync %v replicas %d", ds.MetadataSync, ds.Replicas)
	}
	l := ds.UFSLimits
	if l.MaxInflight != 16 || l.MetadataOpsPerSecond != 500 || l.BytesPerSecond != 1<<30 {
		t.Errorf("limits %+v", l)
	}
	out, err := cfg.YAML()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(out), "from-file") || strings.Contains(string(out), "from-env") || !strings.Contains(string(out), Masked) {
		t.Errorf("printed config does not mask secrets:\n%s", out)
	}
	for _, want := range []string{"metadata_sync: 10m0s", "bytes_per_second: 1GiB", "endpoint: http://127.0.0.1:7070"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("printed config lacks %q:\n%s", want, out)
		}
	}
	// What is printed reads back the same (secrets aside).
	if _, err := Parse("printed.yaml", out); err != nil {
		t.Errorf("printed config does not parse: %v", err)
	}
}

// TestParseErrors: every bad input names the file, the line and the field.
func TestParseErrors(t *testing.T) {
	t.Setenv("GRANARY_TEST_SET", "x")
	cases := []struct {
		name, doc string
		want      []string // substrings of the error
	}{
		{"malformed", "datasets:\n  - name: a\n    ufs: [x\n", []string{"bad.yaml:2:", "malformed YAML", "did not find expected"}},
		{"bad indent", "datasets:\n  - name: a\n   ufs: x\n", []string{"bad.yaml:1:", "malformed YAML"}},
		{"tabs", "datasets:\n\t- name: a\n", []string{"bad.yaml:2:", "malformed YAML"}},
		{"two documents", "datasets: []\n---\ndatasets: []\n", []string{"bad.yaml:2:", "more than one YAML document"}},
		{"unknown top key", "dataset:\n  - name: a\n", []string{"bad.yaml:1: dataset: unknown field", "known fields: datasets"}},
		{"unknown dataset key", "datasets:\n  - name: a\n    ufs: file:///x\n    replica: 2\n", []string{"bad.yaml:4: datasets[0].replica: unknown field"}},
		{"duplicate key", "datasets:\n  - name: a\n    name: b\n    ufs: file:///x\n", []string{"bad.yaml:3: datasets[0].name: given twice"}},
		{"wrong type int", "datasets:\n  - name: a\n    ufs: file:///x\n    replicas: two\n", []string{"bad.yaml:4: datasets[0].replicas: expected an integer", `"two"`}},
		{"wrong type list", "datasets:\n  name: a\n", []string{"bad.yaml:2: datasets: expected a list"}},
		{"wrong type map", "datasets:\n  - name: a\n    ufs: file:///x\n    ufs_limits: 5\n", []string{"bad.yaml:4: datasets[0].ufs_limits: expected a mapping"}},
		{"bad size", "datasets:\n  - name: a\n    ufs: file:///x\n    ufs_limits:\n      bytes_per_second: fast\n", []string{"bad.yaml:5: datasets[0].ufs_limits.bytes_per_second: expected a size"}},
		{"bad open mode", "datasets:\n  - name: a\n    ufs: file:///x\n    open_mode: mmap\n", []string{"bad.yaml:4: datasets[0].open_mode:", `"auto", "passthrough" or "zero-message"`, `"mmap"`}},
		{"bad protocol", "datasets:\n  - name: a\n    ufs: file:///x\nclient:\n  protocol: grpc\n", []string{"bad.yaml:5: client.protocol:", `"grpc" is not one of framed, http`}},
		{"bad sync", "datasets:\n  - name: a\n    ufs: file:///x\n    metadata_sync: sometimes\n", []string{"bad.yaml:4: datasets[0].metadata_sync:", `"never"`}},
		{"missing name", "datasets:\n  - ufs: file:///x\n", []string{"bad.yaml:2: datasets[0]: missing name"}},
		{"missing ufs", "datasets:\n  - name: a\n", []string{"bad.yaml:2: datasets[0]: missing ufs"}},
		{"bad name", "datasets:\n  - name: a/b\n    ufs: file:///x\n", []string{"bad.yaml:2: datasets[0].name:", "not a valid dataset name"}},
		{"bad scheme", "datasets:\n  - name: a\n    ufs: hdfs://nn/x\n", []string{"bad.yaml:3: datasets[0].ufs:", `unknown scheme "hdfs"`}},
		{"not a uri", "datasets:\n  - name: a\n    ufs: /data/x\n", []string{"bad.yaml:3: datasets[0].ufs:", "not a URI"}},
		{"relative file", "datasets:\n  - name: a\n    ufs: file://data/x\n", []string{"bad.yaml:3: datasets[0].ufs:", "absolute path"}},
		{"unclean path", "datasets:\n  - name: a\n    ufs: file:///data/../x\n", []string{"bad.yaml:3: datasets[0].ufs:", "not clean"}},
		{"no bucket", "datasets:\n  - name: a\n    ufs: s3:///prefix\n", []string{"bad.yaml:3: datasets[0].ufs:", "missing bucket"}},
		{"duplicate dataset", "datasets:\n  - name: a\n    ufs: file:///x\n  - name: a\n    ufs: file:///y\n", []string{"bad.yaml:4: datasets[1].name:", `"a" is already defined at line 2`}},
		{"unknown option", "datasets:\n  - name: a\n    ufs: s3://b\n    options:\n      endpint: http://x\n", []string{"bad.yaml:5: datasets[0].options.endpint: unknown option", "endpoint"}},
		{"option on file", "datasets:\n  - name: a\n    ufs: file:///x\n    options:\n      region: x\n", []string{"bad.yaml:5: datasets[0].options.region: unknown option for a file:// dataset (known options: none)"}},
		{"missing env", "datasets:\n  - name: a\n    ufs: s3://b\n    options:\n      secret_key: ${GRANARY_TEST_UNSET_VAR}\n", []string{"bad.yaml:5: datasets[0].options.secret_key: environment variable GRANARY_TEST_UNSET_VAR is not set"}},
		{"missing secret file", "datasets:\n  - name: a\n    ufs: s3://b\n    options:\n      secret_key_file: /nonexistent/secret\n", []string{"bad.yaml:5: datasets[0].options.secret_key_file: cannot read secret file"}},
		{"relative secret file", "datasets:\n  - name: a\n    ufs: s3://b\n    options:\n      secret_key_file: secret\n", []string{"bad.yaml:5:", "not an absolute path"}},
		{"secret twice", "datasets:\n  - name: a\n    ufs: s3://b\n    options:\n      secret_key: ${GRANARY_TEST_SET}\n      secret_key_file: /x\n", []string{"given both directly and as secret_key_file"}},
		{"file for non-secret", "datasets:\n  - name: a\n    ufs: s3://b\n    options:\n      endpoint_file: /x\n", []string{"datasets[0].options.endpoint_file: unknown option"}},
		{"bad bool option", "datasets:\n  - name: a\n    ufs: s3://b\n    options:\n      path_style: maybe\n", []string{"bad.yaml:5: datasets[0].options.path_style: expected true or false"}},
		{"negative replicas", "datasets:\n  - name: a\n    ufs: file:///x\n    replicas: -1\n", []string{"bad.yaml:4: datasets[0].replicas: must be at least 1"}},
		{"bad dataset block size", "datasets:\n  - name: a\n    ufs: file:///x\n    block_size: 5MiB\n", []string{"bad.yaml:4: datasets[0].block_size: 5MiB is not a multiple of worker.page_size 4MiB"}},
		{"bad huge pages", "datasets:\n  - name: a\n    ufs: file:///x\nworker:\n  tiers:\n    - {name: MEM, path: /dev/shm/g, quota: 1GiB, huge_pages: yes}\n", []string{"bad.yaml:6: worker.tiers[0].huge_pages: expected auto or off", `"yes"`}},
		{"negative inflight", "datasets:\n  - name: a\n    ufs: file:///x\n    ufs_limits:\n      max_inflight: -3\n", []string{"bad.yaml:5: datasets[0].ufs_limits.max_inflight: must not be negative"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse("bad.yaml", []byte(c.doc))
			if err == nil {
				t.Fatalf("no error for\n%s", c.doc)
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

// TestParseReportsEveryError: one run shows all the problems, not the first.
func TestParseReportsEveryError(t *testing.T) {
	_, err := Parse("bad.yaml", []byte("datasets:\n  - name: a\n    bogus: 1\n    replicas: x\n"))
	if err == nil || !strings.Contains(err.Error(), "bad.yaml:3:") || !strings.Contains(err.Error(), "bad.yaml:4:") {
		t.Errorf("error %q should name both lines 3 and 4", err)
	}
}

func TestSecretsNeverInErrors(t *testing.T) {
	t.Setenv("GRANARY_TEST_SECRET", "hunter2-very-secret")
	_, err := Parse("bad.yaml", []byte("datasets:\n  - name: a\n    ufs: s3://b\n    options:\n      secret_key: ${GRANARY_TEST_SECRET}\n      path_style: ${GRANARY_TEST_SECRET}\n"))
	if err == nil {
		t.Fatal("want an error for path_style")
	}
	if strings.Contains(err.Error(), "hunter2") && !strings.Contains(err.Error(), "path_style") {
		t.Errorf("error leaks a secret: %v", err)
	}
}

func TestLoadNamesFile(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "missing.yaml"))
	if err == nil || !strings.Contains(err.Error(), "missing.yaml") {
		t.Errorf("Load of a missing file: %v", err)
	}
}

func TestFromURI(t *testing.T) {
	ds, err := FromURI("demo", "file:///data/demo")
	if err != nil || ds.Replicas != 1 || ds.URI.Path != "/data/demo" {
		t.Errorf("FromURI = %+v, %v", ds, err)
	}
	if _, err := FromURI("demo", "file://rel"); err == nil || !strings.Contains(err.Error(), "--dataset demo=file://rel") {
		t.Errorf("FromURI with a relative path: %v", err)
	}
	cfg := &Config{}
	if err := cfg.Add(ds); err != nil {
		t.Fatal(err)
	}
	if err := cfg.Add(ds); err == nil {
		t.Error("Add accepted a duplicate name")
	}
}

func TestSize(t *testing.T) {
	for in, want := range map[string]Size{
		"0": 0, "1024": 1024, "4KiB": 4096, "4 MiB": 4 << 20, "1.5GiB": 3 << 29, "2TiB": 2 << 40,
		"1KB": 1000, "10MB": 10e6, "1G": 1 << 30, "7B": 7,
	} {
		got, err := ParseSize(in)
		if err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "x", "-1", "4XB", "1e30TiB"} {
		if _, err := ParseSize(in); err == nil {
			t.Errorf("ParseSize(%q) succeeded", in)
		}
	}
	if s := Size(4 << 30).String(); s != "4GiB" {
		t.Errorf("String = %s", s)
	}
}

// TestScrubSettings: the scrub runs by default, 0 turns it off, and an
// interval that would re-read the cache in a loop is refused.
func TestScrubSettings(t *testing.T) {
	cfg, err := Parse("scrub.yaml", []byte("worker:\n  state_dir: /tmp/x\n"))
	if err != nil {
		t.Fatal(err)
	}
	if w := cfg.Worker; w.ScrubRate() != DefaultScrubRate || w.ScrubInterval != DefaultScrubInterval {
		t.Errorf("defaults: rate %d, interval %v", w.ScrubRate(), w.ScrubInterval)
	}
	cfg, err = Parse("scrub.yaml", []byte("worker:\n  scrub_bytes_per_second: 0\n  scrub_interval: 30m\n"))
	if err != nil {
		t.Fatal(err)
	}
	if w := cfg.Worker; w.ScrubRate() != 0 || time.Duration(w.ScrubInterval) != 30*time.Minute {
		t.Errorf("0 must turn the scrub off: rate %d, interval %v", w.ScrubRate(), w.ScrubInterval)
	}
	out, err := cfg.YAML()
	if err != nil || !strings.Contains(string(out), "scrub_bytes_per_second: \"0\"") && !strings.Contains(string(out), "scrub_bytes_per_second: 0") {
		t.Errorf("printed config lacks the scrub setting (%v):\n%s", err, out)
	}
	if back, err := Parse("printed.yaml", out); err != nil || back.Worker.ScrubRate() != 0 {
		t.Errorf("printed config reads back as %v, %v", back, err)
	}
	for doc, want := range map[string]string{
		"worker:\n  scrub_bytes_per_second: -1MiB\n": "bad.yaml:2: worker.scrub_bytes_per_second: expected a size",
		"worker:\n  scrub_interval: 10ms\n":          "bad.yaml:2: worker.scrub_interval: 10ms is too short",
	} {
		if _, err := Parse("bad.yaml", []byte(doc)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Parse(%q) = %v; want an error containing %q", doc, err, want)
		}
	}
}

// TestWholeFileDefaults: files up to DefaultWholeFile are one block unless
// a block size is set for the dataset or the worker; whole_file set
// explicitly is kept, and bounded.
func TestWholeFileDefaults(t *testing.T) {
	for name, c := range map[string]struct {
		doc  string
		want Size
	}{
		"default":                {`datasets: [{name: d, ufs: "file:///x"}]`, DefaultWholeFile},
		"dataset block_size":     {`datasets: [{name: d, ufs: "file:///x", block_size: 8MiB}]`, 0},
		"worker block_size":      {"datasets: [{name: d, ufs: \"file:///x\"}]\nworker: {block_size: 128MiB}", 0},
		"set with a block size":  {`datasets: [{name: d, ufs: "file:///x", block_size: 8MiB, whole_file: 256MiB}]`, 256 << 20},
		"set without block size": {`datasets: [{name: d, ufs: "file:///x", whole_file: 2GiB}]`, 2 << 30},
	} {
		cfg, err := Parse("c.yaml", []byte(c.doc))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if got := cfg.Datasets[0].WholeFile; got != c.want {
			t.Errorf("%s: whole_file %v; want %v", name, got, c.want)
		}
	}
	_, err := Parse("c.yaml", []byte(`datasets: [{name: d, ufs: "file:///x", whole_file: 65GiB}]`))
	if err == nil || !strings.Contains(err.Error(), "datasets[0].whole_file") {
		t.Errorf("whole_file past the largest block: %v", err)
	}

	// A dataset added later follows the same rule.
	cfg, err := Parse("c.yaml", []byte(`datasets: []`))
	if err != nil {
		t.Fatal(err)
	}
	ds, _ := FromURI("later", "file:///y")
	if err := cfg.Add(ds); err != nil {
		t.Fatal(err)
	}
	if got, _ := cfg.Dataset("later"); got.WholeFile != DefaultWholeFile || got.BlockSize != DefaultBlockSize {
		t.Errorf("an added dataset: block_size %v, whole_file %v", got.BlockSize, got.WholeFile)
	}
}

func TestHugePagesDefaults(t *testing.T) {
	cfg, err := Parse("t.yaml", []byte(`worker:
  tiers:
    - {name: MEM, path: /dev/shm/g, quota: 1GiB}
    - {name: SSD, path: /ssd/g, quota: 1GiB}
    - {name: HDD, path: /hdd/g, quota: 1GiB, huge_pages: auto}
`))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, tr := range cfg.Worker.Tiers {
		got = append(got, tr.Name+"="+tr.HugePages)
	}
	if s := strings.Join(got, " "); s != "MEM=auto SSD=off HDD=off" {
		t.Errorf("huge_pages: %s; want auto for MEM alone", s)
	}
	if def, err := Parse("d.yaml", nil); err != nil || def.Worker.Tiers[0].HugePages != HugePagesAuto {
		t.Errorf("the default MEM tier: %+v, %v", def.Worker.Tiers, err)
	}
}
