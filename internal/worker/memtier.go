package worker

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/granary-cache/granary/internal/config"
	"github.com/granary-cache/granary/internal/mountinfo"
)

// The pages of a MEM tier (config.Tier.HugePages). A block read by FUSE
// passthrough is read from its file in the tier, so the tier's pages set
// the speed of every warm read of a large file: a tmpfs of 4 KiB pages
// hands a reader its bytes a page at a time, at about half the speed of
// one of huge pages (a 1 GiB file read by 1 MiB reads: 5.8–8.2 GB/s
// against 11.8–13.2 GB/s on the development machine, where the page cache
// of a disk file system ran as fast as the latter).

// hugeOption is the tmpfs option the worker mounts with: huge pages for
// the parts of a file that fill them, so that small files stay in small
// pages.
const hugeOption = "huge=within_size"

// hostShm is shared by every process of the host: the worker never
// remounts it, whatever a tier's path.
const hostShm = "/dev/shm"

// tierPageState is what tierPages found or did for a tier.
type tierPageState struct {
	pages string // for the log and the status; "" for a tier it does not look at
	warn  bool   // left in small pages
	// owned is a tmpfs mounted at the tier's path by this process; adopt,
	// one a granary worker mounted there before and left (it was killed).
	// The worker unmounts both when it stops (releaseTiers), adopt once
	// it knows it is the tier's only worker.
	owned, adopt bool
}

// mountSource names the tmpfs the worker mounts, so that the next worker
// knows one left behind.
const mountSource = "granary-mem"

// tierPages gives the MEM tier t a tmpfs of huge pages where it can, and
// describes the tier's pages. It never fails the worker: a tier it cannot
// change stays as it is.
func tierPages(t config.Tier) tierPageState {
	if t.HugePages != config.HugePagesAuto {
		return tierPageState{}
	}
	path := filepath.Clean(t.Path)
	if r, err := filepath.EvalSymlinks(path); err == nil {
		path = r // the mount table lists resolved paths
	}
	m, err := mountinfo.Of(path)
	switch {
	case err != nil:
		return tierPageState{pages: fmt.Sprintf("unknown: %v", err), warn: true}
	case m.FSType != "tmpfs":
		return tierPageState{} // the page cache of a disk file system: the kernel's choice
	}
	switch hostShmemPolicy() {
	case "force":
		return tierPageState{pages: "huge (the host gives every tmpfs huge pages: " + shmemEnabled + " is force)"}
	case "deny":
		return tierPageState{pages: "4 KiB (the host denies every tmpfs huge pages: " + shmemEnabled + " is deny)", warn: true}
	}
	switch {
	case m.HasSuper("huge=always") || m.HasSuper(hugeOption):
		if m.Point == path && m.Source == mountSource {
			return tierPageState{pages: "huge (a tmpfs of huge pages a granary worker mounted at " + path + " and left; this one unmounts it when it stops)", adopt: true}
		}
		return tierPageState{pages: "huge (a tmpfs of huge pages at " + m.Point + ")"}
	}
	small := "4 KiB (a tmpfs without huge pages at " + m.Point + "): "
	if m.Point == path {
		// A remount changes the file system for everyone who mounted it:
		// only one that is the tier's own is remounted.
		switch {
		case path == hostShm:
			return tierPageState{pages: small + "the worker does not remount " + hostShm + ", which every process shares; give the tier a directory of its own below it", warn: true}
		case m.Root != "/":
			return tierPageState{pages: small + "a bind mount of directory " + m.Root + " of a tmpfs that others may use: the worker does not remount it; mount a tmpfs with " + hugeOption + " at its source", warn: true}
		case !sizedFor(m, int64(t.Quota)):
			size, _ := m.SuperValue("size")
			return tierPageState{pages: small + fmt.Sprintf("the tmpfs at %s (size %s) is not sized for the tier's quota (%s), so others may share it: the worker remounts only one sized for the tier; mount one with %s there", path, size, t.Quota, hugeOption), warn: true}
		}
		if err := remountHuge(m); err != nil {
			return tierPageState{pages: small + why(err), warn: true}
		}
		return tierPageState{pages: "huge (the worker remounted the tmpfs at " + path + " with " + hugeOption + ")"}
	}
	if entries, err := os.ReadDir(path); err == nil && len(entries) > 0 {
		return tierPageState{pages: small + path + " holds a cache from before, which a tmpfs mounted over it would hide: remove it to get huge pages", warn: true}
	}
	if err := mountHuge(path, int64(t.Quota)+tierSlack(int64(t.Quota))); err != nil {
		return tierPageState{pages: small + why(err), warn: true}
	}
	return tierPageState{pages: "huge (a tmpfs of huge pages the worker mounted at " + path + ", for as long as it runs)", owned: true}
}

// releaseTiers unmounts the tmpfs the worker mounted for its tiers, once
// the store is closed: their memory goes back to the host. A mount still
// in use (a reader holds a block file open) is detached, and goes once
// the last file is closed.
func (w *Worker) releaseTiers() error {
	var errs []error
	for _, dir := range w.tierMounts {
		if err := unix.Unmount(dir, 0); err != nil {
			if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
				errs = append(errs, fmt.Errorf("unmount the MEM tier at %s: %w", dir, err))
			}
		}
	}
	w.tierMounts = nil
	return errors.Join(errs...)
}

// sizedFor reports whether the tmpfs m is sized for a tier of quota bytes
// (an emptyDir of medium Memory is sized by its limit, the quota): at most
// the quota and the slack.
func sizedFor(m mountinfo.Mount, quota int64) bool {
	v, ok := m.SuperValue("size") // the kernel writes it in KiB: "size=65536k"
	if !ok || !strings.HasSuffix(v, "k") {
		return false
	}
	kib, err := strconv.ParseInt(strings.TrimSuffix(v, "k"), 10, 64)
	return err == nil && kib > 0 && kib<<10 <= quota+tierSlack(quota)
}

// why says what keeps a tier in small pages, and what to do.
func why(err error) string {
	if errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) {
		return "the worker may not mount (it needs CAP_SYS_ADMIN, and no AppArmor or seccomp profile that forbids mount); mount a tmpfs with " + hugeOption + " at the tier's path, or give the host's tmpfs huge pages (boot Linux 6.14 or later with transparent_hugepage_tmpfs=within_size, or write force to " + shmemEnabled + "), or set huge_pages: off"
	}
	return err.Error()
}

// shmemEnabled holds the host's policy of huge pages for shared memory.
// Two of its values rule every tmpfs, whatever its huge= option: force
// (huge pages for all) and deny (none).
var shmemEnabled = "/sys/kernel/mm/transparent_hugepage/shmem_enabled"

// hostShmemPolicy returns the value of shmemEnabled in force (the word in
// brackets), or "" if it cannot be read.
func hostShmemPolicy() string {
	b, err := os.ReadFile(shmemEnabled)
	if err != nil {
		return ""
	}
	for _, w := range strings.Fields(string(b)) {
		if len(w) > 2 && w[0] == '[' && w[len(w)-1] == ']' {
			return w[1 : len(w)-1]
		}
	}
	return ""
}

// tierSlack is what a tmpfs made for a tier holds beyond its quota: the
// journal, and the pages written while the store evicts.
func tierSlack(quota int64) int64 { return max(64<<20, quota/50) }

// mountHuge mounts a tmpfs of size bytes and huge pages at dir (made if
// missing). A worker that stops unmounts it (releaseTiers); one that dies
// leaves it, and the next one on the host finds its cache there.
func mountHuge(dir string, size int64) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	// Owned by the worker's user, which need not be root (a capability is
	// enough to mount).
	opts := fmt.Sprintf("size=%d,%s,mode=0700,uid=%d,gid=%d", size, hugeOption, os.Geteuid(), os.Getegid())
	if err := unix.Mount(mountSource, dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, opts); err != nil {
		return fmt.Errorf("mount a tmpfs (%s) at %s: %w", opts, dir, err)
	}
	return nil
}

// remountHuge makes the tmpfs mounted at m put what it writes from now on
// in huge pages. The mount's own flags are given again: a remount without
// them would clear them.
func remountHuge(m mountinfo.Mount) error {
	flags := uintptr(unix.MS_REMOUNT)
	for opt, flag := range map[string]uintptr{"ro": unix.MS_RDONLY, "nosuid": unix.MS_NOSUID, "nodev": unix.MS_NODEV,
		"noexec": unix.MS_NOEXEC, "noatime": unix.MS_NOATIME, "nodiratime": unix.MS_NODIRATIME,
		"relatime": unix.MS_RELATIME, "strictatime": unix.MS_STRICTATIME} {
		if m.HasOption(opt) {
			flags |= flag
		}
	}
	if err := unix.Mount("", m.Point, "", flags, hugeOption); err != nil {
		return fmt.Errorf("remount the tmpfs at %s with %s: %w", m.Point, hugeOption, err)
	}
	return nil
}
