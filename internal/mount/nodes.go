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
//	+ <id> <backing id>       a passthrough open of the node
//	- <id>                    its release
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
	// backing is the passthrough backing id of the node while it has
	// passthrough opens (refs of them): the kernel allows one backing file
	// per inode.
	backing int32
	refs    int
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
		id, _ := strconv.ParseUint(f[1], 10, 64)
		switch {
		case f[0] == "N" && len(f) == 4:
			ds, e1 := strconv.Unquote(f[2])
			p, e2 := strconv.Unquote(f[3])
			if e1 != nil || e2 != nil {
				return fmt.Errorf("mount state: bad line %q", line)
			}
			t.nodes[id] = &nodeInfo{ds: ds, path: p, lookups: 1 << 62}
		case f[0] == "+" && len(f) == 3:
			b, _ := strconv.ParseInt(f[2], 10, 32)
			if n := t.nodes[id]; n != nil {
				n.backing, n.refs = int32(b), n.refs+1
			}
		case f[0] == "-":
			if n := t.nodes[id]; n != nil && n.refs > 0 {
				n.refs--
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

// forget drops references; a node nobody references is removed.
func (t *nodeTable) forget(id, nlookup uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := t.nodes[id]
	if n == nil || id == fuse.FUSE_ROOT_ID {
		return
	}
	if n.lookups <= nlookup {
		if n.refs == 0 {
			delete(t.nodes, id)
		}
		n.lookups = 0
		return
	}
	n.lookups -= nlookup
}

// acquireBacking returns the node's backing id if it has one (taking a
// reference), or calls register to make one.
func (t *nodeTable) acquireBacking(id uint64, register func() (int32, bool)) (int32, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := t.nodes[id]
	if n == nil {
		return 0, false
	}
	if n.refs == 0 {
		b, ok := register()
		if !ok {
			return 0, false
		}
		n.backing = b
	}
	n.refs++
	t.record("+ %d %d\n", id, n.backing)
	return n.backing, true
}

// releaseBacking drops a passthrough reference and reports the backing id
// to unregister when it was the last.
func (t *nodeTable) releaseBacking(id uint64) (int32, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := t.nodes[id]
	if n == nil || n.refs == 0 {
		return 0, false
	}
	n.refs--
	t.record("- %d\n", id)
	if n.refs > 0 {
		return 0, false
	}
	if n.lookups == 0 {
		delete(t.nodes, id)
	}
	return n.backing, true
}
