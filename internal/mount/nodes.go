package mount

import (
	"bufio"
	"fmt"
	"hash/fnv"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// A node id is the inode number: a hash of dataset and path, the same in
// every process that serves the mount. The table from ids back to paths
// lives in this process and in a state file the supervisor holds open
// across restarts, so that a restarted server understands the ids the
// kernel already knows.
//
// State file lines (append-only):
//
//	N <id> <dataset> <path>   a node the kernel was told about
//	+ <id> <backing id>       the node's passthrough backing file, registered
//	- <id>                    and unregistered
//	o <id>                    an open of the node read through granary
//	c <id>                    its release
//
// Malformed lines (a server killed mid-write) are skipped.
//
// Paths are quoted with strconv.Quote so any byte survives.

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

type nodeInfo struct {
	ds, path string
	lookups  uint64
	// backing is the node's passthrough backing id. It stays registered for
	// as long as the kernel knows the node, so that opening the file again
	// costs no request to a worker: the kernel allows one backing file per
	// inode anyway, and a cached block never changes.
	backing    int32
	hasBacking bool
	// opens counts the node's opens read through granary: the kernel
	// refuses (EIO) to mix them with passthrough opens of the same inode.
	opens int
	// readThrough: the node was opened to be read through granary before
	// (by this serving process).
	readThrough bool
	// choosing serialises the first opens of a node while one of them
	// decides between passthrough and reading through granary.
	choosing sync.Mutex
}

type nodeTable struct {
	mu    sync.Mutex
	nodes map[uint64]*nodeInfo
	state *os.File // nil: nothing persisted
	buf   []byte
}

func newNodeTable(state *os.File) *nodeTable {
	t := &nodeTable{nodes: map[uint64]*nodeInfo{fuse.FUSE_ROOT_ID: {lookups: 1 << 62}}, state: state}
	return t
}

// load replays a state file written by earlier servers of this mount.
// Nodes it knows are never forgotten: their lookup counts died with the
// process that kept them.
func (t *nodeTable) load() error {
	if t.state == nil {
		return nil
	}
	st, err := t.state.Stat()
	if err != nil {
		return err
	}
	r := bufio.NewReader(io.NewSectionReader(t.state, 0, st.Size()))
	for {
		line, err := r.ReadString('\n')
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		f := strings.SplitN(strings.TrimSuffix(line, "\n"), " ", 4)
		if len(f) < 2 || !strings.HasSuffix(line, "\n") {
			continue // torn by a crash
		}
		id, _ := strconv.ParseUint(f[1], 10, 64)
		switch {
		case f[0] == "N" && len(f) == 4:
			ds, e1 := strconv.Unquote(f[2])
			p, e2 := strconv.Unquote(f[3])
			if e1 != nil || e2 != nil {
				continue
			}
			t.nodes[id] = &nodeInfo{ds: ds, path: p, lookups: 1 << 62}
		case f[0] == "+" && len(f) == 3:
			b, _ := strconv.ParseInt(f[2], 10, 32)
			if n := t.nodes[id]; n != nil {
				n.backing, n.hasBacking = int32(b), true
			}
		case f[0] == "-":
			if n := t.nodes[id]; n != nil {
				n.hasBacking = false
			}
		case f[0] == "o":
			if n := t.nodes[id]; n != nil {
				n.opens++
			}
		case f[0] == "c":
			if n := t.nodes[id]; n != nil && n.opens > 0 {
				n.opens--
			}
		}
	}
	return nil
}

func (t *nodeTable) record(format string, args ...any) {
	if t.state == nil {
		return
	}
	t.buf = fmt.Appendf(t.buf[:0], format, args...)
	t.state.Write(t.buf) // an append; losing it only costs passthrough after a restart
}

// get returns the dataset and path of node id.
func (t *nodeTable) get(id uint64) (*nodeInfo, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	n, ok := t.nodes[id]
	return n, ok
}

// lookedUp counts one more reference the kernel holds to a node.
func (t *nodeTable) lookedUp(id uint64, ds, p string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := t.nodes[id]
	if n == nil {
		n = &nodeInfo{ds: ds, path: p}
		t.nodes[id] = n
		t.record("N %d %s %s\n", id, strconv.Quote(ds), strconv.Quote(p))
	}
	n.lookups++
}

// forget drops references; a node nobody references is removed, and its
// backing id returned for unregistering.
func (t *nodeTable) forget(id, nlookup uint64) (int32, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := t.nodes[id]
	if n == nil || id == fuse.FUSE_ROOT_ID {
		return 0, false
	}
	if n.lookups > nlookup {
		n.lookups -= nlookup
		return 0, false
	}
	delete(t.nodes, id)
	if n.hasBacking {
		t.record("- %d\n", id)
		return n.backing, true
	}
	return 0, false
}

// registered returns the node's backing id if it has one.
func (t *nodeTable) registered(id uint64) (int32, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if n := t.nodes[id]; n != nil && n.hasBacking {
		return n.backing, true
	}
	return 0, false
}

// openMode decides how an open of node id is served: passthrough with the
// node's backing id (registered by register on the first open), or through
// granary (mode.first: for the first time). All opens of an inode must
// agree, or the kernel fails them.
func (t *nodeTable) openMode(id uint64, passthrough bool, register func() (int32, bool)) openMode {
	t.mu.Lock()
	n := t.nodes[id]
	if n == nil {
		t.mu.Unlock()
		return openMode{}
	}
	if n.hasBacking {
		t.mu.Unlock()
		return openMode{backing: n.backing, passthrough: true}
	}
	t.mu.Unlock()
	n.choosing.Lock()
	defer n.choosing.Unlock()
	t.mu.Lock()
	if n.hasBacking {
		defer t.mu.Unlock()
		return openMode{backing: n.backing, passthrough: true}
	}
	if !passthrough || n.opens > 0 {
		defer t.mu.Unlock()
		return t.openedLocked(id, n)
	}
	t.mu.Unlock()
	b, ok := register() // asks a worker for the block: not under the table lock
	t.mu.Lock()
	defer t.mu.Unlock()
	if !ok {
		return t.openedLocked(id, n)
	}
	n.backing, n.hasBacking = b, true
	t.record("+ %d %d\n", id, b)
	return openMode{backing: b, passthrough: true}
}

// openMode is how one open of a node is served.
type openMode struct {
	backing     int32 // the backing id of a passthrough open
	passthrough bool
	first       bool // the node's first open read through granary
}

func (t *nodeTable) openedLocked(id uint64, n *nodeInfo) openMode {
	n.opens++
	t.record("o %d\n", id)
	first := !n.readThrough
	n.readThrough = true
	return openMode{first: first}
}

// closed counts the release of an open read through granary and reports
// whether it was the node's last.
func (t *nodeTable) closed(id uint64) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := t.nodes[id]
	if n == nil || n.opens == 0 {
		return true
	}
	n.opens--
	t.record("c %d\n", id)
	return n.opens == 0
}
