package mountinfo

import (
	"strings"
	"testing"
)

const table = `22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 22 0:30 / /dev/shm rw,nosuid,nodev shared:4 - tmpfs tmpfs rw,size=8192k
40 30 0:40 / /dev/shm/granary/w1 rw,nosuid,nodev,relatime shared:5 - tmpfs granary-mem rw,size=4259840k,mode=700,huge=within_size
41 22 0:41 / /pods/a\040b/volume ro,nosuid,nodev,relatime shared:6 - fuse.granary granary rw,user_id=0
42 41 0:42 / /pods/a\040b/volume/thumbs ro,nosuid,nodev shared:7 - fuse.granary granary rw
43 22 0:43 / /pods/a\040b/volume2 rw - fuse.granary granary rw
44 40 0:30 /granary/w1 /dev/shm/granary/w1 rw - tmpfs again rw,size=1k
garbage line
`

func TestParse(t *testing.T) {
	ms := Parse(table)
	if len(ms) != 7 {
		t.Fatalf("%d mounts, want 7: %+v", len(ms), ms)
	}
	m := ms[2]
	if m.Point != "/dev/shm/granary/w1" || m.FSType != "tmpfs" || m.Source != "granary-mem" || !m.HasSuper("huge=within_size") || m.HasSuper("huge") || !m.HasOption("nodev") {
		t.Errorf("mount 2: %+v", m)
	}
	if ms[3].Point != "/pods/a b/volume" || !ms[3].HasOption("ro") {
		t.Errorf("escaped point: %+v", ms[3])
	}
	if v, ok := m.SuperValue("size"); !ok || v != "4259840k" || m.Root != "/" {
		t.Errorf("size of mount 2: %q, %v; root %q", v, ok, m.Root)
	}
	if _, ok := m.SuperValue("nr_inodes"); ok {
		t.Error("a value for an option it does not have")
	}
	if ms[6].Root != "/granary/w1" {
		t.Errorf("the root of a bind mount: %q", ms[6].Root)
	}
}

func TestBelow(t *testing.T) {
	ms := Parse(table)
	points := func(ms []Mount) string {
		var s []string
		for _, m := range ms {
			s = append(s, m.Point)
		}
		return strings.Join(s, " ")
	}
	for _, c := range []struct{ root, want string }{
		{"/pods/a b/volume", "/pods/a b/volume /pods/a b/volume/thumbs"},
		{"/pods/a b/volume/thumbs", "/pods/a b/volume/thumbs"},
		{"/pods/a b", "/pods/a b/volume /pods/a b/volume/thumbs /pods/a b/volume2"},
		{"/pods/a", ""},
	} {
		if got := points(Below(ms, c.root)); got != c.want {
			t.Errorf("Below(%q) = %q, want %q", c.root, got, c.want)
		}
	}
}

func TestHolding(t *testing.T) {
	ms := Parse(table)
	for _, c := range []struct{ path, point, source string }{
		{"/dev/shm/granary/w1/blocks/x", "/dev/shm/granary/w1", "again"}, // the later of two at one point
		{"/dev/shm/granary/w2", "/dev/shm", "tmpfs"},
		{"/dev/shm", "/dev/shm", "tmpfs"},
		{"/dev/shmx", "/", "/dev/sda1"},
		{"/var/lib", "/", "/dev/sda1"},
	} {
		m, ok := Holding(ms, c.path)
		if !ok || m.Point != c.point || m.Source != c.source {
			t.Errorf("Holding(%q) = %+v, %v; want %s from %s", c.path, m, ok, c.point, c.source)
		}
	}
	if _, ok := Holding(Parse(""), "/x"); ok {
		t.Error("a mount found in an empty table")
	}
	// A mount made over an ancestor of an earlier one hides it.
	over := Parse(table + "45 22 0:45 / /dev rw - tmpfs over rw\n")
	if m, _ := Holding(over, "/dev/shm/granary/w1/x"); m.Source != "over" {
		t.Errorf("Holding under a mount made over /dev: %+v", m)
	}
}

func TestOf(t *testing.T) {
	m, err := Of("/proc/self/no/such/dir")
	if err != nil || m.Point != "/proc" || m.FSType != "proc" {
		t.Errorf("Of a missing path below /proc: %+v, %v", m, err)
	}
}
