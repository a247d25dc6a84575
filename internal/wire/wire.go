// Package wire is every message between clients and workers, in one place
// so that both sides agree. Block reads travel on the framed block protocol
// (frame.go, its bytes tabled there) or, for readers and workers older than
// it, as HTTP range reads of one block. Metadata, status, loads and admin
// are HTTP: paths, query parameters, the JSON of attributes and errors, and
// how error classes travel as status codes; listings are streamed as one
// JSON object per line so that a huge directory never sits whole in a
// buffer.
package wire

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/granary-cache/granary/internal/block"
	"github.com/granary-cache/granary/internal/ufs"
)

// Endpoints of a worker's data listener (and of its unix socket).
const (
	PathStat    = "/v1/stat"
	PathList    = "/v1/list"
	PathBlock   = "/v1/block"
	PathLocal   = "/v1/local" // unix socket only: where a block's file is
	PathRefresh = "/v1/refresh"
	PathUFSRead = "/v1/ufs/read" // worker to worker: a range read from the UFS, uncached
	PathStatus  = "/v1/status"   // admin listener
	PathPing    = "/v1/ping"     // answers at once: is the worker there?
)

// QueryVerify is PathLocal's query parameter that says who checks the
// block's pages: VerifyNone when the caller checks every page against the
// CRCs itself (a short-circuit reader); VerifyChanged (the default) when the
// worker must check the whole block before it answers, save pages checked
// since the file last changed (a passthrough open, whose reads the kernel
// makes unchecked); VerifyAll when the worker must read and check every
// page now (a reader found one failing although the file did not change).
const QueryVerify = "verify"

// QueryNear is PathLocal's query parameter that asks a worker that does not
// own a block to keep a near copy of it for the clients of its host (value
// "1"), fetched from its owners, when it has room.
const QueryNear = "near"

// Values of QueryVerify.
const (
	VerifyNone    = "0"
	VerifyChanged = "1"
	VerifyAll     = "all"
)

// Headers.
const (
	// HeaderSource tells where a block's bytes came from: mem, ssd, hdd or ufs.
	HeaderSource = "X-Granary-Source"
)

// FileInfo is ufs.FileInfo on the wire, with short keys: listings are long.
type FileInfo struct {
	Name    string `json:"n"`
	Size    int64  `json:"s,omitempty"`
	MTime   int64  `json:"t,omitempty"` // Unix nanoseconds
	Mode    uint32 `json:"m"`
	Version string `json:"v,omitempty"`
}

// FromInfo converts for sending.
func FromInfo(fi ufs.FileInfo) FileInfo {
	w := FileInfo{Name: fi.Name, Size: fi.Size, Mode: uint32(fi.Mode), Version: fi.Version}
	if !fi.ModTime.IsZero() {
		w.MTime = fi.ModTime.UnixNano()
	}
	return w
}

// Info converts what was received.
func (w FileInfo) Info() ufs.FileInfo {
	fi := ufs.FileInfo{Name: w.Name, Size: w.Size, Mode: fs.FileMode(w.Mode), Version: w.Version}
	if w.MTime != 0 {
		fi.ModTime = time.Unix(0, w.MTime)
	}
	return fi
}

// ReadListing decodes a listing (PathList: one FileInfo per line) until
// its end. A listing cut short is the worker's fault.
func ReadListing(r io.Reader) ([]ufs.FileInfo, error) {
	var all []ufs.FileInfo
	dec := json.NewDecoder(bufio.NewReaderSize(r, 64<<10))
	for {
		var w FileInfo
		if err := dec.Decode(&w); err == io.EOF {
			return all, nil
		} else if err != nil {
			return all, fmt.Errorf("%w: listing cut short: %v", ErrWorker, err)
		}
		all = append(all, w.Info())
	}
}

// MetaKey is the placement key of a directory's metadata: its owner lists
// it and answers the stats of its children.
func MetaKey(ds, dir string) string { return "m\x00" + ds + "\x00" + dir }

// RefQuery encodes a block reference as the query of an HTTP request.
func RefQuery(b block.Ref) url.Values {
	return url.Values{"ds": {b.Dataset}, "path": {b.Path}, "ver": {b.Version},
		"size": {strconv.FormatInt(b.Size, 10)}, "bs": {strconv.FormatInt(b.BlockSize, 10)}, "idx": {strconv.FormatInt(b.Index, 10)}}
}

// ParseRef decodes a block reference from a query (RefQuery).
func ParseRef(q url.Values) (block.Ref, error) {
	b := block.Ref{ID: block.ID{Dataset: q.Get("ds"), Path: q.Get("path"), Version: q.Get("ver")}}
	var err1, err2, err3 error
	b.Size, err1 = strconv.ParseInt(q.Get("size"), 10, 64)
	b.Index, err2 = strconv.ParseInt(q.Get("idx"), 10, 64)
	b.BlockSize, err3 = strconv.ParseInt(q.Get("bs"), 10, 64)
	if err1 != nil || err2 != nil || err3 != nil || b.Size < 0 || b.Index < 0 || b.BlockSize <= 0 || b.Dataset == "" {
		return b, fmt.Errorf("malformed block reference %q", q.Encode())
	}
	return b, nil
}

// LocalBlock is the answer of PathLocal: where a complete block file is,
// for a client on the same host to read directly, and its pages' CRCs
// (checked by the worker unless QueryVerify was "0").
type LocalBlock struct {
	File     string   `json:"file"`
	Length   int64    `json:"length"`
	PageSize int64    `json:"page_size"`
	CRCs     []uint32 `json:"crcs"`
}

// Error is an error on the wire.
type Error struct {
	Message string `json:"error"`
	Class   string `json:"class"`
}

var statusOfClass = map[ufs.Class]int{
	ufs.ClassNotExist:       http.StatusNotFound,
	ufs.ClassPermission:     http.StatusForbidden,
	ufs.ClassInvalid:        http.StatusBadRequest,
	ufs.ClassVersionChanged: http.StatusPreconditionFailed,
	ufs.ClassCanceled:       499, // the client went away
	ufs.ClassRetryable:      http.StatusServiceUnavailable,
	ufs.ClassFatal:          http.StatusBadGateway,
}

// StatusOf is the HTTP status of err's class (200 for nil).
func StatusOf(err error) int {
	if err == nil {
		return http.StatusOK
	}
	if status := statusOfClass[ufs.ClassOf(err)]; status != 0 {
		return status
	}
	return http.StatusInternalServerError
}

// WriteError sends err with the status of its class.
func WriteError(w http.ResponseWriter, err error) {
	status := StatusOf(err)
	// A UFS error travels without its operation and path: the client knows
	// those and puts them back.
	msg := err.Error()
	var ue *ufs.Error
	if errors.As(err, &ue) {
		msg = ue.Err.Error()
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(Error{Message: msg, Class: ufs.ClassOf(err).String()})
}

// ErrWorker marks an error of the worker itself (unreachable, overloaded,
// unauthorised), as opposed to one of the UFS behind it: the client then
// tries another owner.
var ErrWorker = errors.New("worker failed")

// errAnswered marks an error a worker answered with, as opposed to one of
// the connection to it.
var errAnswered = errors.New("answered")

// Answered reports whether err is an error a worker answered with: it is
// there, only busy or failing for this request.
func Answered(err error) bool { return errors.Is(err, errAnswered) }

// ReadError turns an error response into a classified error. Errors of the
// UFS keep their class; others wrap ErrWorker. Every one satisfies Answered.
func ReadError(op, dataset, path string, resp *http.Response) error {
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var e Error
	if json.Unmarshal(body, &e) != nil || e.Class == "" {
		return &answered{fmt.Errorf("%w: %s /%s/%s: HTTP %d: %s", ErrWorker, op, dataset, path, resp.StatusCode, truncate(string(body)))}
	}
	for cls, status := range statusOfClass {
		if cls.String() == e.Class && status == resp.StatusCode {
			if cls == ufs.ClassRetryable || cls == ufs.ClassCanceled {
				break // the next owner may do better
			}
			return &ufs.Error{Op: op, Dataset: dataset, Path: path, Class: cls, Err: &answered{errors.New(e.Message)}}
		}
	}
	return &answered{fmt.Errorf("%w: %s /%s/%s: %s", ErrWorker, op, dataset, path, e.Message)}
}

// MarkAnswered marks err as an error a worker answered with (Answered).
func MarkAnswered(err error) error { return &answered{err} }

// answered wraps an error a worker answered with.
type answered struct{ err error }

func (a *answered) Error() string   { return a.err.Error() }
func (a *answered) Unwrap() []error { return []error{a.err, errAnswered} }

func truncate(s string) string {
	if len(s) > 200 {
		return s[:200] + "..."
	}
	return s
}

// Status is what a worker reports about itself (PathStatus).
type Status struct {
	ID    string    `json:"id"`
	Addr  string    `json:"addr"`
	Host  string    `json:"host,omitempty"`
	Zone  string    `json:"zone,omitempty"`
	Since time.Time `json:"since"` // when the process started
	// Membership says whether the worker is in touch with its membership
	// backend, in a line.
	Membership   string                   `json:"membership,omitempty"`
	MembershipOK bool                     `json:"membership_ok"`
	Tiers        []TierStatus             `json:"tiers"`
	Hits         int64                    `json:"page_hits"`
	Misses       int64                    `json:"page_misses"`
	Datasets     map[string]DatasetStatus `json:"datasets"`
}

// TierStatus is one cache tier of a worker.
type TierStatus struct {
	Name     string `json:"name"`
	Path     string `json:"path"`
	Capacity int64  `json:"capacity"`
	Used     int64  `json:"used"`
	Blocks   int    `json:"blocks"`
	// NearBlocks and NearBytes are the near copies among them.
	NearBlocks int   `json:"near_blocks"`
	NearBytes  int64 `json:"near_bytes"`
	// Pages, for a MEM tier, says whether its files are in huge pages, and
	// why not.
	Pages string `json:"pages,omitempty"`
}

// DatasetStatus is one dataset's share of a worker's status.
type DatasetStatus struct {
	UFS         ufs.Stats `json:"ufs"`
	Directories int       `json:"cached_directories"`
	Entries     int       `json:"cached_entries"`
	// CachedBytes is the bytes of the dataset this worker holds as an
	// owner (near copies apart).
	CachedBytes int64 `json:"cached_bytes"`
	// Usage is the dataset's size on the UFS, on the worker that measures
	// it (the owner of its root listing); nil elsewhere.
	Usage *UFSUsage `json:"ufs_usage,omitempty"`
}

// UFSUsage is a dataset's size on the UFS, measured in the background: its
// figures grow until Complete.
type UFSUsage struct {
	Files    int64     `json:"files"`
	Bytes    int64     `json:"bytes"`
	Dirs     int64     `json:"directories"`
	Complete bool      `json:"complete"`
	Started  time.Time `json:"started,omitzero"`
	Finished time.Time `json:"finished,omitzero"`
	Error    string    `json:"error,omitempty"`
}

// Figures are what a worker publishes beside its membership entry (on
// Kubernetes, an annotation of its Lease, rewritten at each renewal), so
// that the operator can fill a Dataset's status from the API server alone.
// They are kept small: a few hundred bytes per dataset.
type Figures struct {
	Capacity int64                     `json:"capacity"` // bytes, all tiers
	Used     int64                     `json:"used"`
	Hits     int64                     `json:"page_hits"`
	Misses   int64                     `json:"page_misses"`
	Datasets map[string]DatasetFigures `json:"datasets,omitempty"`
}

// DatasetFigures are one dataset's figures on one worker.
type DatasetFigures struct {
	CachedBytes int64 `json:"cached_bytes"`
	// Usage is the dataset's size on the UFS, on the worker that measures
	// it.
	Usage *UFSUsage `json:"ufs_usage,omitempty"`
}

// Figures sums up a status.
func (s Status) Figures() Figures {
	f := Figures{Hits: s.Hits, Misses: s.Misses}
	for _, t := range s.Tiers {
		f.Capacity += t.Capacity
		f.Used += t.Used
	}
	if len(s.Datasets) > 0 {
		f.Datasets = make(map[string]DatasetFigures, len(s.Datasets))
		for name, d := range s.Datasets {
			f.Datasets[name] = DatasetFigures{CachedBytes: d.CachedBytes, Usage: d.Usage}
		}
	}
	return f
}

// DatasetTotal is one dataset's figures summed over the workers.
type DatasetTotal struct {
	// Usage is the most advanced measure of the UFS size (a complete one
	// first, else the one that counted most files); nil when none.
	Usage *UFSUsage
	// CachedBytes sums what the workers hold as owners.
	CachedBytes int64
	// CachedPercent is CachedBytes over the UFS size times the replicas,
	// capped at 100; -1 while the size is not known.
	CachedPercent float64
}

// Add counts one worker's figures of the dataset.
func (t *DatasetTotal) Add(d DatasetFigures) {
	t.CachedBytes += d.CachedBytes
	if u := d.Usage; u != nil && (t.Usage == nil || u.Complete && !t.Usage.Complete || !t.Usage.Complete && u.Files > t.Usage.Files) {
		t.Usage = u
	}
}

// Finish computes CachedPercent for a dataset of so many replicas.
func (t *DatasetTotal) Finish(replicas int) {
	t.CachedPercent = -1
	if u := t.Usage; u != nil && u.Complete {
		t.CachedPercent = 100
		if total := u.Bytes * int64(max(replicas, 1)); total > 0 {
			t.CachedPercent = min(100, 100*float64(t.CachedBytes)/float64(total))
		}
	}
}
