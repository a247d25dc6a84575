package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// entry is one file system object of a layer.
type entry struct {
	typ  byte        // tar.TypeDir, tar.TypeReg or tar.TypeSymlink
	mode os.FileMode // permission bits, with os.ModeSticky for /tmp
	link string      // symlink target
	data []byte      // contents of a generated file
	src  string      // or the file on disk to copy
}

// tree is the contents of one layer, by absolute path in the image. Parent
// directories are added as 0755 when a path is added under them.
type tree struct {
	entries map[string]*entry
}

func newTree() *tree { return &tree{entries: map[string]*entry{}} }

func cleanImagePath(p string) (string, error) {
	c := path.Clean("/" + p)
	if c == "/" || !strings.HasPrefix(p, "/") {
		return "", fmt.Errorf("bad image path %q", p)
	}
	return c, nil
}

func (t *tree) add(p string, e *entry) error {
	p, err := cleanImagePath(p)
	if err != nil {
		return err
	}
	for d := path.Dir(p); d != "/"; d = path.Dir(d) {
		if old, ok := t.entries[d]; ok {
			if old.typ != tar.TypeDir {
				return fmt.Errorf("%s: parent %s is not a directory in the image", p, d)
			}
			continue
		}
		t.entries[d] = &entry{typ: tar.TypeDir, mode: 0o755}
	}
	if old, ok := t.entries[p]; ok {
		if old.typ == tar.TypeDir && e.typ == tar.TypeDir {
			old.mode = e.mode
			return nil
		}
		if old.typ == e.typ && old.link == e.link && old.src == e.src && bytes.Equal(old.data, e.data) && old.mode == e.mode {
			return nil
		}
		return fmt.Errorf("%s is added twice, differently", p)
	}
	t.entries[p] = e
	return nil
}

func (t *tree) dir(p string, mode os.FileMode) error {
	return t.add(p, &entry{typ: tar.TypeDir, mode: mode})
}

func (t *tree) file(p string, mode os.FileMode, data []byte) error {
	return t.add(p, &entry{typ: tar.TypeReg, mode: mode, data: data})
}

func (t *tree) copyFile(p string, mode os.FileMode, src string) error {
	return t.add(p, &entry{typ: tar.TypeReg, mode: mode, src: src})
}

func (t *tree) symlink(p, target string) error {
	return t.add(p, &entry{typ: tar.TypeSymlink, mode: 0o777, link: target})
}

// paths returns the tree's paths in the order they are written: sorted, so
// every directory comes before what is in it.
func (t *tree) paths() []string {
	ps := make([]string, 0, len(t.entries))
	for p := range t.entries {
		ps = append(ps, p)
	}
	sort.Strings(ps)
	return ps
}

// layerStats are the sizes of a layer.
type layerStats struct {
	Name         string // what the layer holds
	Compressed   int64  // gzip blob bytes
	Uncompressed int64  // tar bytes
	Files        int    // regular files
	FileBytes    int64  // bytes of the regular files
}

// writeLayer writes t as a reproducible gzipped tar into dir and returns it
// as a layer: entries sorted by path, every time mtime, owner 0:0 without
// names, no access or change times, and a gzip header without name or time.
// The same tree and Go version give the same bytes.
func writeLayer(t *tree, dir, name string, mtime time.Time) (v1.Layer, layerStats, error) {
	st := layerStats{Name: name}
	f, err := os.CreateTemp(dir, "layer-*.tar.gz")
	if err != nil {
		return nil, st, err
	}
	defer f.Close()
	counted := &countingWriter{}
	zw, err := gzip.NewWriterLevel(f, gzip.BestCompression)
	if err != nil {
		return nil, st, err
	}
	tw := tar.NewWriter(io.MultiWriter(zw, counted))
	// A file with the same contents and mode as one before it (Debian's
	// copyright files of packages built from one source) is a hard link.
	first := map[[sha256.Size + 4]byte]string{}
	for _, p := range t.paths() {
		e := t.entries[p]
		h := &tar.Header{
			Typeflag: e.typ,
			Name:     strings.TrimPrefix(p, "/"),
			Mode:     tarMode(e.mode),
			ModTime:  mtime,
			Format:   tar.FormatPAX,
		}
		if e.typ == tar.TypeReg {
			key, err := contentKey(e)
			if err != nil {
				return nil, st, fmt.Errorf("layer %s: %s: %w", name, p, err)
			}
			if f, ok := first[key]; ok {
				h.Typeflag = tar.TypeLink
				h.Linkname = f
				if err := tw.WriteHeader(h); err != nil {
					return nil, st, fmt.Errorf("layer %s: %s: %w", name, p, err)
				}
				continue
			}
			first[key] = h.Name
		}
		if err := writeEntry(tw, h, e, &st); err != nil {
			return nil, st, fmt.Errorf("layer %s: %s: %w", name, p, err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, st, err
	}
	if err := zw.Close(); err != nil {
		return nil, st, err
	}
	if err := f.Close(); err != nil {
		return nil, st, err
	}
	st.Uncompressed = counted.n
	// The file is gzipped already: go-containerregistry takes it as the
	// compressed blob as it is and only reads it back for the digests.
	l, err := tarball.LayerFromFile(f.Name(), tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, st, err
	}
	if st.Compressed, err = l.Size(); err != nil {
		return nil, st, err
	}
	return l, st, nil
}

// writeEntry writes one entry of a layer.
func writeEntry(tw *tar.Writer, h *tar.Header, e *entry, st *layerStats) error {
	var body io.Reader
	switch e.typ {
	case tar.TypeDir:
		h.Name += "/"
	case tar.TypeSymlink:
		h.Linkname = e.link
	case tar.TypeReg:
		if e.src != "" {
			src, err := os.Open(e.src)
			if err != nil {
				return err
			}
			defer src.Close()
			fi, err := src.Stat()
			if err != nil {
				return err
			}
			if !fi.Mode().IsRegular() {
				return fmt.Errorf("%s is not a regular file", e.src)
			}
			h.Size = fi.Size()
			body = src
		} else {
			h.Size = int64(len(e.data))
			body = bytes.NewReader(e.data)
		}
		st.Files++
		st.FileBytes += h.Size
	}
	if err := tw.WriteHeader(h); err != nil {
		return err
	}
	if body == nil {
		return nil
	}
	n, err := io.Copy(tw, body)
	if err != nil {
		return err
	}
	if n != h.Size {
		return fmt.Errorf("%s changed size while it was read", e.src)
	}
	return nil
}

// contentKey identifies a regular file by its contents and mode.
func contentKey(e *entry) ([sha256.Size + 4]byte, error) {
	var key [sha256.Size + 4]byte
	h := sha256.New()
	if e.src != "" {
		f, err := os.Open(e.src)
		if err != nil {
			return key, err
		}
		defer f.Close()
		if _, err := io.Copy(h, f); err != nil {
			return key, err
		}
	} else {
		h.Write(e.data)
	}
	copy(key[:], h.Sum(nil))
	binary.BigEndian.PutUint32(key[sha256.Size:], uint32(e.mode))
	return key, nil
}

// tarMode is the tar header mode of a file system mode (only the
// permission, sticky, setuid and setgid bits; the type is in the flag).
func tarMode(m os.FileMode) int64 {
	mode := int64(m.Perm())
	if m&os.ModeSticky != 0 {
		mode |= 0o1000
	}
	if m&os.ModeSetgid != 0 {
		mode |= 0o2000
	}
	if m&os.ModeSetuid != 0 {
		mode |= 0o4000
	}
	return mode
}

type countingWriter struct{ n int64 }

func (c *countingWriter) Write(p []byte) (int, error) {
	c.n += int64(len(p))
	return len(p), nil
}
