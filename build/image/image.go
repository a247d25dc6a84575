package main

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

const (
	imageBinary = "/usr/bin/granary"
	imagePATH   = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	sourceURL   = "https://github.com/granary-cache/granary"
	caPath      = "/etc/ssl/certs/ca-certificates.crt"
)

// config is what one image is built from.
type config struct {
	variant string   // static or cephfs
	binary  string   // the granary binary
	out     string   // the OCI layout directory to write
	version string   // "" asks the binary
	tag     string   // org.opencontainers.image.ref.name in index.json; "" derives it
	caCerts string   // the CA bundle to ship
	plugins []string // Ceph plugin directories (under libceph-common's) for cephfs
	created time.Time
	force   bool // replace an existing layout in out
	log     io.Writer
	workDir string // for the layer files; "" is a temporary directory
}

// result describes a written image.
type result struct {
	Dir      string
	Tag      string
	Digest   v1.Hash // of the manifest
	Version  string
	Layers   []layerStats
	Platform v1.Platform
	Packages int // Debian packages in the cephfs image
}

// Compressed is the sum of the image's compressed layer sizes.
func (r *result) Compressed() int64 {
	var n int64
	for _, l := range r.Layers {
		n += l.Compressed
	}
	return n
}

// Unpacked is the sum of the sizes of the image's regular files.
func (r *result) Unpacked() int64 {
	var n int64
	for _, l := range r.Layers {
		n += l.FileBytes
	}
	return n
}

// build writes the image of c and returns what it wrote.
func build(c config) (*result, error) {
	info, err := inspectBinary(c.binary)
	if err != nil {
		return nil, err
	}
	if err := checkVariant(c.variant, c.binary, info); err != nil {
		return nil, err
	}
	version, commit := c.version, ""
	if version == "" {
		if version, commit, err = binaryVersion(c.binary); err != nil {
			return nil, err
		}
	}
	tag := c.tag
	if tag == "" {
		tag = tagFor(version, c.variant)
	}
	if err := prepareOut(c.out, c.force); err != nil {
		return nil, err
	}
	work := c.workDir
	if work == "" {
		if work, err = os.MkdirTemp("", "granary-image-"); err != nil {
			return nil, err
		}
		defer os.RemoveAll(work)
	}

	res := &result{Dir: c.out, Tag: tag, Version: version,
		Platform: v1.Platform{OS: "linux", Architecture: info.arch}}
	var layers []mutate.Addendum
	addLayer := func(t *tree, name, createdBy string) error {
		l, st, err := writeLayer(t, work, name, c.created)
		if err != nil {
			return err
		}
		res.Layers = append(res.Layers, st)
		layers = append(layers, mutate.Addendum{Layer: l, MediaType: types.OCILayer,
			History: v1.History{Created: v1.Time{Time: c.created}, CreatedBy: createdBy, Comment: name}})
		return nil
	}

	// Layer 1, the same in both variants: users, CA certificates, /tmp.
	base, err := baseTree(c.caCerts)
	if err != nil {
		return nil, err
	}
	if err := addLayer(base, "base", "granary build/image: /etc/passwd, /etc/group, "+caPath+", /tmp"); err != nil {
		return nil, err
	}
	// Layer 2 (cephfs): libcephfs and its closure, from Debian's packages.
	if c.variant == "cephfs" {
		libs, pkgs, err := debianClosure(c.binary, info, c.plugins, c.log)
		if err != nil {
			return nil, err
		}
		res.Packages = len(pkgs)
		var names []string
		for _, p := range pkgs {
			names = append(names, p.bare()+"="+p.version)
		}
		if err := addLayer(libs, "libcephfs", "granary build/image: Debian packages "+strings.Join(names, " ")); err != nil {
			return nil, err
		}
	}
	// The last layer, the one that changes with every release: the binary.
	bin := newTree()
	if err := bin.copyFile(imageBinary, 0o755, c.binary); err != nil {
		return nil, err
	}
	if err := addLayer(bin, "granary", "granary build/image: "+imageBinary+" ("+c.variant+")"); err != nil {
		return nil, err
	}

	labels := map[string]string{
		"org.opencontainers.image.title":       "granary",
		"org.opencontainers.image.description": description(c.variant),
		"org.opencontainers.image.version":     version,
		"org.opencontainers.image.source":      sourceURL,
		"org.opencontainers.image.url":         sourceURL,
	}
	if commit != "" && commit != "unknown" {
		labels["org.opencontainers.image.revision"] = commit
	}
	if !c.created.IsZero() && c.created.Unix() != 0 {
		labels["org.opencontainers.image.created"] = c.created.UTC().Format(time.RFC3339)
	}
	cfg := &v1.ConfigFile{
		Architecture: info.arch,
		OS:           "linux",
		Created:      v1.Time{Time: c.created},
		Config: v1.Config{
			Entrypoint: []string{imageBinary},
			Env:        []string{imagePATH},
			WorkingDir: "/",
			Labels:     labels,
		},
		RootFS: v1.RootFS{Type: "layers"},
	}
	img := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	if img, err = mutate.ConfigFile(img, cfg); err != nil {
		return nil, err
	}
	if img, err = mutate.Append(img, layers...); err != nil {
		return nil, err
	}
	img = mutate.Annotations(img, labels).(v1.Image)

	lp, err := layout.Write(c.out, empty.Index)
	if err != nil {
		return nil, fmt.Errorf("writing the OCI layout %s: %w", c.out, err)
	}
	if err := lp.WriteImage(img); err != nil {
		return nil, fmt.Errorf("writing the image to %s: %w", c.out, err)
	}
	// The index entry is written by hand: layout.AppendImage would add an
	// artifactType, which an image's descriptor has no use for.
	desc := v1.Descriptor{
		MediaType:   types.OCIManifestSchema1,
		Annotations: map[string]string{"org.opencontainers.image.ref.name": tag},
		Platform:    &res.Platform,
	}
	if desc.Digest, err = img.Digest(); err != nil {
		return nil, err
	}
	if desc.Size, err = img.Size(); err != nil {
		return nil, err
	}
	if err := lp.AppendDescriptor(desc); err != nil {
		return nil, fmt.Errorf("writing %s/index.json: %w", c.out, err)
	}
	res.Digest = desc.Digest
	// go-containerregistry writes layer blobs through temporary files,
	// which leaves them 0600; the layout is for everyone to read.
	blobs := filepath.Join(c.out, "blobs", "sha256")
	ents, err := os.ReadDir(blobs)
	if err != nil {
		return nil, err
	}
	for _, e := range ents {
		if err := os.Chmod(filepath.Join(blobs, e.Name()), 0o644); err != nil {
			return nil, err
		}
	}
	return res, nil
}

func description(variant string) string {
	if variant == "cephfs" {
		return "granary, a distributed cache for AI training data, with native CephFS (libcephfs from Debian)"
	}
	return "granary, a distributed cache for AI training data (static binary)"
}

// baseTree is the first layer: root and nobody, the CA bundle, /tmp.
func baseTree(caCerts string) (*tree, error) {
	pem, err := os.ReadFile(caCerts)
	if err != nil {
		return nil, fmt.Errorf("CA certificates: %w (install Debian's ca-certificates or pass -ca-certs)", err)
	}
	if !x509.NewCertPool().AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("CA certificates: %s holds no PEM certificate", caCerts)
	}
	t := newTree()
	for _, f := range []struct {
		path string
		data string
	}{
		{"/etc/passwd", "root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n"},
		{"/etc/group", "root:x:0:\nnobody:x:65534:\n"},
	} {
		if err := t.file(f.path, 0o644, []byte(f.data)); err != nil {
			return nil, err
		}
	}
	if err := t.file(caPath, 0o644, pem); err != nil {
		return nil, err
	}
	if err := t.dir("/tmp", 0o777|os.ModeSticky); err != nil {
		return nil, err
	}
	return t, nil
}

// binaryVersion runs `BINARY version --json`.
func binaryVersion(binary string) (version, commit string, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	abs, err := filepath.Abs(binary)
	if err != nil {
		return "", "", err
	}
	out, err := exec.CommandContext(ctx, abs, "version", "--json").Output()
	if err != nil {
		msg := ""
		if ee, ok := err.(*exec.ExitError); ok {
			msg = ": " + strings.TrimSpace(string(ee.Stderr))
		}
		return "", "", fmt.Errorf("%s version --json: %v%s (pass -version to name the version instead)", binary, err, msg)
	}
	var v struct {
		Version string `json:"version"`
		Commit  string `json:"commit"`
	}
	if err := json.Unmarshal(out, &v); err != nil || v.Version == "" {
		return "", "", fmt.Errorf("%s version --json printed %q: not granary's version (pass -version)", binary, out)
	}
	return v.Version, v.Commit, nil
}

var badTagChars = regexp.MustCompile(`[^A-Za-z0-9_.-]`)

// tagFor is the image's tag: the version (made a valid tag) and, for the
// cephfs variant, a -cephfs suffix.
func tagFor(version, variant string) string {
	t := badTagChars.ReplaceAllString(version, "-")
	t = strings.TrimLeft(t, ".-")
	if t == "" {
		t = "dev"
	}
	if variant == "cephfs" {
		t += "-cephfs"
	}
	if len(t) > 128 {
		t = t[:128]
	}
	return t
}

// prepareOut makes out an empty directory: it may be missing or empty, or,
// with force, an OCI layout this tool wrote before.
func prepareOut(out string, force bool) error {
	if out == "" {
		return fmt.Errorf("-out is required")
	}
	ents, err := os.ReadDir(out)
	if os.IsNotExist(err) {
		return os.MkdirAll(out, 0o755)
	}
	if err != nil {
		return err
	}
	if len(ents) == 0 {
		return nil
	}
	if !force {
		return fmt.Errorf("%s is not empty: pass -force to replace the OCI layout in it", out)
	}
	if _, err := os.Stat(filepath.Join(out, "oci-layout")); err != nil {
		return fmt.Errorf("%s is not empty and not an OCI layout: not replacing it", out)
	}
	for _, e := range ents {
		if err := os.RemoveAll(filepath.Join(out, e.Name())); err != nil {
			return err
		}
	}
	return nil
}
