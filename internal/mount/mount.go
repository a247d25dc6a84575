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
package mount

import (
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"os"
	"os/exec"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/granary-cache/granary/internal/client"
	"github.com/granary-cache/granary/internal/config"
)

// Options configure a mount.
type Options struct {
	Client *client.Client
	// Config provides the datasets' metadata_sync, which sets the kernel's
	// cache timeouts.
	Config *config.Config
	// Dataset, when set, mounts that dataset at the root instead of one
	// directory per dataset.
	Dataset string
	// EntryTimeout and AttrTimeout override the timeouts derived from
	// metadata_sync (default: 1h for "never").
	EntryTimeout, AttrTimeout time.Duration
	// NoPassthrough serves every read through this process.
	NoPassthrough bool
	// AllowOther lets other users read the mount (needs root).
	AllowOther bool
	Debug      bool
	Log        *slog.Logger
}

// Stats count what the mount did.
type Stats struct {
	Opens            int64 `json:"opens"`
	PassthroughOpens int64 `json:"passthrough_opens"`
	DaemonReads      int64 `json:"daemon_reads"`      // READ requests served by this process
	DaemonReadBytes  int64 `json:"daemon_read_bytes"` // and their bytes
	Lookups          int64 `json:"lookups"`
	Errors           int64 `json:"errors"`
	// PassthroughSupported says whether the kernel offered passthrough.
	PassthroughSupported bool `json:"passthrough_supported"`
}

// Mount is a mounted granary namespace.
type Mount struct {
	opts       Options
	mountpoint string
	server     *fuse.Server
	log        *slog.Logger
	timeouts   map[string]time.Duration // per dataset: entry and attribute timeout
	blockSize  int64

	opens, ptOpens, reads, readBytes, lookups, errs atomic.Int64
	passthrough                                     bool

	logged sync.Map // paths whose error was logged already
}

// DefaultTimeout is the kernel entry/attribute timeout for datasets whose
// metadata never changes: long, since each expiry costs a round trip per
// file per reader.
const DefaultTimeout = time.Hour

// New mounts the namespace at mountpoint. A stale mount left there by a
// crashed process is detached first.
func New(mountpoint string, o Options) (*Mount, error) {
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.Client == nil || o.Config == nil {
		return nil, errors.New("mount: a client and its config are required")
	}
	m := &Mount{opts: o, mountpoint: mountpoint, log: o.Log, timeouts: map[string]time.Duration{}, blockSize: o.Client.Layout().BlockSize}
	shortest := DefaultTimeout
	for _, ds := range o.Config.Datasets {
		t := DefaultTimeout
		if !ds.MetadataSync.Never() {
			t = ds.MetadataSync.Interval
		}
		m.timeouts[ds.Name] = t
		shortest = min(shortest, t)
	}
	if o.Dataset != "" {
		if _, ok := m.timeouts[o.Dataset]; !ok {
			return nil, fmt.Errorf("mount: no dataset named %q", o.Dataset)
		}
		shortest = m.timeouts[o.Dataset]
	}
	if err := CleanStale(mountpoint); err != nil {
		return nil, err
	}
	if st, err := os.Stat(mountpoint); err != nil || !st.IsDir() {
		return nil, fmt.Errorf("mount point %s: not a directory: %v", mountpoint, err)
	}
	entry, attr := shortest, shortest
	if o.EntryTimeout > 0 {
		entry = o.EntryTimeout
	}
	if o.AttrTimeout > 0 {
		attr = o.AttrTimeout
	}
	negative := entry
	root := &node{m: m, ds: o.Dataset}
	opts := &fs.Options{
		MountOptions: fuse.MountOptions{
			FsName:        "granary",
			Name:          "granary",
			Options:       []string{"ro", "max_read=1048576"},
			AllowOther:    o.AllowOther,
			MaxWrite:      1 << 20, // also sets max_pages: 1 MiB reads
			MaxReadAhead:  1 << 20,
			MaxBackground: 64,
			// Replies are in memory; splicing them only adds pipe copies.
			DisableSplice: true,
			DirectMount:   true,
			Debug:         o.Debug,
		},
		EntryTimeout:    &entry,
		AttrTimeout:     &attr,
		NegativeTimeout: &negative,
		// Node ids are the inode numbers, a hash of dataset and path: the
		// same in every process serving this namespace.
		ExternalNodeID: true,
		RootStableAttr: &fs.StableAttr{Ino: fuse.FUSE_ROOT_ID},
	}
	server, err := fs.Mount(mountpoint, root, opts)
	if err != nil {
		// Without root or a usable mount(2), go through fusermount3.
		opts.DirectMount = false
		var err2 error
		if server, err2 = fs.Mount(mountpoint, root, opts); err2 != nil {
			return nil, fmt.Errorf("mount %s: %w", mountpoint, err)
		}
	}
	m.server = server
	if ks := server.KernelSettings(); ks != nil && ks.Flags64()&fuse.CAP_PASSTHROUGH != 0 && !o.NoPassthrough {
		m.passthrough = true
	}
	m.log.Info("mounted", "mountpoint", mountpoint, "passthrough", m.passthrough, "entry_timeout", entry)
	return m, nil
}

// Wait blocks until the file system is unmounted.
func (m *Mount) Wait() { m.server.Wait() }

// Unmount unmounts the file system (lazily if it is busy).
func (m *Mount) Unmount() error {
	err := m.server.Unmount()
	if err != nil {
		if uerr := syscall.Unmount(m.mountpoint, syscall.MNT_DETACH); uerr == nil {
			return nil
		}
	}
	return err
}

// Stats returns what the mount did so far.
func (m *Mount) Stats() Stats {
	return Stats{Opens: m.opens.Load(), PassthroughOpens: m.ptOpens.Load(), DaemonReads: m.reads.Load(),
		DaemonReadBytes: m.readBytes.Load(), Lookups: m.lookups.Load(), Errors: m.errs.Load(),
		PassthroughSupported: m.passthrough}
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

// Unmount detaches the granary mount at mountpoint (granary umount).
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

// ino is the inode number of a path: stable across processes and restarts,
// never the root's.
func ino(ds, p string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(ds))
	h.Write([]byte{0})
	h.Write([]byte(p))
	v := h.Sum64()
	if v <= fuse.FUSE_ROOT_ID {
		v += 2
	}
	return v
}

// timeout is the kernel cache timeout of a dataset.
func (m *Mount) timeout(ds string) time.Duration {
	if t, ok := m.timeouts[ds]; ok {
		return t
	}
	return DefaultTimeout
}

// failed logs a UFS or worker error once per path and maps it to an errno.
func (m *Mount) failed(op, p string, err error) syscall.Errno {
	errno := toErrno(err)
	if errno == syscall.ENOENT {
		return errno
	}
	m.errs.Add(1)
	if _, seen := m.logged.LoadOrStore(p, true); !seen {
		m.log.Warn("read failed", "op", op, "path", p, "errno", errno.Error(), "err", err)
	}
	return errno
}
