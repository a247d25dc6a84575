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
	ID, Parent int    // the mount's id, and that of the mount it is made on
	Point      string // the mount point
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
		id, err1 := strconv.Atoi(f[0])
		parent, err2 := strconv.Atoi(f[1])
		if err1 != nil || err2 != nil {
			continue
		}
		out = append(out, Mount{ID: id, Parent: parent, Point: unescape(f[4]), Root: unescape(f[3]), Options: f[5],
			FSType: g[0], Source: unescape(g[1]), Super: g[2]})
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
// links resolved): the one a lookup of path reaches, from the top of the
// mounts at "/" down through each mount point on the way, each time the
// top of those stacked there. A mount made over another at the same point,
// or over an ancestor of a deeper one, hides it.
func Holding(mounts []Mount, path string) (Mount, bool) {
	byID := make(map[int]bool, len(mounts))
	for _, m := range mounts {
		byID[m.ID] = true
	}
	// top returns the last of the stack that m is the bottom of.
	top := func(m Mount) Mount {
		for range len(mounts) {
			next := -1
			for i, c := range mounts {
				if c.Parent == m.ID && c.Point == m.Point && c.ID != m.ID {
					next = i
				}
			}
			if next < 0 {
				break
			}
			m = mounts[next]
		}
		return m
	}
	var cur Mount
	found := false
	for _, m := range mounts {
		if m.Point == "/" && (!byID[m.Parent] || m.Parent == m.ID) {
			cur, found = top(m), true
			break
		}
	}
	if !found {
		return Mount{}, false
	}
	// Down the path a name at a time, as a lookup goes: a mount counts
	// only if it is made on the mount the lookup is in.
	p := ""
	for _, name := range strings.Split(strings.Trim(path, "/"), "/") {
		if name == "" {
			continue
		}
		p += "/" + name
		for _, c := range mounts {
			if c.Parent == cur.ID && c.Point == p && c.ID != cur.ID {
				cur = top(c)
				break
			}
		}
	}
	return cur, true
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
