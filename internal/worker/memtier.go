package worker

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/granary-cache/granary/internal/config"
	"github.com/granary-cache/granary/internal/mountinfo"
	"golang.org/x/sys/unix"
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

// tierPages gives the MEM tier t a tmpfs of huge pages where it can, and
// describes the tier's pages for the log and the status. It never fails
// the worker: a tier it cannot change stays as it is. warn is true when
// the tier is left in small pages; mounted when the worker mounted a
// tmpfs at the tier's path (releaseTiers unmounts it).
func tierPages(t config.Tier) (pages string, warn, mounted bool) {
	pages, warn = tierPagesOf(t)
	return pages, warn, strings.HasPrefix(pages, mountedByWorker)
}

// mountedByWorker starts the description of a tmpfs the worker mounted.
const mountedByWorker = "huge (a tmpfs of huge pages the worker mounted"

func tierPagesOf(t config.Tier) (pages string, warn bool) {
	if t.HugePages != config.HugePagesAuto {
		return "", false
	}
	path := filepath.Clean(t.Path)
	m, err := mountinfo.Of(path)
	switch {
	case err != nil:
		return fmt.Sprintf("unknown: %v", err), true
	case m.FSType != "tmpfs":
		return "", false // the page cache of a disk file system: the kernel's choice
	case m.HasSuper("huge=always") || m.HasSuper(hugeOption):
		return "huge (a tmpfs of huge pages at " + m.Point + ")", false
	}
	small := "4 KiB (a tmpfs without huge pages at " + m.Point + "): "
	if m.Point == path {
		// A remount changes the file system for everyone who mounted it:
		// only one that is the tier's own is remounted.
		switch {
		case path == hostShm:
			return small + "the worker does not remount " + hostShm + ", which every process shares; give the tier a directory of its own below it", true
		case m.Root != "/":
			return small + "a bind mount of directory " + m.Root + " of a tmpfs that others may use: the worker does not remount it; mount a tmpfs with " + hugeOption + " at its source", true
		case !sizedFor(m, int64(t.Quota)):
			size, _ := m.SuperValue("size")
			return small + fmt.Sprintf("the tmpfs at %s (size %s) is larger than the tier's quota (%s) and may be shared: the worker remounts only one sized for the tier; mount one with %s there", path, size, t.Quota, hugeOption), true
		}
		if err := remountHuge(path); err != nil {
			return small + why(err), true
		}
		return "huge (the worker remounted the tmpfs at " + path + " with " + hugeOption + ")", false
	}
	if entries, err := os.ReadDir(path); err == nil && len(entries) > 0 {
		return small + path + " holds a cache from before, which a tmpfs mounted over it would hide: remove it to get huge pages", true
	}
	if err := mountHuge(path, int64(t.Quota)+tierSlack(int64(t.Quota))); err != nil {
		return small + why(err), true
	}
	return mountedByWorker + " at " + path + ", for as long as it runs)", false
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
// twice the quota, and the slack.
func sizedFor(m mountinfo.Mount, quota int64) bool {
	v, ok := m.SuperValue("size")
	if !ok {
		return false
	}
	mult := int64(1)
	switch {
	case strings.HasSuffix(v, "k"):
		mult, v = 1<<10, strings.TrimSuffix(v, "k")
	case strings.HasSuffix(v, "m"):
		mult, v = 1<<20, strings.TrimSuffix(v, "m")
	case strings.HasSuffix(v, "g"):
		mult, v = 1<<30, strings.TrimSuffix(v, "g")
	}
	n, err := strconv.ParseInt(v, 10, 64)
	return err == nil && n > 0 && n*mult <= 2*quota+tierSlack(quota)
}

// why says what keeps a tier in small pages, and what to do.
func why(err error) string {
	if errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) {
		return "mounting needs CAP_SYS_ADMIN; mount a tmpfs with " + hugeOption + " at the tier's path, or set huge_pages: off"
	}
	return err.Error()
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
	opts := fmt.Sprintf("size=%d,%s,mode=0700", size, hugeOption)
	if err := unix.Mount("granary-mem", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, opts); err != nil {
		return fmt.Errorf("mount a tmpfs (%s) at %s: %w", opts, dir, err)
	}
	return nil
}

// remountHuge makes the tmpfs mounted at dir put what it writes from now
// on in huge pages.
func remountHuge(dir string) error {
	if err := unix.Mount("", dir, "", unix.MS_REMOUNT, hugeOption); err != nil {
		return fmt.Errorf("remount the tmpfs at %s with %s: %w", dir, hugeOption, err)
	}
	return nil
}
