package ufs

import (
	"fmt"
	"path"
	"slices"
	"strings"
)

// URI locates a dataset's root in a UFS: file:///abs/path,
// s3://bucket/prefix or cephfs://fsname/path. No percent-decoding is done:
// what is written is the path or key prefix as stored.
type URI struct {
	Scheme string
	// Host is the bucket (s3) or file system name (cephfs); empty for file.
	Host string
	// Path is absolute for file and cephfs, a key prefix without slashes at
	// either end for s3 ("" for the whole bucket).
	Path string
}

func (u URI) String() string {
	switch u.Scheme {
	case "s3":
		if u.Path == "" {
			return "s3://" + u.Host
		}
		return "s3://" + u.Host + "/" + u.Path
	default:
		return u.Scheme + "://" + u.Host + u.Path
	}
}

// OptionKind is the type of a backend option's value.
type OptionKind int

// Option kinds.
const (
	OptString OptionKind = iota
	OptBool
	OptInt
	OptPath     // an absolute file path
	OptDuration // a Go duration such as "30s"; "-1s" or less to disable
)

// OptionSpec describes one option a backend accepts under a dataset's options.
type OptionSpec struct {
	Name string
	Kind OptionKind
	// Secret values are masked when printed. They (and only they) may also
	// be read from a file named by the option NAME_file.
	Secret bool
}

// Scheme describes one kind of UFS.
type Scheme struct {
	Name    string
	Example string
	Options []OptionSpec
	// BuildTag, when set, is the Go build tag the backend needs; without it
	// the scheme is recognised but cannot be opened.
	BuildTag string
}

// Option returns the spec of option name.
func (s Scheme) Option(name string) (OptionSpec, bool) {
	i := slices.IndexFunc(s.Options, func(o OptionSpec) bool { return o.Name == name })
	if i < 0 {
		return OptionSpec{}, false
	}
	return s.Options[i], true
}

// OptionNames lists the names a dataset of this scheme accepts.
func (s Scheme) OptionNames() []string {
	var names []string
	for _, o := range s.Options {
		names = append(names, o.Name)
		if o.Secret {
			names = append(names, o.Name+"_file")
		}
	}
	return names
}

// Schemes are the UFS kinds granary knows, whether or not this build can
// open them.
var Schemes = map[string]Scheme{
	"file": {Name: "file", Example: "file:///data/imagenet"},
	"s3": {Name: "s3", Example: "s3://bucket/prefix", Options: []OptionSpec{
		{Name: "endpoint"},
		{Name: "region"},
		{Name: "path_style", Kind: OptBool},
		{Name: "access_key", Secret: true},
		{Name: "secret_key", Secret: true},
		{Name: "max_attempts", Kind: OptInt},
	}},
	"cephfs": {Name: "cephfs", Example: "cephfs://cephfs/datasets/imagenet", BuildTag: "cephfs", Options: []OptionSpec{
		{Name: "conf", Kind: OptPath},
		{Name: "monitors"},
		{Name: "user"},
		{Name: "keyring", Kind: OptPath},
		{Name: "secret", Secret: true},
		{Name: "fs_name"},
		{Name: "mds_namespace"}, // the older name of fs_name
		{Name: "op_timeout", Kind: OptDuration},
		{Name: "idle_unmount", Kind: OptDuration},
	}},
}

func schemeNames() string {
	names := make([]string, 0, len(Schemes))
	for n := range Schemes {
		names = append(names, n+"://")
	}
	slices.Sort(names)
	return strings.Join(names, ", ")
}

// ParseURI parses and checks a dataset URI.
func ParseURI(s string) (URI, error) {
	scheme, rest, ok := strings.Cut(s, "://")
	if !ok {
		return URI{}, fmt.Errorf("%q is not a URI: expected one of %s followed by a location", s, schemeNames())
	}
	sc, ok := Schemes[scheme]
	if !ok {
		return URI{}, fmt.Errorf("unknown scheme %q in %q: expected one of %s", scheme, s, schemeNames())
	}
	if strings.IndexByte(s, 0) >= 0 {
		return URI{}, fmt.Errorf("%q contains a NUL byte", s)
	}
	host, p, _ := strings.Cut(rest, "/")
	u := URI{Scheme: scheme, Host: host}
	switch scheme {
	case "file", "cephfs":
		if scheme == "file" && host != "" {
			return URI{}, fmt.Errorf("%q: a file URI takes an absolute path, as in %s (three slashes)", s, sc.Example)
		}
		p = "/" + p
		if clean := path.Clean(p); clean != p && clean+"/" != p {
			return URI{}, fmt.Errorf("%q: path %q is not clean (did you mean %q?)", s, p, clean)
		}
		u.Path = path.Clean(p)
	case "s3":
		if host == "" {
			return URI{}, fmt.Errorf("%q: missing bucket name, as in %s", s, sc.Example)
		}
		if strings.ContainsAny(host, ":@?#") {
			return URI{}, fmt.Errorf("%q: %q is not a bucket name (put the endpoint in options.endpoint)", s, host)
		}
		trimmed := strings.Trim(p, "/")
		clean, err := CleanPath(trimmed)
		if err != nil || clean != trimmed {
			return URI{}, fmt.Errorf("%q: key prefix %q is not clean (no empty, \".\" or \"..\" parts)", s, p)
		}
		u.Path = trimmed
	}
	return u, nil
}
