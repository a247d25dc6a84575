// Package config reads granary's YAML configuration: the datasets it serves
// and how each may load its UFS. Reading is strict — an unknown key, a wrong
// type, a bad URI, a duplicate name, a relative path or a missing secret is an
// error naming the file, line and field — and every field but a dataset's
// name and ufs has a default, so a config can be as short as two lines.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/granary-cache/granary/internal/ufs"
)

// Config is a whole granary configuration file.
type Config struct {
	Datasets   []Dataset  `yaml:"datasets"`
	Worker     Worker     `yaml:"worker"`
	Auth       Auth       `yaml:"auth"`
	Membership Membership `yaml:"membership"`
	Client     Client     `yaml:"client"`
}

// Dataset binds a name to a UFS location and says how to treat it.
type Dataset struct {
	Name string `yaml:"name"`
	UFS  string `yaml:"ufs"`
	// Options configure the backend (endpoint, keys, ...). After Load they
	// are resolved: ${ENV} references expanded, NAME_file read into NAME.
	Options map[string]string `yaml:"options"`
	// MetadataSync says how long cached metadata is trusted.
	MetadataSync Sync `yaml:"metadata_sync"`
	// Replicas is how many workers cache each block.
	Replicas  int       `yaml:"replicas"`
	UFSLimits UFSLimits `yaml:"ufs_limits"`
	// Pin keeps the dataset's cached blocks from ever being evicted.
	Pin bool `yaml:"pin"`
	// Fallback is what a client does when no worker can serve a read:
	// "ufs" (the default) reads the UFS directly, "none" fails the read.
	Fallback string `yaml:"fallback"`
	// BlockSize is the unit of placement for this dataset (default:
	// worker.block_size). A file of one block can be read with FUSE
	// passthrough, so datasets of large shards want large blocks.
	BlockSize Size `yaml:"block_size"`
	// WholeFile: a file larger than block_size but no larger than this is
	// one block of its own, so that FUSE passthrough can serve it whole
	// and it is cached, placed and evicted as one. The default is
	// DefaultWholeFile, unless block_size is set (for the dataset or the
	// worker): blocks are then always of block_size, as random reads of
	// large files want. A file larger than this is in blocks of
	// block_size.
	WholeFile Size `yaml:"whole_file"`
	// OpenMode says how a FUSE mount opens the dataset's files: "auto"
	// (the default: decided at mount time from the sizes of the files of
	// the first listings, see mount.ChooseOpenMode), "passthrough" (a file
	// that is one block cached on the mount's host is read by the kernel
	// from the block file: the fastest for large files) or "zero-message"
	// (opens cost no round trip to granary: the fastest for many small
	// files, without passthrough). A mount of several datasets serves those
	// whose mode differs from the rest on a mount of their own at their
	// directory; with "auto", so are the top-level directories whose files
	// differ from the rest of the dataset (mount.SplitOpenModes).
	OpenMode string `yaml:"open_mode"`
	// NearCache lets the worker on a reader's own machine keep a copy of
	// the blocks its clients read from other owners, when it has room (they
	// are evicted first): a dataset that fits on one machine is then read
	// locally from the second epoch on.
	NearCache bool `yaml:"near_cache"`

	// URI is UFS, parsed; set by Load.
	URI ufs.URI `yaml:"-"`
}

// UFSLimits bound the load one dataset may put on its UFS.
type UFSLimits struct {
	MaxInflight          int     `yaml:"max_inflight"`
	MetadataOpsPerSecond float64 `yaml:"metadata_ops_per_second"`
	BytesPerSecond       Size    `yaml:"bytes_per_second"`
}

// Limits converts to the form the ufs package enforces.
func (l UFSLimits) Limits() ufs.Limits {
	return ufs.Limits{MaxInflight: l.MaxInflight, MetadataOpsPerSecond: l.MetadataOpsPerSecond, BytesPerSecond: int64(l.BytesPerSecond)}
}

// Dataset fallbacks.
const (
	FallbackUFS  = "ufs"
	FallbackNone = "none"
)

// Dataset open modes of a FUSE mount.
const (
	OpenAuto        = "auto"
	OpenPassthrough = "passthrough"
	OpenZeroMessage = "zero-message"
)

// Defaults.
const (
	DefaultReplicas    = 1
	DefaultMaxInflight = 64
)

// Sync is a dataset's metadata_sync: "never" (the zero value: metadata is
// fetched once and kept until refreshed by hand) or a refresh interval.
type Sync struct {
	Interval time.Duration // 0 means never
}

// Never reports whether cached metadata is kept until an explicit refresh.
func (s Sync) Never() bool { return s.Interval == 0 }

// UnmarshalText parses "never" or a Go duration such as "30s" or "5m".
func (s *Sync) UnmarshalText(b []byte) error {
	v := string(b)
	if v == "never" {
		s.Interval = 0
		return nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		return fmt.Errorf("expected \"never\" or a positive duration such as \"10m\", found %q", v)
	}
	s.Interval = d
	return nil
}

// MarshalText prints the form UnmarshalText reads.
func (s Sync) MarshalText() ([]byte, error) {
	if s.Never() {
		return []byte("never"), nil
	}
	return []byte(s.Interval.String()), nil
}

// Load reads and checks the configuration file at path.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	return Parse(path, data)
}

// Parse reads and checks a configuration held in memory; name is used in
// error messages in place of a file name.
func Parse(name string, data []byte) (*Config, error) {
	var root yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&root); err != nil && err != io.EOF {
		line := yamlErrorLine(err)
		msg := strings.TrimPrefix(err.Error(), "yaml: ")
		msg = strings.TrimPrefix(msg, fmt.Sprintf("line %d: ", line))
		return nil, &Error{File: name, Line: line, Msg: "malformed YAML: " + msg}
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err != io.EOF {
		return nil, &Error{File: name, Line: extra.Line, Msg: "more than one YAML document; put everything in one"}
	}
	cfg := &Config{}
	d := &decoder{file: name, lines: map[string]int{}}
	if root.Kind != 0 {
		d.decode(&root, reflect.ValueOf(cfg).Elem(), "")
	}
	if len(d.errs) == 0 {
		cfg.finish(d)
	}
	if len(d.errs) > 0 {
		return nil, errors.Join(d.errs...)
	}
	return cfg, nil
}

// yamlErrorLine digs the line out of a yaml.v3 syntax error ("yaml: line 3: ...").
var yamlLine = regexp.MustCompile(`line (\d+)`)

func yamlErrorLine(err error) int {
	m := yamlLine.FindStringSubmatch(err.Error())
	if m == nil {
		return 0
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// finish applies defaults and checks what the decoder cannot: names, URIs,
// options and secrets.
func (c *Config) finish(d *decoder) {
	at := func(field string) *yaml.Node { return &yaml.Node{Line: d.lines[field]} }
	names := map[string]string{}
	for i := range c.Datasets {
		ds := &c.Datasets[i]
		f := fmt.Sprintf("datasets[%d]", i)
		for _, e := range ds.check(f, at) {
			d.errs = append(d.errs, &Error{File: d.file, Line: e.line, Field: e.field, Msg: e.msg})
		}
		if prev, dup := names[ds.Name]; dup && ds.Name != "" {
			d.fail(at(f+".name"), f+".name", "dataset %q is already defined at %s", ds.Name, prev)
		}
		names[ds.Name] = fmt.Sprintf("line %d", d.lines[f+".name"])
	}
	for _, p := range c.checkCluster(at) {
		d.errs = append(d.errs, &Error{File: d.file, Line: p.line, Field: p.field, Msg: p.msg})
	}
}

type problem struct {
	line       int
	field, msg string
}

var datasetName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

// check validates one dataset, applies defaults and resolves its options.
func (ds *Dataset) check(f string, at func(string) *yaml.Node) []problem {
	var ps []problem
	bad := func(field, format string, args ...any) {
		ps = append(ps, problem{line: at(field).Line, field: field, msg: fmt.Sprintf(format, args...)})
	}
	switch {
	case ds.Name == "":
		bad(f, "missing name")
	case !datasetName.MatchString(ds.Name):
		bad(f+".name", "%q is not a valid dataset name: use up to 63 letters, digits, '.', '_' or '-', starting with a letter or digit", ds.Name)
	}
	if ds.UFS == "" {
		bad(f, "missing ufs (a URI such as file:///data or s3://bucket/prefix)")
		return ps
	}
	u, err := ufs.ParseURI(ds.UFS)
	if err != nil {
		bad(f+".ufs", "%v", err)
		return ps
	}
	ds.URI = u
	if ds.Replicas < 0 {
		bad(f+".replicas", "must be at least 1")
	}
	if ds.Replicas == 0 {
		ds.Replicas = DefaultReplicas
	}
	l := &ds.UFSLimits
	if l.MaxInflight < 0 {
		bad(f+".ufs_limits.max_inflight", "must not be negative (0 means the default, %d)", DefaultMaxInflight)
	}
	if l.MaxInflight == 0 {
		l.MaxInflight = DefaultMaxInflight
	}
	// oneOf checks a field that takes one of two words, the first its
	// default.
	oneOf := func(field string, v *string, def string, others ...string) {
		if *v == "" {
			*v = def
		}
		all := append([]string{def}, others...)
		if !slices.Contains(all, *v) {
			bad(f+"."+field, "expected %s, found %q", quoteList(all), *v)
		}
	}
	oneOf("open_mode", &ds.OpenMode, OpenAuto, OpenPassthrough, OpenZeroMessage)
	oneOf("fallback", &ds.Fallback, FallbackUFS, FallbackNone)
	if l.MetadataOpsPerSecond < 0 {
		bad(f+".ufs_limits.metadata_ops_per_second", "must not be negative (0 means no limit)")
	}
	return append(ps, resolveOptions(ds, f+".options", at)...)
}

// envRef matches ${NAME} references in option values.
var envRef = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)\}`)

// resolveOptions checks a dataset's options against its scheme, expands
// ${ENV} references and reads NAME_file secrets.
func resolveOptions(ds *Dataset, f string, at func(string) *yaml.Node) []problem {
	var ps []problem
	bad := func(field, format string, args ...any) {
		ps = append(ps, problem{line: at(field).Line, field: field, msg: fmt.Sprintf(format, args...)})
	}
	sc := ufs.Schemes[ds.URI.Scheme]
	resolved := map[string]string{}
	for _, key := range slices.Sorted(maps.Keys(ds.Options)) {
		raw := ds.Options[key]
		field := f + "." + key
		name, fromFile := strings.CutSuffix(key, "_file")
		spec, ok := sc.Option(name)
		if !ok || (fromFile && !spec.Secret) {
			if spec, ok = sc.Option(key); !ok {
				known := strings.Join(sc.OptionNames(), ", ")
				if known == "" {
					known = "none"
				}
				bad(field, "unknown option for a %s:// dataset (known options: %s)", sc.Name, known)
				continue
			}
			name, fromFile = key, false
		}
		if _, both := ds.Options[name]; both && fromFile {
			bad(field, "%s is given both directly and as %s_file", name, name)
			continue
		}
		value, err := expandEnv(raw)
		if err != nil {
			bad(field, "%v", err)
			continue
		}
		if fromFile {
			if !strings.HasPrefix(value, "/") {
				bad(field, "%q is not an absolute path", value)
				continue
			}
			data, err := os.ReadFile(value)
			if err != nil {
				bad(field, "cannot read secret file: %v", err)
				continue
			}
			value = strings.TrimRight(string(data), "\r\n")
			if value == "" {
				bad(field, "secret file %s is empty", raw)
				continue
			}
		}
		switch spec.Kind {
		case ufs.OptBool:
			if _, err := strconv.ParseBool(value); err != nil {
				bad(field, "expected true or false, found %q", value)
				continue
			}
		case ufs.OptInt:
			if n, err := strconv.Atoi(value); err != nil || n < 0 {
				bad(field, "expected a non-negative integer, found %q", value)
				continue
			}
		case ufs.OptPath:
			if !strings.HasPrefix(value, "/") {
				bad(field, "%q is not an absolute path", value)
				continue
			}
		case ufs.OptDuration:
			if _, err := time.ParseDuration(value); err != nil {
				bad(field, "expected a duration such as 30s, found %q", value)
				continue
			}
		}
		resolved[name] = value
	}
	ds.Options = resolved
	return ps
}

// expandEnv replaces ${NAME} with the environment variable NAME, which must
// be set: a silently empty secret would only fail later, far from its cause.
func expandEnv(s string) (string, error) {
	var missing []string
	out := envRef.ReplaceAllStringFunc(s, func(ref string) string {
		name := ref[2 : len(ref)-1]
		v, ok := os.LookupEnv(name)
		if !ok {
			missing = append(missing, name)
		}
		return v
	})
	if len(missing) > 0 {
		return "", fmt.Errorf("environment variable %s is not set", strings.Join(missing, ", "))
	}
	return out, nil
}

// Secret reports whether option name of a dataset is secret.
func (ds *Dataset) Secret(name string) bool {
	spec, ok := ufs.Schemes[ds.URI.Scheme].Option(name)
	return ok && spec.Secret
}

// FromURI builds a dataset from a name and URI given on the command line,
// with every default applied.
func FromURI(name, uri string) (Dataset, error) {
	ds := Dataset{Name: name, UFS: uri}
	ps := ds.check("--dataset "+name, func(string) *yaml.Node { return &yaml.Node{} })
	if len(ps) > 0 {
		errs := make([]error, len(ps))
		for i, p := range ps {
			errs[i] = fmt.Errorf("--dataset %s=%s: %s", name, uri, p.msg)
		}
		return Dataset{}, errors.Join(errs...)
	}
	return ds, nil
}

// Dataset returns the dataset called name.
func (c *Config) Dataset(name string) (*Dataset, bool) {
	for i := range c.Datasets {
		if c.Datasets[i].Name == name {
			return &c.Datasets[i], true
		}
	}
	return nil, false
}

// Add appends a dataset, refusing a duplicate name.
func (c *Config) Add(ds Dataset) error {
	if _, dup := c.Dataset(ds.Name); dup {
		return fmt.Errorf("dataset %q is defined twice", ds.Name)
	}
	if ds.BlockSize == 0 {
		if ds.WholeFile == 0 && c.Worker.wholeFiles {
			ds.WholeFile = DefaultWholeFile
		}
		ds.BlockSize = c.Worker.BlockSize
	}
	c.Datasets = append(c.Datasets, ds)
	return nil
}

// quoteList writes "a", "b" or "c".
func quoteList(xs []string) string {
	q := make([]string, len(xs))
	for i, x := range xs {
		q[i] = strconv.Quote(x)
	}
	if len(q) == 1 {
		return q[0]
	}
	return strings.Join(q[:len(q)-1], ", ") + " or " + q[len(q)-1]
}
