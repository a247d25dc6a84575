package wire

import (
	"github.com/granary-cache/granary/internal/block"
	"time"
)

// Loading warms a dataset across the cluster (`granary load`). The client
// lists the tree through the workers, then sends each owner worker its share
// of the blocks in batches: POST PathLoad, the body one LoadHeader line then
// one LoadItem line per block (JSON lines). The worker fetches the blocks
// from the UFS in parallel — the bytes never pass through the client — and
// answers with one LoadEvent line per block as each is done, in any order.
// A batch whose client goes away is cancelled. Every worker keeps a record
// of the loads it took part in (PathLoads), so that `granary load status`
// on any machine can show them; the client says how a load ended with POST
// PathLoadEnd and its final LoadProgress.
const (
	PathBlocks  = "/v1/blocks" // GET ?ds=: the blocks a worker holds
	PathLoad    = "/v1/load"
	PathLoads   = "/v1/loads"
	PathLoadEnd = "/v1/load/end"
)

// LoadHeader opens a batch: which load it belongs to and how the load
// stands as its client sees it.
type LoadHeader struct {
	ID       string       `json:"id"`
	Dataset  string       `json:"dataset"`
	Paths    []string     `json:"paths"`
	Replicas int          `json:"replicas"`
	Client   string       `json:"client"` // the host that runs it
	Started  time.Time    `json:"started"`
	Progress LoadProgress `json:"progress"`
}

// LoadProgress is how far a load is, as its client counts it.
type LoadProgress struct {
	Files        int64     `json:"files"`         // files to load
	Bytes        int64     `json:"bytes"`         // their bytes (times replicas)
	FilesDone    int64     `json:"files_done"`    // every block of the file loaded or already cached
	BytesDone    int64     `json:"bytes_done"`    // bytes loaded or already cached
	FilesSkipped int64     `json:"files_skipped"` // files that were cached already
	BytesSkipped int64     `json:"bytes_skipped"`
	Failed       int64     `json:"failed"` // blocks that could not be loaded
	Rate         float64   `json:"rate"`   // bytes per second, over the load so far
	State        string    `json:"state"`  // listing, loading, done, canceled, failed
	Updated      time.Time `json:"updated"`
}

// Load states.
const (
	LoadListing  = "listing"
	LoadLoading  = "loading"
	LoadDone     = "done"
	LoadCanceled = "canceled"
	LoadFailed   = "failed"
	// LoadInterrupted is what status shows for a load whose client stopped
	// reporting without saying how it ended.
	LoadInterrupted = "interrupted"
)

// LoadItem is one block to load.
type LoadItem struct {
	Path      string `json:"p"`
	Version   string `json:"v,omitempty"`
	Size      int64  `json:"s"`
	BlockSize int64  `json:"bs"`
	Index     int64  `json:"i"`
}

// Ref is the block the item names in dataset ds.
func (it LoadItem) Ref(ds string) block.Ref {
	return block.Ref{ID: block.ID{Dataset: ds, Path: it.Path, Version: it.Version, BlockSize: it.BlockSize, Index: it.Index}, Size: it.Size}
}

// LoadEvent says what became of one LoadItem.
type LoadEvent struct {
	Path   string `json:"p"`
	Index  int64  `json:"i"`
	Bytes  int64  `json:"n"`                // the block's length
	Cached bool   `json:"cached,omitempty"` // it was cached already
	Error  string `json:"error,omitempty"`
	Class  string `json:"class,omitempty"` // the error's class
}

// LoadRecord is a worker's record of one load (PathLoads).
type LoadRecord struct {
	LoadHeader
	Worker string `json:"worker"`
	// This worker's share so far.
	Blocks       int64     `json:"blocks"`
	BlockBytes   int64     `json:"block_bytes"`
	CachedBlocks int64     `json:"cached_blocks"` // found cached already
	FailedBlocks int64     `json:"failed_blocks"`
	Active       int       `json:"active"` // batches being served now
	LastBatch    time.Time `json:"last_batch"`
	Ended        bool      `json:"ended"` // the client said how it ended (Progress.State)
}

// CachedBlock is one block a worker holds (PathBlocks).
type CachedBlock struct {
	Path      string `json:"p"`
	Version   string `json:"v,omitempty"`
	Index     int64  `json:"i"`
	BlockSize int64  `json:"bs"`
	Tier      string `json:"tier"`
	Near      bool   `json:"near,omitempty"`
	Complete  bool   `json:"complete"`
	Pages     int    `json:"pages"`
}
