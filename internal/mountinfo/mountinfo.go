// Package mountinfo reads the mount table of this process
// (/proc/self/mountinfo): which file systems are mounted where, and which
// one holds a path.
package mountinfo

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// Mount is one line of the table.
type Mount struct {
	Point string // the mount point
	// Root is the directory of the file system mounted there: "/", or a
	// directory of it for a bind mount of one.
	Root   string
	FSType string // "tmpfs", "ext4", "fuse.granary", ...
	Source string
	// Options are the mount's own options ("rw,nosuid,nodev,relatime").
	Options string
	// Super are the file system's options ("rw,size=4194304k,huge=within_size").
	Super string
}

// HasOption reports whether the mount's own options hold opt ("ro").
func (m Mount) HasOption(opt string) bool { return slices.Contains(strings.Split(m.Options, ","), opt) }

// HasSuper reports whether the file system's options hold opt.
func (m Mount) HasSuper(opt string) bool { return slices.Contains(strings.Split(m.Super, ","), opt) }

// SuperValue returns the value of the file system's option key ("size"
// of "size=65536k"), and whether it has one.
func (m Mount) SuperValue(key string) (string, bool) {
	for o := range strings.SplitSeq(m.Super, ",") {
		if k, v, ok := strings.Cut(o, "="); ok && k == key {
			return v, true
		}
	}
	return "", false
}

// Read returns the mount table, in its order: a mount comes after the
// mount it is made on.
func Read() ([]Mount, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	return Parse(string(b)), nil
}

// Parse parses a mount table; lines it cannot read are left out.
func Parse(table string) []Mount {
	var out []Mount
	for line := range strings.SplitSeq(table, "\n") {
		// ID PARENT MAJ:MIN ROOT POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER
		pre, post, ok := strings.Cut(line, " - ")
		if !ok {
			continue
		}
		f, g := strings.Fields(pre), strings.Fields(post)
		if len(f) < 6 || len(g) < 3 {
			continue
		}
		out = append(out, Mount{Point: unescape(f[4]), Root: unescape(f[3]), Options: f[5], FSType: g[0], Source: unescape(g[1]), Super: g[2]})
	}
	return out
}

// Below returns the mounts at root or below it, in the table's order.
func Below(mounts []Mount, root string) []Mount {
	var out []Mount
	for _, m := range mounts {
		if within(m.Point, root) {
			out = append(out, m)
		}
	}
	return out
}

// Holding returns the mount that holds path (clean and absolute, symbolic
// links resolved): the last one listed of those with the longest mount
// point at or above path (a mount made over the same point hides the
// earlier ones).
func Holding(mounts []Mount, path string) (Mount, bool) {
	var best Mount
	found := false
	for _, m := range mounts {
		if within(path, m.Point) && (!found || len(m.Point) >= len(best.Point)) {
			best, found = m, true
		}
	}
	return best, found
}

// Of returns the mount that holds path, or would hold it if it were made:
// that of its nearest existing directory.
func Of(path string) (Mount, error) {
	p, err := filepath.Abs(path)
	if err != nil {
		return Mount{}, err
	}
	for {
		if r, err := filepath.EvalSymlinks(p); err == nil {
			p = r
			break
		}
		if p == "/" {
			break
		}
		p = filepath.Dir(p)
	}
	mounts, err := Read()
	if err != nil {
		return Mount{}, err
	}
	m, ok := Holding(mounts, p)
	if !ok {
		return Mount{}, fmt.Errorf("%s: no mount of /proc/self/mountinfo holds it", path)
	}
	return m, nil
}

// within reports whether path is dir or lies below it.
func within(path, dir string) bool {
	return path == dir || dir == "/" || strings.HasPrefix(path, dir+"/")
}

// unescape undoes the octal escapes of the table (a space is \040).
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
