// Package fluid lets granary serve as a runtime of Fluid
// (fluid-cloudnative): it turns the configuration Fluid hands a ThinRuntime's
// FUSE container (config.json: the Dataset's mounts, the target path, the
// runtime's options) into a granary configuration, and shapes the answers
// Fluid's generic cache runtime expects from its commands.
package fluid

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path"
	"regexp"
	"slices"
	"sort"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/granary-cache/granary/internal/ufs"
)

// Where Fluid puts the ThinRuntime's configuration in the FUSE container:
// ConfigPath since Fluid 1.1, LegacyConfigPath before.
const (
	ConfigPath       = "/etc/fluid/config/config.json"
	LegacyConfigPath = "/etc/fluid/config.json"
	// SecretsDir is where Fluid mounts the Secrets of a Dataset's
	// encryptOptions; an option whose value is a file below it is a secret.
	SecretsDir = "/etc/fluid/secrets"
)

// ThinConfig is the part of Fluid's config.json granary reads. Fields it
// does not know (persistentVolumeAttrs, ...) are ignored.
type ThinConfig struct {
	Mounts         []Mount           `json:"mounts"`
	TargetPath     string            `json:"targetPath"`
	RuntimeOptions map[string]string `json:"runtimeOptions"`
	AccessModes    []string          `json:"accessModes"`
	// Master, Worker and Client are in a CacheRuntime's runtime.json
	// only: their granary.* options stand for runtimeOptions there.
	Master *Component `json:"master"`
	Worker *Component `json:"worker"`
	Client *Component `json:"client"`
}

// Mount is one entry of a Dataset's spec.mounts, as Fluid passes it on.
type Mount struct {
	MountPoint string            `json:"mountPoint"`
	Name       string            `json:"name"`
	Path       string            `json:"path"`
	Options    map[string]string `json:"options"`
	ReadOnly   bool              `json:"readOnly"`
	Shared     bool              `json:"shared"`
	// EncryptOptions is, in a CacheRuntime's runtime.json, an object of
	// option name to the file Fluid mounts the secret at; anything else
	// (a ThinRuntime passes them among the options) is ignored.
	EncryptOptions encryptOptions `json:"encryptOptions"`
}

// encryptOptions decodes a JSON object of strings and ignores any other
// value.
type encryptOptions map[string]string

func (e *encryptOptions) UnmarshalJSON(b []byte) error {
	var m map[string]string
	if json.Unmarshal(b, &m) == nil {
		*e = m
	}
	return nil
}

// ParseThinConfig decodes config.json; name is the file's name in errors.
func ParseThinConfig(name string, data []byte) (*ThinConfig, error) {
	var c ThinConfig
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("%s: not the JSON of a Fluid ThinRuntime config: %w", name, err)
	}
	c.normalize()
	return &c, nil
}

// ReadThinConfig reads config.json from file, or when file is "", from
// $FLUID_RUNTIME_CONFIG_PATH (a CacheRuntime's runtime.json), ConfigPath
// and then LegacyConfigPath.
func ReadThinConfig(file string) (*ThinConfig, string, error) {
	candidates := []string{ConfigPath, LegacyConfigPath}
	if env := os.Getenv(RuntimeConfigEnv); env != "" && file == "" {
		file = env
	}
	if file != "" {
		candidates = []string{file}
	}
	for _, p := range candidates {
		data, err := os.ReadFile(p)
		if errors.Is(err, os.ErrNotExist) && file == "" {
			continue
		}
		if err != nil {
			return nil, p, err
		}
		c, err := ParseThinConfig(p, data)
		return c, p, err
	}
	return nil, "", fmt.Errorf("no Fluid configuration: neither %s (Fluid 1.1 and later) nor %s exists; give --config-file", ConfigPath, LegacyConfigPath)
}

// Runtime options of a ThinRuntime (spec.fuse.options of the
// ThinRuntimeProfile or the ThinRuntime) that granary reads. Every key
// granary owns starts with OptPrefix; others are ignored.
const (
	OptPrefix = "granary."
	// OptConfig names a granary YAML file in the FUSE container (from a
	// ConfigMap, say): its membership, auth, client and worker sections
	// are kept, and a dataset of it named as a mount gives that mount its
	// settings (replicas, metadata_sync, ...).
	OptConfig = "granary.config"
	// Membership: the workers' Leases (kubernetes), a static list or etcd.
	OptMembershipType      = "granary.membership.type"
	OptMembershipCluster   = "granary.membership.cluster"
	OptMembershipNamespace = "granary.membership.namespace"
	OptMembershipWorkers   = "granary.membership.workers"   // id=host:port,id=host:port
	OptMembershipEndpoints = "granary.membership.endpoints" // etcd URLs, comma-separated
	OptMembershipPrefix    = "granary.membership.prefix"
	OptTokenFile           = "granary.auth.token_file"
	// OptDatasetPrefix sets a dataset field for every mount, e.g.
	// granary.dataset.metadata_sync: 10m.
	OptDatasetPrefix = "granary.dataset."
)

// datasetFields are the fields of a granary dataset (besides name, ufs and
// options) that a mount's options or granary.dataset.* may set.
var datasetFields = map[string]func(string) (any, error){
	"metadata_sync": asString,
	"replicas":      asInt,
	"pin":           asBool,
	"fallback":      asString,
	"block_size":    asString,
	"open_mode":     asString,
	"near_cache":    asBool,
}

func asString(s string) (any, error) { return s, nil }

func asInt(s string) (any, error) {
	var n int
	if _, err := fmt.Sscan(s, &n); err != nil || fmt.Sprint(n) != strings.TrimSpace(s) {
		return nil, fmt.Errorf("%q is not a whole number", s)
	}
	return n, nil
}

func asBool(s string) (any, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "true", "yes", "1":
		return true, nil
	case "false", "no", "0":
		return false, nil
	}
	return nil, fmt.Errorf("%q is not true or false", s)
}

// optionAliases maps the option names Fluid users know from other runtimes
// (Alluxio's, Hadoop's s3a) to granary's, per scheme. Granary's own names
// are always accepted.
var optionAliases = map[string]map[string]string{
	"s3": {
		"fs.s3a.endpoint":                        "endpoint",
		"alluxio.underfs.s3.endpoint":            "endpoint",
		"fs.s3a.endpoint.region":                 "region",
		"alluxio.underfs.s3.endpoint.region":     "region",
		"fs.s3a.access.key":                      "access_key",
		"aws.accessKeyId":                        "access_key",
		"fs.s3a.secret.key":                      "secret_key",
		"aws.secretKey":                          "secret_key",
		"fs.s3a.path.style.access":               "path_style",
		"alluxio.underfs.s3.disable.dns.buckets": "path_style",
	},
}

var datasetName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

// schemeAliases maps URI schemes of Fluid's mounts to granary's.
var schemeAliases = map[string]string{"s3a": "s3", "local": "file"}

// Translation is a ThinRuntime configuration made into granary's.
type Translation struct {
	// Config is the granary configuration (YAML). Secrets are not in it:
	// it names their files (NAME_file).
	Config []byte
	// TargetPath is where Fluid expects the file system.
	TargetPath string
	// Root is the dataset mounted at TargetPath itself, or "" when every
	// dataset is a directory below it.
	Root string
	// Datasets are the datasets' names, in the mounts' order.
	Datasets []string
	// Warnings are things worth logging that do not stop the mount.
	Warnings []string
}

// TranslateOptions tune Translate.
type TranslateOptions struct {
	// SecretsDir replaces SecretsDir (tests).
	SecretsDir string
	// ReadFile reads granary.config and non-secret option files
	// (default os.ReadFile).
	ReadFile func(string) ([]byte, error)
}

// Translate turns Fluid's configuration into granary's.
//
// Each mount becomes a dataset: its ufs is the mount point, its options
// granary's (Alluxio/s3a names are accepted too). An option whose value is
// a file under /etc/fluid/secrets (Fluid's encryptOptions) is read from it:
// a secret option as NAME_file, any other by reading the file now. Where it
// appears: a single mount without a path, or with path "/", is the root of
// the target path; otherwise each is the directory named by its path (one
// level, e.g. "/imagenet") or else its name.
func Translate(c *ThinConfig, o TranslateOptions) (*Translation, error) {
	if o.SecretsDir == "" {
		o.SecretsDir = SecretsDir
	}
	if o.ReadFile == nil {
		o.ReadFile = os.ReadFile
	}
	tr := &Translation{}
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", field, fmt.Sprintf(format, args...)))
	}
	switch tp := c.TargetPath; {
	case tp == "":
		bad("targetPath", "missing: Fluid names the directory to mount there")
	case !path.IsAbs(tp):
		bad("targetPath", "%q is not an absolute path", tp)
	case hasDotDot(tp):
		bad("targetPath", "%q must not contain \"..\"", tp)
	default:
		tr.TargetPath = path.Clean(tp)
	}
	for _, m := range c.AccessModes {
		if m != "ReadOnlyMany" && m != "ReadOnlyOnce" {
			tr.Warnings = append(tr.Warnings, fmt.Sprintf("accessModes: %s asks for writes, but granary serves datasets read-only", m))
		}
	}

	base := map[string]any{}
	if p := c.RuntimeOptions[OptConfig]; p != "" {
		data, err := o.ReadFile(p)
		if err != nil {
			bad("runtimeOptions."+OptConfig, "%v", err)
		} else if err := yaml.Unmarshal(data, &base); err != nil {
			bad("runtimeOptions."+OptConfig, "%s is not YAML: %v", p, err)
		}
		if base == nil {
			base = map[string]any{}
		}
	}
	baseDatasets := map[string]map[string]any{}
	if list, ok := base["datasets"].([]any); ok {
		for _, item := range list {
			if m, ok := item.(map[string]any); ok {
				if n, ok := m["name"].(string); ok {
					baseDatasets[n] = m
				}
			}
		}
	}
	delete(base, "datasets")

	// Runtime options.
	defaults := map[string]any{}
	membership, _ := base["membership"].(map[string]any)
	if membership == nil {
		membership = map[string]any{}
	}
	keys := sortedKeys(c.RuntimeOptions)
	for _, k := range keys {
		v := c.RuntimeOptions[k]
		field := "runtimeOptions." + k
		switch {
		case !strings.HasPrefix(k, OptPrefix), k == OptConfig:
		case k == OptMembershipType:
			membership["type"] = v
		case k == OptMembershipCluster:
			membership["cluster"] = v
		case k == OptMembershipNamespace:
			membership["namespace"] = v
		case k == OptMembershipPrefix:
			membership["prefix"] = v
		case k == OptMembershipEndpoints:
			var eps []any
			for _, e := range splitList(v) {
				eps = append(eps, e)
			}
			membership["endpoints"] = eps
		case k == OptMembershipWorkers:
			var workers []any
			for _, w := range splitList(v) {
				id, addr, ok := strings.Cut(w, "=")
				if !ok || id == "" || addr == "" {
					bad(field, "%q: expected ID=HOST:PORT, e.g. w1=10.0.0.1:7700", w)
					continue
				}
				workers = append(workers, map[string]any{"id": id, "addr": addr})
			}
			membership["workers"] = workers
		case k == OptTokenFile:
			auth, _ := base["auth"].(map[string]any)
			if auth == nil {
				auth = map[string]any{}
			}
			auth["token_file"] = v
			base["auth"] = auth
		case strings.HasPrefix(k, OptDatasetPrefix):
			name := strings.TrimPrefix(k, OptDatasetPrefix)
			conv, ok := datasetFields[name]
			if !ok {
				bad(field, "unknown dataset field %q: expected one of %s", name, strings.Join(sortedKeys(datasetFields), ", "))
				continue
			}
			val, err := conv(v)
			if err != nil {
				bad(field, "%v", err)
				continue
			}
			defaults[name] = val
		default:
			bad(field, "unknown option: granary reads %s", strings.Join([]string{OptConfig, "granary.membership.{type,cluster,namespace,workers,endpoints,prefix}", OptTokenFile, OptDatasetPrefix + "FIELD"}, ", "))
		}
	}
	if _, set := membership["type"]; !set {
		switch {
		case membership["cluster"] != nil || membership["namespace"] != nil:
			membership["type"] = "kubernetes"
		case membership["endpoints"] != nil:
			membership["type"] = "etcd"
		}
	}
	if len(membership) > 0 {
		base["membership"] = membership
	}

	// Mounts.
	if len(c.Mounts) == 0 {
		bad("mounts", "missing: the Dataset has no mounts")
	}
	seen := map[string]string{}
	var datasets []any
	for i, m := range c.Mounts {
		field := fmt.Sprintf("mounts[%d]", i)
		ds, name, root, err := translateMount(m, field, len(c.Mounts), o)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if prev, dup := seen[name]; dup {
			bad(field, "dataset %q is also %s: give the mounts different names or paths", name, prev)
			continue
		}
		seen[name] = field
		if root {
			tr.Root = name
		}
		// Settings: the base file's dataset of that name, then
		// granary.dataset.*, then the mount's own.
		merged := map[string]any{}
		for k, v := range baseDatasets[name] {
			merged[k] = v
		}
		for k, v := range defaults {
			merged[k] = v
		}
		for k, v := range ds {
			if k == "options" {
				if old, ok := merged["options"].(map[string]any); ok {
					for ok, ov := range old {
						if _, set := v.(map[string]any)[ok]; !set {
							v.(map[string]any)[ok] = ov
						}
					}
				}
			}
			merged[k] = v
		}
		datasets = append(datasets, merged)
		tr.Datasets = append(tr.Datasets, name)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	base["datasets"] = datasets
	out, err := yaml.Marshal(base)
	if err != nil {
		return nil, err
	}
	tr.Config = append([]byte("# Written by `granary fluid thin` from Fluid's config.json.\n"), out...)
	return tr, nil
}

// translateMount makes one mount a dataset (a YAML map), and says its name
// and whether it is the root.
func translateMount(m Mount, field string, mounts int, o TranslateOptions) (ds map[string]any, name string, root bool, err error) {
	var errs []error
	bad := func(f, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", f, fmt.Sprintf(format, args...)))
	}
	// The URI.
	uri := m.MountPoint
	scheme := ""
	if uri == "" {
		bad(field+".mountPoint", "missing (the storage to cache, e.g. s3://bucket/prefix or cephfs://fs/dir)")
	} else if s, rest, ok := strings.Cut(uri, "://"); !ok {
		bad(field+".mountPoint", "%q is not a URI such as s3://bucket/prefix", uri)
	} else {
		if alias, ok := schemeAliases[s]; ok {
			s = alias
			uri = s + "://" + rest
		}
		if _, err := ufs.ParseURI(uri); err != nil {
			bad(field+".mountPoint", "%v", err)
		} else {
			scheme = s
		}
	}
	// Where it goes.
	switch {
	case hasDotDot(m.Name) || strings.Contains(m.Name, "/"):
		bad(field+".name", "%q must be a plain name, without \"/\" or \"..\"", m.Name)
	case hasDotDot(m.Path):
		bad(field+".path", "%q must not contain \"..\"", m.Path)
	case m.Path == "/" || (m.Path == "" && mounts == 1):
		if mounts > 1 {
			bad(field+".path", "\"/\" (the root) is only for a Dataset of one mount")
		}
		root = true
		name = m.Name
	case m.Path != "":
		p := strings.Trim(path.Clean("/"+m.Path), "/")
		if strings.Contains(p, "/") {
			bad(field+".path", "%q is nested: granary puts each mount in a directory of the target path, e.g. /%s", m.Path, path.Base(p))
		}
		name = p
	default:
		name = m.Name
	}
	if name == "" {
		name = defaultName(uri)
	}
	if name != "" && !datasetName.MatchString(name) {
		bad(field+".name", "%q is not a valid granary dataset name: up to 63 letters, digits, '.', '_' or '-', starting with a letter or digit", name)
	}
	if len(errs) > 0 {
		return nil, "", false, errors.Join(errs...)
	}
	ds = map[string]any{"name": name, "ufs": uri}
	// The options.
	opts := map[string]any{}
	sc := ufs.Schemes[scheme]
	for _, k := range sortedKeys(m.Options) {
		v := m.Options[k]
		f := field + ".options." + k
		if conv, ok := datasetFields[k]; ok {
			val, err := conv(v)
			if err != nil {
				bad(f, "%v", err)
				continue
			}
			ds[k] = val
			continue
		}
		gname := k
		if alias, ok := optionAliases[scheme][k]; ok {
			gname = alias
		}
		spec, ok := sc.Option(gname)
		if !ok {
			accepted := sc.OptionNames()
			for a := range optionAliases[scheme] {
				accepted = append(accepted, a)
			}
			slices.Sort(accepted)
			bad(f, "not an option of %s:// datasets (accepted: %s)", scheme, strings.Join(accepted, ", "))
			continue
		}
		if _, dup := opts[gname]; dup {
			bad(f, "sets %s a second time", gname)
			continue
		}
		if isUnder(v, o.SecretsDir) {
			if hasDotDot(v) {
				bad(f, "%q must not contain \"..\"", v)
				continue
			}
			if spec.Secret {
				opts[gname+"_file"] = v
				continue
			}
			data, err := o.ReadFile(v)
			if err != nil {
				bad(f, "%v", err)
				continue
			}
			v = strings.TrimRight(string(data), "\r\n")
		}
		opts[gname] = v
	}
	if len(errs) > 0 {
		return nil, "", false, errors.Join(errs...)
	}
	if len(opts) > 0 {
		ds["options"] = opts
	}
	return ds, name, root, nil
}

// defaultName makes a dataset name of a URI's last part (the bucket or
// directory), for a lone mount Fluid passed without a name.
func defaultName(uri string) string {
	_, rest, _ := strings.Cut(uri, "://")
	base := path.Base("/" + strings.Trim(rest, "/"))
	var b strings.Builder
	for _, r := range base {
		if r < 128 && (r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-') {
			b.WriteRune(r)
		} else {
			b.WriteByte('-')
		}
	}
	s := strings.TrimLeft(b.String(), "._-")
	if len(s) > 63 {
		s = s[:63]
	}
	if s == "" {
		return "data"
	}
	return s
}

func hasDotDot(p string) bool {
	return slices.Contains(strings.Split(p, "/"), "..")
}

func isUnder(p, dir string) bool {
	return strings.HasPrefix(p, strings.TrimSuffix(dir, "/")+"/")
}

func splitList(s string) []string {
	var out []string
	for _, part := range strings.Split(s, ",") {
		if part = strings.TrimSpace(part); part != "" {
			out = append(out, part)
		}
	}
	return out
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
