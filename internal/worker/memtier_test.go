package worker

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/granary-cache/granary/internal/config"
	"github.com/granary-cache/granary/internal/mountinfo"
)

// smallPageTmpfs mounts a tmpfs without huge pages (as /dev/shm is) in a
// directory of the test, and unmounts it and everything below it after.
func smallPageTmpfs(t *testing.T) string {
	t.Helper()
	if os.Getuid() != 0 {
		t.Fatal("the MEM tier's tmpfs is mounted by the worker: run this test as root")
	}
	dir := filepath.Join(t.TempDir(), "shm")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("test-shm", dir, "tmpfs", 0, "size=256m,huge=never"); err != nil {
		t.Fatalf("mount a tmpfs: %v", err)
	}
	t.Cleanup(func() { unmountBelow(t, dir) })
	return dir
}

func unmountBelow(t *testing.T, root string) {
	mounts, _ := mountinfo.Read()
	below := mountinfo.Below(mounts, root)
	for i := len(below) - 1; i >= 0; i-- {
		if err := unix.Unmount(below[i].Point, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", below[i].Point, err)
		}
	}
}

// mountsAt returns the mounts whose mount point is dir.
func mountsAt(t *testing.T, dir string) []mountinfo.Mount {
	t.Helper()
	mounts, err := mountinfo.Read()
	if err != nil {
		t.Fatal(err)
	}
	var out []mountinfo.Mount
	for _, m := range mounts {
		if m.Point == dir {
			out = append(out, m)
		}
	}
	return out
}

// memWorker starts a worker whose MEM tier is at path, huge_pages as given.
func memWorker(t *testing.T, path, hugePages string) (*Worker, func()) {
	t.Helper()
	extra := ""
	if hugePages != "" {
		extra = ", huge_pages: " + hugePages
	}
	return serveWorker(t, fmt.Sprintf(`datasets:
  - {name: d, ufs: "file://%s"}
worker:
  id: w1
  listen: 127.0.0.1:0
  admin: 127.0.0.1:0
  state_dir: %q
  tiers:
    - {name: MEM, path: %q, quota: 32MiB%s}
`, t.TempDir(), t.TempDir(), path, extra))
}

func memPages(w *Worker) string {
	for _, ts := range w.Status().Tiers {
		if ts.Name == "MEM" {
			return ts.Pages
		}
	}
	return ""
}

// A MEM tier in a directory of a tmpfs of small pages gets a tmpfs of huge
// pages of its own, of its quota and a little more, for as long as the
// worker runs; a second worker on the same directory would find it.
func TestMemTierMountsHugePages(t *testing.T) {
	shm := smallPageTmpfs(t)
	path := filepath.Join(shm, "granary", "w1")
	w, stop := memWorker(t, path, "")
	ms := mountsAt(t, path)
	if len(ms) != 1 || ms[0].FSType != "tmpfs" || !ms[0].HasSuper("huge=within_size") {
		t.Fatalf("mounts at %s: %+v; want one tmpfs with huge=within_size", path, ms)
	}
	want := fmt.Sprintf("size=%dk", (32<<20+tierSlack(32<<20))>>10)
	if !ms[0].HasSuper(want) || !ms[0].HasOption("nosuid") || !ms[0].HasOption("nodev") {
		t.Errorf("the tier's tmpfs: %+v; want %s, nosuid, nodev", ms[0], want)
	}
	if p := memPages(w); !strings.HasPrefix(p, "huge") || !strings.Contains(p, "mounted") {
		t.Errorf("status pages: %q", p)
	}
	// The store works on it.
	if _, err := os.Stat(filepath.Join(path, "journal")); err != nil {
		t.Errorf("no journal in the tier: %v", err)
	}
	stop()
	if ms := mountsAt(t, path); len(ms) != 0 {
		t.Errorf("the tier's tmpfs outlived the worker: %+v", ms)
	}
	// A worker that died left its tmpfs: the next finds it, mounts
	// nothing more, and unmounts it when it stops.
	if err := mountHuge(path, 64<<20); err != nil {
		t.Fatal(err)
	}
	w, stop = memWorker(t, path, "")
	if ms := mountsAt(t, path); len(ms) != 1 {
		t.Errorf("%d mounts at %s; want the one left", len(ms), path)
	}
	if p := memPages(w); !strings.Contains(p, "left; this one unmounts it") {
		t.Errorf("status pages: %q", p)
	}
	stop()
	if ms := mountsAt(t, path); len(ms) != 0 {
		t.Errorf("the tmpfs a killed worker left outlived the next: %+v", ms)
	}
	// A tmpfs of huge pages someone else mounted is used, and left.
	if err := unix.Mount("admin", path, "tmpfs", 0, "size=64m,huge=within_size"); err != nil {
		t.Fatal(err)
	}
	w, stop = memWorker(t, path, "")
	if p := memPages(w); !strings.HasPrefix(p, "huge (a tmpfs of huge pages at "+path) {
		t.Errorf("status pages: %q", p)
	}
	stop()
	if ms := mountsAt(t, path); len(ms) != 1 {
		t.Errorf("a worker unmounted a tmpfs it did not mount: %+v", ms)
	}
}

// A tmpfs mounted at the tier's path and sized for it (an emptyDir of
// medium Memory) is remounted with huge pages; one that may be shared
// never is: /dev/shm, one much larger than the tier, a bind mount of a
// directory of one.
func TestMemTierRemountsItsTmpfs(t *testing.T) {
	shm := smallPageTmpfs(t)
	path := filepath.Join(shm, "empty-dir")
	if err := os.Mkdir(path, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("empty-dir", path, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "size=64m"); err != nil {
		t.Fatal(err)
	}
	w, stop := memWorker(t, path, "")
	ms := mountsAt(t, path)
	if len(ms) != 1 || !ms[0].HasSuper("huge=within_size") || !ms[0].HasSuper("size=65536k") {
		t.Errorf("mounts at %s: %+v; want the one tmpfs, remounted with huge=within_size", path, ms)
	}
	for _, opt := range []string{"nosuid", "nodev", "noexec"} {
		if len(ms) == 1 && !ms[0].HasOption(opt) {
			t.Errorf("the remount cleared %s: %+v", opt, ms[0])
		}
	}
	if p := memPages(w); !strings.Contains(p, "remounted") {
		t.Errorf("status pages: %q", p)
	}
	stop()

	// Not its own: a tmpfs much larger than the tier (a host's, shared),
	// and a bind mount of a directory of one.
	big := filepath.Join(shm, "big")
	bind := filepath.Join(shm, "bind")
	for _, d := range []string{big, bind, filepath.Join(shm, "src")} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if err := unix.Mount("big", big, "tmpfs", 0, "size=1g"); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(filepath.Join(shm, "src"), bind, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ path, why string }{{big, "not sized for the tier's quota"}, {bind, "a bind mount of directory /src"}} {
		st := tierPages(config.Tier{Name: "MEM", Path: c.path, Quota: 32 << 20, HugePages: config.HugePagesAuto})
		if p, warn := st.pages, st.warn; !warn || !strings.Contains(p, c.why) {
			t.Errorf("%s: %q, warn %v; want it left alone: %s", c.path, p, warn, c.why)
		}
		if ms := mountsAt(t, c.path); len(ms) != 1 || ms[0].HasSuper(hugeOption) {
			t.Errorf("%s was changed: %+v", c.path, ms)
		}
	}
	shmBefore, err := mountinfo.Of(hostShm)
	if err != nil || shmBefore.Point != hostShm || shmBefore.FSType != "tmpfs" || shmBefore.HasSuper(hugeOption) || shmBefore.HasSuper("huge=always") {
		return // not the usual /dev/shm: nothing to check
	}
	st := tierPages(config.Tier{Name: "MEM", Path: hostShm, Quota: 1 << 20, HugePages: config.HugePagesAuto})
	if p, warn := st.pages, st.warn; !warn || !strings.Contains(p, "does not remount /dev/shm") {
		t.Errorf("a tier at /dev/shm: %q, warn %v", p, warn)
	}
	if after, _ := mountinfo.Of(hostShm); after.Super != shmBefore.Super {
		t.Errorf("/dev/shm was remounted: %s, then %s", shmBefore.Super, after.Super)
	}
}

// A tier left as it is: a cache from before in its directory, huge_pages
// off, a tier on a disk file system, and a worker without CAP_SYS_ADMIN
// (which says what to do).
func TestMemTierLeftAlone(t *testing.T) {
	shm := smallPageTmpfs(t)
	kept := filepath.Join(shm, "kept")
	if err := os.MkdirAll(filepath.Join(kept, "blocks"), 0o700); err != nil {
		t.Fatal(err)
	}
	w, stop := memWorker(t, kept, "")
	if ms := mountsAt(t, kept); len(ms) != 0 {
		t.Errorf("a tmpfs was mounted over a cache from before: %+v", ms)
	}
	if p := memPages(w); !strings.HasPrefix(p, "4 KiB") || !strings.Contains(p, "holds a cache from before") {
		t.Errorf("status pages: %q", p)
	}
	stop()

	off := filepath.Join(shm, "off")
	w, stop = memWorker(t, off, "off")
	if ms := mountsAt(t, off); len(ms) != 0 || memPages(w) != "" {
		t.Errorf("huge_pages: off: mounts %+v, pages %q", ms, memPages(w))
	}
	stop()

	disk := filepath.Join(t.TempDir(), "mem")
	if m, err := mountinfo.Of(disk); err != nil || m.FSType == "tmpfs" {
		t.Fatalf("the test's directory is on %+v (%v); it needs one on a disk file system", m, err)
	}
	w, stop = memWorker(t, disk, "")
	if ms := mountsAt(t, disk); len(ms) != 0 || memPages(w) != "" {
		t.Errorf("a tier on a disk: mounts %+v, pages %q", ms, memPages(w))
	}
	stop()

	// Capabilities belong to a thread: this one drops CAP_SYS_ADMIN and
	// ends with its goroutine.
	noCap := filepath.Join(shm, "nocap")
	type result struct {
		pages string
		warn  bool
		err   error
	}
	got := make(chan result, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread goes with the goroutine
		hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
		var data [2]unix.CapUserData
		if err := unix.Capget(&hdr, &data[0]); err != nil {
			got <- result{err: err}
			return
		}
		data[unix.CAP_SYS_ADMIN/32].Effective &^= 1 << (unix.CAP_SYS_ADMIN % 32)
		if err := unix.Capset(&hdr, &data[0]); err != nil {
			got <- result{err: err}
			return
		}
		st := tierPages(config.Tier{Name: "MEM", Path: noCap, Quota: 1 << 20, HugePages: config.HugePagesAuto})
		got <- result{pages: st.pages, warn: st.warn}
	}()
	r := <-got
	if r.err != nil {
		t.Fatalf("drop CAP_SYS_ADMIN: %v", r.err)
	}
	if !r.warn || !strings.Contains(r.pages, "may not mount (it needs CAP_SYS_ADMIN") || len(mountsAt(t, noCap)) != 0 {
		t.Errorf("without CAP_SYS_ADMIN: %q, warn %v", r.pages, r.warn)
	}
}

// The host's policy for every tmpfs (shmem_enabled) comes first: under
// force a tier has huge pages and nothing is mounted; under deny nothing
// would help, and the tier is left in small pages with the reason; under
// any other value the worker mounts its tmpfs as usual.
func TestMemTierHostPolicy(t *testing.T) {
	shm := smallPageTmpfs(t)
	policy := filepath.Join(t.TempDir(), "shmem_enabled")
	saved := shmemEnabled
	shmemEnabled = policy
	t.Cleanup(func() { shmemEnabled = saved })
	for i, c := range []struct {
		value, want string
		warn, mount bool
	}{
		{"always within_size advise never deny [force]", "huge (the host gives every tmpfs huge pages", false, false},
		{"always within_size advise never [deny] force", "4 KiB (the host denies every tmpfs huge pages", true, false},
		{"always within_size advise [never] deny force", "huge (a tmpfs of huge pages the worker mounted", false, true},
	} {
		if err := os.WriteFile(policy, []byte(c.value+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(shm, fmt.Sprintf("tier-%d", i))
		st := tierPages(config.Tier{Name: "MEM", Path: path, Quota: 1 << 20, HugePages: config.HugePagesAuto})
		if !strings.HasPrefix(st.pages, c.want) || st.warn != c.warn || st.owned != c.mount {
			t.Errorf("%s: %+v; want %q, warn %v, mounted %v", c.value, st, c.want, c.warn, c.mount)
		}
		if ms := mountsAt(t, path); (len(ms) == 1) != c.mount {
			t.Errorf("%s: mounts at the tier %+v; want a mount: %v", c.value, ms, c.mount)
		}
		if st.owned {
			if err := unix.Unmount(path, 0); err != nil {
				t.Fatal(err)
			}
		}
	}
}
