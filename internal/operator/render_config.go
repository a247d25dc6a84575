package operator

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"path"
	"slices"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/granary-cache/granary/api/v1alpha1"
	"github.com/granary-cache/granary/internal/config"
	"github.com/granary-cache/granary/internal/ufs"
)

// Paths inside a worker's (or loader's) container.
const (
	configDir   = "/etc/granary/config"
	configFile  = configDir + "/granary.yaml"
	tokenDir    = "/etc/granary/token"
	tokenKey    = "token"
	secretsRoot = "/etc/granary/secrets"
	stateDir    = "/var/lib/granary"
	tierRoot    = "/cache"
	// DefaultPort is the workers' data port; the admin port is the next.
	DefaultPort = 7420
	// defaultPageSize is granary's page size (worker.page_size).
	defaultPageSize = 4 << 20
)

// SpecError is a spec that cannot be turned into a configuration; its
// message names the field and what is wrong, and becomes the reason of a
// Failed condition.
type SpecError struct {
	Field string
	Msg   string
}

func (e *SpecError) Error() string { return e.Field + ": " + e.Msg }

func specErr(field, format string, args ...any) error {
	return &SpecError{Field: field, Msg: fmt.Sprintf(format, args...)}
}

// secretFile is a Secret key a configuration reads, as a file under
// secretsRoot.
type secretFile struct {
	Secret, Key string
}

// Path is where the key's file is in the container.
func (s secretFile) Path() string { return path.Join(secretsRoot, s.Secret, s.Key) }

// renderedDataset is one dataset of granary.yaml.
type renderedDataset struct {
	Name         string            `yaml:"name"`
	UFS          string            `yaml:"ufs"`
	Options      map[string]string `yaml:"options,omitempty"`
	MetadataSync string            `yaml:"metadata_sync,omitempty"`
	Replicas     int32             `yaml:"replicas,omitempty"`
	Pin          bool              `yaml:"pin,omitempty"`
	OpenMode     string            `yaml:"open_mode,omitempty"`
	NearCache    bool              `yaml:"near_cache,omitempty"`
	BlockSize    string            `yaml:"block_size,omitempty"`
}

// datasetConfig turns a Dataset's spec into its granary.yaml entry and the
// Secret keys it reads. It checks what the CRD schema cannot: the scheme's
// options, and which of them may come from a Secret.
func datasetConfig(ds *v1alpha1.Dataset) (renderedDataset, []secretFile, error) {
	s := ds.Spec
	out := renderedDataset{Name: ds.Name, UFS: s.UFS, MetadataSync: s.MetadataSync, Replicas: s.Replicas, Pin: s.Pin,
		OpenMode: s.OpenMode, NearCache: s.NearCache}
	if s.BlockSize != nil {
		out.BlockSize = fmt.Sprint(s.BlockSize.Value())
	}
	u, err := ufs.ParseURI(s.UFS)
	if err != nil {
		return out, nil, specErr("spec.ufs", "%v", err)
	}
	sc := ufs.Schemes[u.Scheme]
	known := func() string {
		if n := sc.OptionNames(); len(n) > 0 {
			return strings.Join(n, ", ")
		}
		return "none"
	}
	out.Options = map[string]string{}
	for _, k := range slices.Sorted(mapKeys(s.Options)) {
		spec, ok := sc.Option(k)
		if !ok {
			return out, nil, specErr("spec.options."+k, "unknown option for a %s:// dataset (known options: %s)", sc.Name, known())
		}
		if spec.Secret {
			return out, nil, specErr("spec.options."+k, "%s is a secret: give it in secretOptions, from a Secret", k)
		}
		out.Options[k] = s.Options[k]
	}
	var files []secretFile
	for i, so := range s.SecretOptions {
		f := fmt.Sprintf("spec.secretOptions[%d]", i)
		spec, ok := sc.Option(so.Name)
		if !ok {
			return out, nil, specErr(f+".name", "unknown option %q for a %s:// dataset (known options: %s)", so.Name, sc.Name, known())
		}
		if _, both := out.Options[so.Name]; both {
			return out, nil, specErr(f+".name", "%s is given in options too", so.Name)
		}
		ref := secretFile{Secret: so.ValueFrom.SecretKeyRef.Name, Key: so.ValueFrom.SecretKeyRef.Key}
		files = append(files, ref)
		switch {
		case spec.Secret:
			out.Options[so.Name+"_file"] = ref.Path()
		case spec.Kind == ufs.OptPath:
			out.Options[so.Name] = ref.Path() // a keyring or ceph.conf, as a file
		default:
			out.Options[so.Name+"_file"] = ref.Path()
			return out, nil, specErr(f+".name", "%s is not a secret or a file; put it in options", so.Name)
		}
	}
	if len(out.Options) == 0 {
		out.Options = nil
	}
	return out, files, nil
}

func mapKeys[V any](m map[string]V) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// renderedConfig is the workers' granary.yaml.
type renderedConfig struct {
	Datasets   []renderedDataset `yaml:"datasets"`
	Worker     renderedWorker    `yaml:"worker"`
	Auth       renderedAuth      `yaml:"auth"`
	Membership renderedMembers   `yaml:"membership"`
}

type renderedWorker struct {
	Listen    string         `yaml:"listen"`
	Admin     string         `yaml:"admin"`
	StateDir  string         `yaml:"state_dir"`
	BlockSize string         `yaml:"block_size,omitempty"`
	PageSize  string         `yaml:"page_size,omitempty"`
	Tiers     []renderedTier `yaml:"tiers"`
}

type renderedTier struct {
	Name  string  `yaml:"name"`
	Path  string  `yaml:"path"`
	Quota string  `yaml:"quota"`
	High  float64 `yaml:"high,omitempty"`
	Low   float64 `yaml:"low,omitempty"`
	// HugePages is "off" unless the workers may remount their MEM tier
	// (spec.worker.hugePages): without the capability a worker would
	// only say, at every start, that it cannot.
	HugePages string `yaml:"huge_pages,omitempty"`
}

type renderedAuth struct {
	TokenFile string `yaml:"token_file"`
}

type renderedMembers struct {
	Type      string `yaml:"type"`
	Cluster   string `yaml:"cluster"`
	Namespace string `yaml:"namespace"`
	LeaseTTL  string `yaml:"lease_ttl"`
}

// Rendered is what the operator makes of a CacheRuntime and its Datasets:
// the configuration file and what it needs mounted.
type Rendered struct {
	// Config is granary.yaml.
	Config string
	// Hash names the configuration: a change rolls the workers.
	Hash string
	// Secrets are the Secret keys the datasets read, as files.
	Secrets []secretFile
}

// tierPath is where a tier is mounted in the worker's container.
func tierPath(t v1alpha1.TierSpec) string { return path.Join(tierRoot, strings.ToLower(t.Name)) }

// renderConfig writes the workers' configuration. Datasets are in the order
// given; the caller passes only those that are valid.
func renderConfig(rt *v1alpha1.CacheRuntime, datasets []*v1alpha1.Dataset) (Rendered, error) {
	port := rt.Spec.Worker.Port
	if port == 0 {
		port = DefaultPort
	}
	lease := rt.Spec.LeaseDurationSeconds
	if lease == 0 {
		lease = int32(time.Duration(config.DefaultKubeLeaseTTL) / time.Second)
	}
	c := renderedConfig{
		Worker: renderedWorker{
			Listen:   fmt.Sprintf("0.0.0.0:%d", port),
			Admin:    fmt.Sprintf("0.0.0.0:%d", port+1),
			StateDir: stateDir,
		},
		Auth:       renderedAuth{TokenFile: path.Join(tokenDir, tokenKey)},
		Membership: renderedMembers{Type: config.MembershipKubernetes, Cluster: rt.Name, Namespace: rt.Namespace, LeaseTTL: fmt.Sprintf("%ds", lease)},
	}
	if rt.Spec.BlockSize != nil {
		b := rt.Spec.BlockSize.Value()
		c.Worker.BlockSize = fmt.Sprint(b)
		if b < defaultPageSize {
			c.Worker.PageSize = fmt.Sprint(b) // a page is at most a block
		}
	}
	for i, t := range rt.Spec.Tiers {
		rtier := renderedTier{Name: t.Name, Path: tierPath(t), Quota: fmt.Sprint(t.Quota.Value())}
		if !rt.Spec.Worker.HugePages {
			rtier.HugePages = config.HugePagesOff
		}
		if t.Quota.Sign() <= 0 {
			return Rendered{}, specErr(fmt.Sprintf("spec.tiers[%d].quota", i), "must be positive, found %s", t.Quota.String())
		}
		if t.High != nil {
			rtier.High = float64(*t.High) / 100
		}
		if t.Low != nil {
			rtier.Low = float64(*t.Low) / 100
		}
		c.Worker.Tiers = append(c.Worker.Tiers, rtier)
	}
	var secrets []secretFile
	for _, ds := range datasets {
		d, files, err := datasetConfig(ds)
		if err != nil {
			return Rendered{}, fmt.Errorf("dataset %s: %w", ds.Name, err)
		}
		c.Datasets = append(c.Datasets, d)
		secrets = append(secrets, files...)
	}
	b, err := yaml.Marshal(c)
	if err != nil {
		return Rendered{}, err
	}
	text := "# Written by the granary operator from CacheRuntime " + rt.Namespace + "/" + rt.Name + " and its Datasets: edits are overwritten.\n" + string(b)
	// The same file is what granary itself reads: check it the same way,
	// so that a spec the worker would refuse fails here, with its reason.
	if _, err := config.Parse("CacheRuntime "+rt.Name, []byte(text)); err != nil {
		if msg := withoutFileErrors(err); msg != "" {
			return Rendered{}, fmt.Errorf("the rendered configuration is not valid: %s", msg)
		}
	}
	slices.SortFunc(secrets, func(a, b secretFile) int { return strings.Compare(a.Path(), b.Path()) })
	secrets = slices.Compact(secrets)
	sum := sha256.Sum256([]byte(text))
	return Rendered{Config: text, Hash: hex.EncodeToString(sum[:8]), Secrets: secrets}, nil
}

// withoutFileErrors drops from a configuration error the lines about files
// that exist in the workers' containers but not in the operator's (the
// token, the Secrets' files), and returns what is left.
func withoutFileErrors(err error) string {
	var keep []string
	for _, line := range strings.Split(err.Error(), "\n") {
		if line == "" || strings.Contains(line, "cannot read") {
			continue
		}
		keep = append(keep, line)
	}
	return strings.Join(keep, "; ")
}
