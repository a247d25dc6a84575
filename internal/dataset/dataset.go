// Package dataset binds each configured dataset to its UFS backend, wrapped
// with what every backend gets (per-operation counters, per-dataset limits),
// and maps namespace paths "/<dataset>/<path>" to a dataset and a path in it.
package dataset

import (
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"strconv"
	"strings"

	"github.com/granary-cache/granary/internal/config"
	"github.com/granary-cache/granary/internal/ufs"
	"github.com/granary-cache/granary/internal/ufs/local"
	"github.com/granary-cache/granary/internal/ufs/s3"
)

// Dataset is one opened dataset.
type Dataset struct {
	Config config.Dataset
	// FS is the backend behind its limits and counters: what callers use.
	FS ufs.FS
	// Counts is the counting layer, to read how much the UFS was asked.
	Counts *ufs.Instrumented
	// DirAffine is set when opening a file costs the UFS a metadata request
	// unless the same client listed its directory (see ufs.DirAffine).
	DirAffine bool
}

// Name is the dataset's name.
func (d *Dataset) Name() string { return d.Config.Name }

// Open opens the backend of one dataset. m may be nil.
func Open(ds config.Dataset, m *ufs.Metrics) (*Dataset, error) {
	backend, err := OpenBackend(ds.URI, ds.Options)
	if err != nil {
		return nil, fmt.Errorf("dataset %s (%s): %w", ds.Name, ds.URI, err)
	}
	counted := ufs.Instrument(backend, ds.Name, m)
	affine, _ := backend.(ufs.DirAffine)
	return &Dataset{Config: ds, FS: ufs.Limit(counted, ds.UFSLimits.Limits()), Counts: counted,
		DirAffine: affine != nil && affine.DirAffine()}, nil
}

// OpenBackend opens the bare backend of a URI with its (checked) options,
// without counters or limits.
func OpenBackend(u ufs.URI, opts map[string]string) (ufs.FS, error) {
	switch u.Scheme {
	case "file":
		return local.Open(u.Path)
	case "s3":
		o := s3.Options{
			Endpoint:  opts["endpoint"],
			Region:    opts["region"],
			AccessKey: opts["access_key"],
			SecretKey: opts["secret_key"],
		}
		// Both were checked when the config was read.
		o.PathStyle, _ = strconv.ParseBool(opts["path_style"])
		o.MaxAttempts, _ = strconv.Atoi(opts["max_attempts"])
		return s3.Open(u.Host, u.Path, o)
	case "cephfs":
		return openCephFS(u, opts)
	}
	return nil, fmt.Errorf("no backend for scheme %q", u.Scheme)
}

// Set is every dataset of a configuration, by name.
type Set struct {
	byName map[string]*Dataset
	names  []string
}

// OpenAll opens every dataset of cfg; on error nothing stays open.
func OpenAll(cfg *config.Config, m *ufs.Metrics) (*Set, error) {
	s := &Set{byName: map[string]*Dataset{}}
	for _, dc := range cfg.Datasets {
		d, err := Open(dc, m)
		if err != nil {
			s.Close()
			return nil, err
		}
		s.byName[dc.Name] = d
		s.names = append(s.names, dc.Name)
	}
	slices.Sort(s.names)
	return s, nil
}

// Names lists the datasets, sorted.
func (s *Set) Names() []string { return s.names }

// Get returns the dataset called name.
func (s *Set) Get(name string) (*Dataset, bool) {
	d, ok := s.byName[name]
	return d, ok
}

// Close closes every backend.
func (s *Set) Close() error {
	var errs []error
	for _, d := range s.byName {
		errs = append(errs, d.FS.Close())
	}
	return errors.Join(errs...)
}

// UnknownDatasetError is returned for a path whose first part names no
// dataset. It matches fs.ErrNotExist.
type UnknownDatasetError struct {
	Name  string
	Known []string
}

func (e *UnknownDatasetError) Error() string {
	have := strings.Join(e.Known, ", ")
	if have == "" {
		have = "none is configured"
	}
	return fmt.Sprintf("no dataset named %q (datasets: %s)", e.Name, have)
}

// Is makes errors.Is(err, fs.ErrNotExist) true.
func (e *UnknownDatasetError) Is(target error) bool { return target == fs.ErrNotExist }

// Resolve splits a namespace path "/<dataset>/<path>" into the dataset and
// the cleaned path inside it. The root "/" resolves to a nil dataset. A path
// that would climb out of its dataset is refused.
func (s *Set) Resolve(p string) (*Dataset, string, error) {
	clean, err := ufs.CleanPath(p)
	if err != nil {
		return nil, "", err
	}
	if clean == "" {
		return nil, "", nil
	}
	name, rest, _ := strings.Cut(clean, "/")
	d, ok := s.byName[name]
	if !ok {
		return nil, "", &UnknownDatasetError{Name: name, Known: s.names}
	}
	return d, rest, nil
}
