// Package mount serves granary's namespace as a read-only FUSE file system,
// through the client package (placement, failover, short-circuit and the
// metadata cache), so that training code reads datasets as plain files.
//
// It is tuned for training data: long kernel entry and attribute timeouts
// where metadata never changes (metadata_sync: never), negative entries
// cached, the page cache kept across opens (a cached block never changes
// under one version), 1 MiB reads, readdirplus, and FUSE passthrough: a file
// that is one complete block on this host is handed to the kernel as the
// block file itself, and its reads never enter this process.
//
// A mount survives the process that serves it: a small supervisor holds
// the /dev/fuse connection and restarts the server on it when it dies
// (supervisor.go); node ids are stable and the server keeps no state it
// cannot rebuild, so the kernel's view stays valid across the restart.
package mount

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/granary-cache/granary/internal/client"
	"github.com/granary-cache/granary/internal/config"
	"github.com/granary-cache/granary/internal/ufs"
)

// Options configure the serving side of a mount.
type Options struct {
	Client *client.Client
	// Config provides the datasets' metadata_sync, which sets the kernel's
	// cache timeouts.
	Config *config.Config
	// Dataset, when set, shows that dataset at the root instead of one
	// directory per dataset.
	Dataset string
	// Dir, with Dataset, shows that directory of the dataset at the root
	// instead (a path inside the dataset, as `granary mount --subdir`).
	Dir string
	// EntryTimeout and AttrTimeout override the timeouts derived from
	// metadata_sync (default: 1h for "never").
	EntryTimeout, AttrTimeout time.Duration
	// NoPassthrough serves every read through this process.
	NoPassthrough bool
	// NoDirectIO keeps the page cache for the first open of a large file
	// not cached yet (see directIOMin), for readers that read it in small
	// pieces.
	NoDirectIO bool
	// ZeroMessageOpens answers the first OPEN with ENOSYS, after which the
	// kernel opens files without asking (and keeps their pages cached):
	// the fastest warm small-file reads, but no passthrough.
	ZeroMessageOpens bool
	Debug            bool
	Log              *slog.Logger
}

// Stats count what the serving process did.
type Stats struct {
	Opens            int64 `json:"opens"`
	PassthroughOpens int64 `json:"passthrough_opens"`
	// DirectOpens counts cold opens of large files answered with direct
	// I/O (see directIOMin); SmallDirectReads, reads of such opens under
	// 64 KiB (each a round trip).
	DirectOpens      int64 `json:"direct_opens"`
	SmallDirectReads int64 `json:"small_direct_reads"`
	DaemonReads      int64 `json:"daemon_reads"`      // READ requests served by this process
	DaemonReadBytes  int64 `json:"daemon_read_bytes"` // and their bytes
	Lookups          int64 `json:"lookups"`
	// Ioctls counts the ioctls readers asked of files: each is a round
	// trip, which FUSE sends whatever the open mode (Python's open() asks
	// isatty at every file, unless unbuffered).
	Ioctls int64 `json:"ioctls"`
	Errors int64 `json:"errors"`
	// PassthroughSupported says whether passthrough is in use: offered by
	// the kernel, not disabled, and not refused.
	PassthroughSupported bool `json:"passthrough_supported"`
	// DirectIOSupported says whether cold opens of large files get direct
	// I/O: passthrough is in use, and the kernel maps such files shared
	// (FUSE_DIRECT_IO_ALLOW_MMAP, Linux 6.6 and later).
	DirectIOSupported bool `json:"direct_io_supported"`
	// Generation counts the serving processes of this mount, 1 for the first.
	Generation int `json:"generation"`
}

// Mount is the serving side of a mounted granary namespace.
type Mount struct {
	opts       Options
	mountpoint string
	log        *slog.Logger
	timeouts   map[string]time.Duration
	// fixed holds the datasets whose metadata never changes: only their
	// files get passthrough, since a backing file stays with the inode for
	// as long as the kernel knows it and could outlive a new version.
	fixed      map[string]bool
	generation int

	opens, ptOpens, dioOpens, smallDIO, reads, readBytes, lookups, errs, ioctls atomic.Int64
	passthrough, directIO                                                       atomic.Bool

	logged sync.Map // paths whose error was logged already
	done   chan struct{}
}

// DefaultTimeout is the kernel entry/attribute timeout for datasets whose
// metadata never changes: long, since each expiry costs a round trip per
// file per reader.
const DefaultTimeout = time.Hour

func newMount(mountpoint string, o Options) (*Mount, error) {
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.Client == nil || o.Config == nil {
		return nil, errors.New("mount: a client and its config are required")
	}
	m := &Mount{opts: o, mountpoint: mountpoint, log: o.Log, timeouts: map[string]time.Duration{}, fixed: map[string]bool{}, done: make(chan struct{})}
	for _, ds := range o.Config.Datasets {
		m.fixed[ds.Name] = ds.MetadataSync.Never()
		t := DefaultTimeout
		if !ds.MetadataSync.Never() {
			t = ds.MetadataSync.Interval
		}
		if o.EntryTimeout > 0 {
			t = o.EntryTimeout
		}
		m.timeouts[ds.Name] = t
	}
	if o.Dataset != "" {
		if _, ok := m.timeouts[o.Dataset]; !ok {
			return nil, fmt.Errorf("mount: no dataset named %q", o.Dataset)
		}
	}
	if o.Dir != "" {
		if o.Dataset == "" {
			return nil, fmt.Errorf("mount: directory %q without a dataset to find it in", o.Dir)
		}
		dir, err := ufs.CleanPath(o.Dir)
		if err != nil {
			return nil, fmt.Errorf("mount: directory %q of dataset %s: %w", o.Dir, o.Dataset, err)
		}
		m.opts.Dir = dir
	}
	return m, nil
}

// Stats returns what the mount did so far.
func (m *Mount) Stats() Stats {
	return Stats{Opens: m.opens.Load(), PassthroughOpens: m.ptOpens.Load(), DirectOpens: m.dioOpens.Load(), SmallDirectReads: m.smallDIO.Load(), DaemonReads: m.reads.Load(),
		DaemonReadBytes: m.readBytes.Load(), Lookups: m.lookups.Load(), Ioctls: m.ioctls.Load(), Errors: m.errs.Load(),
		PassthroughSupported: m.passthrough.Load(), DirectIOSupported: m.directIO.Load(), Generation: m.generation}
}

// Done is closed when the file system is unmounted.
func (m *Mount) Done() <-chan struct{} { return m.done }

// timeout is the kernel cache timeout of a dataset ("" is the namespace root).
func (m *Mount) timeout(ds string) time.Duration {
	if t, ok := m.timeouts[ds]; ok {
		return t
	}
	if m.opts.EntryTimeout > 0 {
		return m.opts.EntryTimeout
	}
	return DefaultTimeout
}

// attrTimeout is the kernel attribute timeout of a dataset.
func (m *Mount) attrTimeout(ds string) time.Duration {
	if m.opts.AttrTimeout > 0 {
		return m.opts.AttrTimeout
	}
	return m.timeout(ds)
}

// failed logs an error once per path and maps it to an errno.
func (m *Mount) failed(op, p string, err error) syscall.Errno {
	errno := toErrno(err)
	if errno == syscall.ENOENT {
		return errno
	}
	m.errs.Add(1)
	if _, seen := m.logged.LoadOrStore(p, true); !seen {
		m.log.Warn("request failed", "op", op, "path", p, "errno", errno.Error(), "err", err)
	}
	return errno
}

// toErrno maps an error of the client to what a reader should see.
func toErrno(err error) syscall.Errno {
	switch ufs.ClassOf(err) {
	case ufs.ClassNotExist:
		return syscall.ENOENT
	case ufs.ClassPermission:
		return syscall.EACCES
	case ufs.ClassInvalid:
		if errors.Is(err, ufs.ErrInvalidPath) {
			return syscall.ENOENT
		}
		return syscall.EINVAL
	case ufs.ClassCanceled:
		return syscall.EINTR
	case ufs.ClassVersionChanged:
		return syscall.ESTALE
	}
	return syscall.EIO // the UFS failed after retries, or no worker answered
}

// CleanStale detaches a FUSE mount whose process is gone (its mount point
// answers ENOTCONN), so that a new mount can take its place.
func CleanStale(mountpoint string) error {
	_, err := os.Stat(mountpoint)
	if !errors.Is(err, syscall.ENOTCONN) {
		return nil
	}
	if err := syscall.Unmount(mountpoint, syscall.MNT_DETACH); err == nil {
		return nil
	}
	if out, err := exec.Command("fusermount3", "-u", "-z", mountpoint).CombinedOutput(); err != nil {
		return fmt.Errorf("clean the stale mount at %s: %v: %s", mountpoint, err, out)
	}
	return nil
}

// UnmountTree unmounts the granary mount at mountpoint and, first, the
// granary mounts below it (the datasets a mount serves on mounts of their
// own), deepest first (granary umount).
func UnmountTree(mountpoint string) error {
	abs, err := filepath.Abs(mountpoint)
	if err != nil {
		return err
	}
	mounts := granaryMounts()
	if !slices.Contains(mounts, abs) {
		return Unmount(abs) // not a granary mount (or a stale one): nothing below is ours to touch
	}
	var below []string
	for _, m := range mounts {
		if strings.HasPrefix(m, abs+"/") {
			below = append(below, m)
		}
	}
	slices.SortFunc(below, func(a, b string) int { return len(b) - len(a) })
	var errs []error
	for _, m := range below {
		errs = append(errs, Unmount(m))
	}
	return errors.Join(append(errs, Unmount(abs))...)
}

// Unmount detaches the granary mount at mountpoint.
func Unmount(mountpoint string) error {
	if err := syscall.Unmount(mountpoint, 0); err == nil {
		return nil
	}
	if out, err := exec.Command("fusermount3", "-u", mountpoint).CombinedOutput(); err != nil {
		if err := syscall.Unmount(mountpoint, syscall.MNT_DETACH); err == nil {
			return nil
		}
		return fmt.Errorf("unmount %s: %v: %s", mountpoint, err, out)
	}
	return nil
}
