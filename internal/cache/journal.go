package cache

// The index of a tier is an append-only journal rather than an embedded
// key-value store or a sidecar file per block:
//   - storing a page costs one small sequential write, never a rename or a
//     random write;
//   - replaying it at start reads one file, not one per cached block (a
//     tier of ImageNet holds over a million blocks);
//   - a crash can only tear the last record, which its checksum exposes and
//     replay drops.
// Replay rewrites the journal with only the live records, so it does not
// grow across restarts; a running worker compacts it when it holds too many
// dead records.
//
// Record: u32 payload length | u32 CRC32C of payload | payload.
// Payload: u8 kind, 16-byte block id, then per kind:
//   add:    uvarint-prefixed dataset, path, version; varint index, length, block size
//   near:   as add, for a near copy (see near.go)
//   page:   uvarint page number; u32 CRC32C of the page
//   remove: nothing

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"github.com/granary-cache/granary/internal/block"
	"hash/crc32"
	"io"
	"os"
	"sync"
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// crc32c is the page checksum: hardware-accelerated on amd64 and arm64.
func crc32c(b []byte) uint32 { return crc32.Checksum(b, castagnoli) }

const (
	recAdd    = 1
	recPage   = 2
	recRemove = 3
	recNear   = 4 // an add of a near copy

	maxRecord = 1 << 20
)

// journalRecord is one decoded record.
type journalRecord struct {
	kind   byte
	id     digest
	key    block.ID // add
	length int64    // add
	page   int      // page
	crc    uint32   // page
}

func (r journalRecord) encode(buf []byte) []byte {
	start := len(buf)
	buf = append(buf, 0, 0, 0, 0, 0, 0, 0, 0) // length and CRC, filled below
	buf = append(buf, r.kind)
	buf = append(buf, r.id[:]...)
	switch r.kind {
	case recAdd, recNear:
		for _, s := range []string{r.key.Dataset, r.key.Path, r.key.Version} {
			buf = binary.AppendUvarint(buf, uint64(len(s)))
			buf = append(buf, s...)
		}
		buf = binary.AppendVarint(buf, r.key.Index)
		buf = binary.AppendVarint(buf, r.length)
		buf = binary.AppendVarint(buf, r.key.BlockSize)
	case recPage:
		buf = binary.AppendUvarint(buf, uint64(r.page))
		buf = binary.LittleEndian.AppendUint32(buf, r.crc)
	}
	payload := buf[start+8:]
	binary.LittleEndian.PutUint32(buf[start:], uint32(len(payload)))
	binary.LittleEndian.PutUint32(buf[start+4:], crc32c(payload))
	return buf
}

var errBadRecord = errors.New("malformed journal record")

func decodeRecord(p []byte) (journalRecord, error) {
	var r journalRecord
	if len(p) < 17 {
		return r, errBadRecord
	}
	r.kind = p[0]
	copy(r.id[:], p[1:17])
	p = p[17:]
	str := func() (string, bool) {
		n, k := binary.Uvarint(p)
		if k <= 0 || uint64(len(p)-k) < n {
			return "", false
		}
		s := string(p[k : k+int(n)])
		p = p[k+int(n):]
		return s, true
	}
	vint := func() (int64, bool) {
		v, k := binary.Varint(p)
		if k <= 0 {
			return 0, false
		}
		p = p[k:]
		return v, true
	}
	ok := true
	switch r.kind {
	case recAdd, recNear:
		var a, b, c bool
		r.key.Dataset, a = str()
		r.key.Path, b = str()
		r.key.Version, c = str()
		var d, e, f bool
		r.key.Index, d = vint()
		r.length, e = vint()
		r.key.BlockSize, f = vint()
		ok = a && b && c && d && e && f && r.length >= 0
	case recPage:
		n, k := binary.Uvarint(p)
		if k <= 0 || len(p) < k+4 {
			return r, errBadRecord
		}
		r.page = int(n)
		r.crc = binary.LittleEndian.Uint32(p[k:])
	case recRemove:
	default:
		ok = false
	}
	if !ok {
		return r, errBadRecord
	}
	return r, nil
}

// journal appends records to one file.
type journal struct {
	path string
	mu   sync.Mutex
	f    *os.File
	buf  []byte
	size int64
}

// readJournal calls fn for each intact record of the journal at path and
// returns the offset where intact records end (a torn tail starts there).
func readJournal(path string, fn func(journalRecord)) (int64, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	defer f.Close()
	r := bufio.NewReaderSize(f, 1<<20)
	var good int64
	var hdr [8]byte
	payload := make([]byte, 0, 4096)
	for {
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return good, nil // EOF or a torn header
		}
		n := binary.LittleEndian.Uint32(hdr[:4])
		if n > maxRecord {
			return good, nil
		}
		if uint32(cap(payload)) < n {
			payload = make([]byte, n)
		}
		payload = payload[:n]
		if _, err := io.ReadFull(r, payload); err != nil {
			return good, nil
		}
		if crc32c(payload) != binary.LittleEndian.Uint32(hdr[4:]) {
			return good, nil
		}
		rec, err := decodeRecord(payload)
		if err != nil {
			return good, nil
		}
		fn(rec)
		good += 8 + int64(n)
	}
}

// createJournal writes recs to a new journal at path (atomically replacing
// any old one) and opens it for appending.
func createJournal(path string, recs func(yield func(journalRecord) bool)) (*journal, error) {
	tmp := path + ".new"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return nil, err
	}
	w := bufio.NewWriterSize(f, 1<<20)
	var buf []byte
	var size int64
	for rec := range recs {
		buf = rec.encode(buf[:0])
		w.Write(buf)
		size += int64(len(buf))
	}
	err = w.Flush()
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return nil, fmt.Errorf("write journal %s: %w", path, err)
	}
	af, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	return &journal{path: path, f: af, size: size}, nil
}

// append writes records in one write call.
func (j *journal) append(recs ...journalRecord) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.buf = j.buf[:0]
	for _, r := range recs {
		j.buf = r.encode(j.buf)
	}
	n, err := j.f.Write(j.buf)
	if err != nil && n > 0 {
		// A torn record in the middle would hide every later one at the
		// next start: cut it off.
		if terr := j.f.Truncate(j.size); terr != nil {
			err = fmt.Errorf("%w (and the torn record stays: %v)", err, terr)
		}
		n = 0
	}
	j.size += int64(n)
	if err != nil {
		return fmt.Errorf("append to journal %s: %w", j.path, err)
	}
	return nil
}

func (j *journal) close() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.f.Close()
}
