package mount

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// Descriptors a supervisor hands its server (ExtraFiles order).
const (
	fdFuse  = 3 // the /dev/fuse connection of the mount
	fdState = 4 // the node table that outlives servers
	fdInit  = 5 // a socket on which the supervisor replays the kernel's INIT
)

// envGeneration tells a server how many served the mount before it.
const envGeneration = "GRANARY_MOUNT_GENERATION"

// IsServer reports whether this process was started by a supervisor to
// serve a mount.
func IsServer() bool { return os.Getenv(envGeneration) != "" }

// Serve serves the mount a supervisor started this process for, until it
// is unmounted. The supervisor's INIT socket makes go-fuse's server believe
// it negotiated the connection itself; then the socket is replaced by the
// real /dev/fuse descriptor under the same number, so that every later
// request — and passthrough registration — uses the kernel connection.
func Serve(mountpoint string, o Options) (*Mount, error) {
	m, err := newMount(mountpoint, o)
	if err != nil {
		return nil, err
	}
	m.generation, _ = strconv.Atoi(os.Getenv(envGeneration))
	nodes := newNodeTable(os.NewFile(fdState, "mount-state"))
	if m.generation > 1 {
		if err := nodes.load(); err != nil {
			return nil, err
		}
	}
	fs := newFS(m, nodes)
	server, err := fuse.NewServer(fs, "/dev/fd/"+strconv.Itoa(fdInit), mountOptions(o))
	if err != nil {
		return nil, fmt.Errorf("serve the mount at %s: %w", mountpoint, err)
	}
	reserveReaderProcs()
	if err := syscall.Dup3(fdFuse, fdInit, syscall.O_CLOEXEC); err != nil {
		return nil, fmt.Errorf("take over the FUSE connection: %w", err)
	}
	syscall.Close(fdFuse)
	if ks := server.KernelSettings(); ks != nil && ks.Flags64()&fuse.CAP_PASSTHROUGH != 0 && !o.NoPassthrough && !o.ZeroMessageOpens {
		m.passthrough.Store(true)
		// mmap(MAP_SHARED) of a file opened with direct I/O needs it
		// (Linux 6.6 and later); without it, cold opens keep the page cache.
		m.directIO.Store(ks.Flags64()&fuse.CAP_DIRECT_IO_ALLOW_MMAP != 0 && !o.NoDirectIO)
	}
	go func() {
		server.Serve()
		close(m.done)
	}()
	m.log.Info("serving the mount", "mountpoint", mountpoint, "generation", m.generation, "passthrough", m.passthrough.Load(), "direct_io_cold_opens", m.directIO.Load())
	return m, nil
}

// reserveReaderProcs gives the go-fuse goroutines that wait for the
// kernel's requests Ps of their own. They wait in a blocking read(2) of
// /dev/fuse, each holding a P; with as many Ps as CPUs, no P is ever idle
// while they wait, so the runtime's monitor takes their P back at every
// read and, having done so, keeps waking every 20 µs: a quarter of the
// server's CPU on a 2-core machine (perf: runtime.sysmon and its context
// switches). With a P more per reader (go-fuse runs at most
// clamp(GOMAXPROCS, 2, 16) + 1 of them, sized when its server is made),
// an idle P is left while they wait, the monitor leaves them alone and
// sleeps longer. The readers use no CPU while they wait, so the goroutines
// that do work still run on as many Ps as before. A GOMAXPROCS the user
// set is kept.
func reserveReaderProcs() {
	if os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(withReaderProcs(runtime.GOMAXPROCS(0)))
	}
}

// withReaderProcs is n Ps plus one for each of go-fuse's request readers.
func withReaderProcs(n int) int {
	return n + min(max(n, 2), 16) + 1
}

func mountOptions(o Options) *fuse.MountOptions {
	return &fuse.MountOptions{
		FsName:        "granary",
		Name:          "granary",
		MaxWrite:      1 << 20, // also sets max_pages: 1 MiB reads
		MaxReadAhead:  1 << 20,
		MaxBackground: 64,
		// Replies are in memory; splicing them only adds pipe copies.
		DisableSplice: true,
		Debug:         o.Debug,
		// A file opened with direct I/O can still be mapped shared
		// (numpy.memmap does): see FS.Open.
		ExtraCapabilities: fuse.CAP_DIRECT_IO_ALLOW_MMAP,
	}
}
