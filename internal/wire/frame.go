package wire

// The block protocol: block reads (client to worker, worker to worker) on
// persistent connections, in binary frames. It shares the worker's data
// port with HTTP: a connection whose first four bytes are FrameMagic speaks
// it, any other speaks HTTP (inside TLS when the worker has TLS). Metadata,
// status and admin stay on HTTP.
//
// A connection opens with the client's hello and the worker's answer; the
// token and the version are checked once, there. All integers are big
// endian.
//
// Client hello:
//
//	offset  size  field
//	0       4     magic "GRNB"
//	4       2     protocol version (FrameVersion)
//	6       2     flags (0)
//	8       2     token length n (0: none)
//	10      n     token
//	10+n    2     "\r\n"
//
// The CR LF makes a server that speaks only HTTP (a worker older than the
// protocol) see a malformed request line and answer 400 at once: a reader
// that gets "HTTP" back reads from that worker over HTTP instead.
//
// Worker answer:
//
//	offset  size  field
//	0       4     magic "GRNB"
//	4       2     protocol version the worker speaks
//	6       1     status: 0 ok, 1 version not supported, 2 not authorised
//	7       1     reserved (0)
//	8       2     message length n
//	10      n     message (why, when the status is not 0)
//
// After a status other than 0 the worker closes the connection.
//
// Then frames, in both directions, each a 16-byte header and a body:
//
//	offset  size  field
//	0       4     body length (at most MaxFrameBody)
//	4       1     kind
//	5       1     flags
//	6       2     item: which read of a batch (0 for a single read)
//	8       8     request id, chosen by the client, unique among its
//	              requests in flight on the connection
//	16      len   body
//
// Kinds, client to worker:
//
//	0x01 read    body: one ReadRequest
//	0x02 batch   body: count (2 bytes), then count ReadRequests, each
//	             prefixed by its length (2 bytes); items are numbered from 0
//	0x03 cancel  body: empty; the worker stops serving the request
//	0x04 locate  body: one LocateRequest (only on the worker's unix socket)
//	0x05 ufsread body: one ReadRequest for a range of a file read from the
//	             UFS, uncached, for a peer that stores it (a directory reader,
//	             see the worker's package): its block is block 0 of the file,
//	             Offset and Length the range within the file
//
// Kinds, worker to client:
//
//	0x81 data    body: the next bytes of the item's range, following those of
//	             the item's earlier data frames; flags: bit 0 set on the last
//	             frame of the item (which may have an empty body), bits 4-7
//	             the source of the bytes (SourceMem ... SourceUFS)
//	0x82 error   body: class (1 byte), then a message (the rest); ends the
//	             item
//	0x83 located body: one LocalBlock; flags: bit 0 set (it ends the item)
//
// A ReadRequest names a block and a range within it:
//
//	offset  size  field
//	0       8     offset within the block
//	8       4     length (at most MaxReadLength)
//	12      8     block index
//	20      8     file size
//	28      8     block size (the client's layout for the dataset)
//	36      2+n   dataset (length, bytes)
//	.       2+n   path within the dataset
//	.       2+n   version
//
// A LocateRequest asks a worker on the client's host to make a whole block
// cached and say where its file is (short-circuit reads, FUSE
// passthrough), as PathLocal does over HTTP:
//
//	offset  size  field
//	0       1     verify: 0 none, 1 changed, 2 all (see QueryVerify)
//	1       1     flags: bit 0 near (see QueryNear)
//	2       .     a ReadRequest naming the block (offset and length 0)
//
// A LocalBlock answers it:
//
//	offset  size  field
//	0       8     block length
//	8       8     page size
//	16      4     pages n
//	20      4n    the pages' CRC32C, in order
//	20+4n   2+m   the block file's path (length, bytes)
//
// The worker answers every item with data frames ending in one marked last,
// or with an error frame, possibly after data frames (a page that fails its
// check halfway through the range): the client then drops what it got.
// Items of a batch and requests on a connection are answered in any order,
// their frames interleaved. The error class keeps what the client needs to
// decide: an error of the UFS (the file is gone, changed, refused) travels
// with its class and is final; ErrClassWorker means this worker failed, and
// the client tries the next owner.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/granary-cache/granary/internal/block"
	"github.com/granary-cache/granary/internal/ufs"
)

// FrameMagic opens a connection of the block protocol.
const FrameMagic = "GRNB"

// FrameVersion is the protocol version this build speaks.
const FrameVersion = 1

// Limits of the block protocol.
const (
	FrameHeaderLen = 16
	MaxFrameBody   = 16 << 20 // a data frame carries at most this much
	MaxReadLength  = 1 << 30  // one read of a block range
	MaxBatch       = 1024     // reads in one batch
	maxName        = 1<<16 - 1
	maxTokenLen    = 1<<16 - 1
	helloLen       = 10
)

// Frame kinds.
const (
	KindRead    byte = 0x01
	KindBatch   byte = 0x02
	KindCancel  byte = 0x03
	KindLocate  byte = 0x04
	KindUFSRead byte = 0x05
	KindData    byte = 0x81
	KindError   byte = 0x82
	KindLocated byte = 0x83
)

// FlagLast marks the last frame of an item's answer.
const FlagLast byte = 0x01

// Hello statuses.
const (
	HelloOK           byte = 0
	HelloBadVersion   byte = 1
	HelloUnauthorized byte = 2
)

// Source is where the bytes of a data frame came from.
type Source byte

// Sources.
const (
	SourceUnknown Source = iota
	SourceMem
	SourceSSD
	SourceHDD
	SourceUFS
)

var sourceNames = [...]string{"", "mem", "ssd", "hdd", "ufs"}

func (s Source) String() string {
	if int(s) < len(sourceNames) {
		return sourceNames[s]
	}
	return fmt.Sprintf("source(%d)", s)
}

// SourceOf maps a tier's or the UFS's name (mem, ssd, hdd, ufs, in any case)
// to its Source.
func SourceOf(name string) Source {
	for i, n := range sourceNames {
		if i > 0 && equalFold(n, name) {
			return Source(i)
		}
	}
	return SourceUnknown
}

func equalFold(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		x, y := a[i]|0x20, b[i]|0x20
		if x != y {
			return false
		}
	}
	return true
}

// Error classes of an error frame. ErrClassWorker is an error of the worker
// itself; the others are the UFS's classes (ufs.Class).
const (
	ErrClassWorker        byte = 0
	ErrClassNotExist      byte = 1
	ErrClassPermission    byte = 2
	ErrClassInvalid       byte = 3
	ErrClassVersionChange byte = 4
	ErrClassCanceled      byte = 5
	ErrClassRetryable     byte = 6
	ErrClassFatal         byte = 7
)

var frameClasses = map[ufs.Class]byte{
	ufs.ClassNotExist:       ErrClassNotExist,
	ufs.ClassPermission:     ErrClassPermission,
	ufs.ClassInvalid:        ErrClassInvalid,
	ufs.ClassVersionChanged: ErrClassVersionChange,
	ufs.ClassCanceled:       ErrClassCanceled,
	ufs.ClassRetryable:      ErrClassRetryable,
	ufs.ClassFatal:          ErrClassFatal,
}

// FrameHeader is the 16-byte header of every frame after the hello.
type FrameHeader struct {
	Len   uint32 // of the body
	Kind  byte
	Flags byte
	Item  uint16
	ID    uint64
}

// Put encodes h into b[:FrameHeaderLen].
func (h FrameHeader) Put(b []byte) {
	_ = b[FrameHeaderLen-1]
	binary.BigEndian.PutUint32(b[0:], h.Len)
	b[4] = h.Kind
	b[5] = h.Flags
	binary.BigEndian.PutUint16(b[6:], h.Item)
	binary.BigEndian.PutUint64(b[8:], h.ID)
}

// ParseFrameHeader decodes a header and checks its length.
func ParseFrameHeader(b []byte) (FrameHeader, error) {
	if len(b) < FrameHeaderLen {
		return FrameHeader{}, fmt.Errorf("frame header of %d bytes, want %d", len(b), FrameHeaderLen)
	}
	h := FrameHeader{
		Len:   binary.BigEndian.Uint32(b[0:]),
		Kind:  b[4],
		Flags: b[5],
		Item:  binary.BigEndian.Uint16(b[6:]),
		ID:    binary.BigEndian.Uint64(b[8:]),
	}
	if h.Len > MaxFrameBody {
		return h, fmt.Errorf("frame of %d bytes exceeds the limit of %d", h.Len, MaxFrameBody)
	}
	return h, nil
}

// Source is the source carried by a data frame's flags.
func (h FrameHeader) Source() Source { return Source(h.Flags >> 4) }

// DataFlags builds a data frame's flags.
func DataFlags(src Source, last bool) byte {
	f := byte(src) << 4
	if last {
		f |= FlagLast
	}
	return f
}

// ReadRequest is one block range asked for.
type ReadRequest struct {
	Block  block.Ref
	Offset int64 // within the block
	Length int64
}

// fixedReadLen is the fixed part of an encoded ReadRequest.
const fixedReadLen = 36

// EncodedLen is the length of r's encoding.
func (r ReadRequest) EncodedLen() int {
	return fixedReadLen + 6 + len(r.Block.Dataset) + len(r.Block.Path) + len(r.Block.Version)
}

// Append appends r's encoding to b. It fails on a field the frame cannot
// carry.
func (r ReadRequest) Append(b []byte) ([]byte, error) {
	if err := r.check(); err != nil {
		return b, err
	}
	b = binary.BigEndian.AppendUint64(b, uint64(r.Offset))
	b = binary.BigEndian.AppendUint32(b, uint32(r.Length))
	b = binary.BigEndian.AppendUint64(b, uint64(r.Block.Index))
	b = binary.BigEndian.AppendUint64(b, uint64(r.Block.Size))
	b = binary.BigEndian.AppendUint64(b, uint64(r.Block.BlockSize))
	for _, s := range []string{r.Block.Dataset, r.Block.Path, r.Block.Version} {
		b = binary.BigEndian.AppendUint16(b, uint16(len(s)))
		b = append(b, s...)
	}
	return b, nil
}

func (r ReadRequest) check() error {
	switch {
	case r.Offset < 0 || r.Length < 0 || r.Length > MaxReadLength:
		return fmt.Errorf("read of %d bytes at %d: out of range (at most %d bytes)", r.Length, r.Offset, MaxReadLength)
	case r.Block.Index < 0 || r.Block.Size < 0 || r.Block.BlockSize <= 0:
		return fmt.Errorf("block %d of size %d of a %d-byte file: out of range", r.Block.Index, r.Block.BlockSize, r.Block.Size)
	case len(r.Block.Dataset) > maxName || len(r.Block.Path) > maxName || len(r.Block.Version) > maxName:
		return fmt.Errorf("a name longer than %d bytes", maxName)
	}
	return nil
}

// ParseReadRequest decodes one ReadRequest that fills b exactly.
func ParseReadRequest(b []byte) (ReadRequest, error) {
	var r ReadRequest
	if len(b) < fixedReadLen {
		return r, fmt.Errorf("read request of %d bytes, shorter than %d", len(b), fixedReadLen)
	}
	r.Offset = int64(binary.BigEndian.Uint64(b[0:]))
	r.Length = int64(binary.BigEndian.Uint32(b[8:]))
	r.Block.Index = int64(binary.BigEndian.Uint64(b[12:]))
	r.Block.Size = int64(binary.BigEndian.Uint64(b[20:]))
	r.Block.BlockSize = int64(binary.BigEndian.Uint64(b[28:]))
	rest := b[fixedReadLen:]
	for _, s := range []*string{&r.Block.Dataset, &r.Block.Path, &r.Block.Version} {
		if len(rest) < 2 {
			return r, errors.New("read request cut short")
		}
		n := int(binary.BigEndian.Uint16(rest))
		if len(rest) < 2+n {
			return r, errors.New("read request cut short")
		}
		*s = string(rest[2 : 2+n])
		rest = rest[2+n:]
	}
	if len(rest) != 0 {
		return r, fmt.Errorf("read request with %d bytes too many", len(rest))
	}
	if err := r.check(); err != nil {
		return r, err
	}
	return r, nil
}

// AppendBatch appends a batch body: the count, then each read prefixed by
// its length.
func AppendBatch(b []byte, reads []ReadRequest) ([]byte, error) {
	if len(reads) == 0 || len(reads) > MaxBatch {
		return b, fmt.Errorf("a batch of %d reads (1 to %d)", len(reads), MaxBatch)
	}
	b = binary.BigEndian.AppendUint16(b, uint16(len(reads)))
	for i, r := range reads {
		n := r.EncodedLen()
		if n > maxName {
			return b, fmt.Errorf("read %d of the batch: %d bytes encoded, more than %d", i, n, maxName)
		}
		b = binary.BigEndian.AppendUint16(b, uint16(n))
		var err error
		if b, err = r.Append(b); err != nil {
			return b, fmt.Errorf("read %d of the batch: %w", i, err)
		}
	}
	return b, nil
}

// ParseBatch decodes a batch body.
func ParseBatch(b []byte) ([]ReadRequest, error) {
	if len(b) < 2 {
		return nil, errors.New("batch cut short")
	}
	n := int(binary.BigEndian.Uint16(b))
	if n == 0 || n > MaxBatch {
		return nil, fmt.Errorf("a batch of %d reads (1 to %d)", n, MaxBatch)
	}
	reads := make([]ReadRequest, 0, n)
	rest := b[2:]
	for i := range n {
		if len(rest) < 2 {
			return nil, fmt.Errorf("batch cut short at read %d", i)
		}
		l := int(binary.BigEndian.Uint16(rest))
		if len(rest) < 2+l {
			return nil, fmt.Errorf("batch cut short at read %d", i)
		}
		r, err := ParseReadRequest(rest[2 : 2+l])
		if err != nil {
			return nil, fmt.Errorf("read %d of the batch: %w", i, err)
		}
		reads = append(reads, r)
		rest = rest[2+l:]
	}
	if len(rest) != 0 {
		return nil, fmt.Errorf("batch with %d bytes too many", len(rest))
	}
	return reads, nil
}

// AppendError appends an error frame's body for err: its class, then its
// message. A UFS error keeps its class and travels without its operation
// and path (the client knows them). An error that is not the UFS's (a
// failing disk, an owner that did not answer a near copy) is the worker's:
// the client tries the next owner.
func AppendError(b []byte, err error) []byte {
	msg := err.Error()
	cls := ErrClassWorker
	var ue *ufs.Error
	switch {
	case errors.As(err, &ue):
		msg = ue.Err.Error()
		if c, ok := frameClasses[ue.Class]; ok {
			cls = c
		}
	case errors.Is(err, ErrWorker):
	default:
		if c := ufs.ClassOf(err); c != ufs.ClassFatal {
			cls = frameClasses[c]
		}
	}
	if len(msg) > 4096 {
		msg = msg[:4096] + "..."
	}
	return append(append(b, cls), msg...)
}

// ParseError turns an error frame's body into the error the client acts
// on, as ReadError does for HTTP: a UFS error keeps its class (but
// retryable and canceled ones, which the next owner may do better on, wrap
// ErrWorker); every one satisfies Answered.
func ParseError(op, dataset, path string, body []byte) error {
	if len(body) == 0 {
		return &answered{fmt.Errorf("%w: %s /%s/%s: an empty error frame", ErrWorker, op, dataset, path)}
	}
	msg := string(body[1:])
	for cls, b := range frameClasses {
		if b == body[0] && cls != ufs.ClassRetryable && cls != ufs.ClassCanceled {
			return &ufs.Error{Op: op, Dataset: dataset, Path: path, Class: cls, Err: &answered{errors.New(msg)}}
		}
	}
	return &answered{fmt.Errorf("%w: %s /%s/%s: %s", ErrWorker, op, dataset, path, msg)}
}

// AppendHello appends a client's hello.
func AppendHello(b []byte, token string) ([]byte, error) {
	if len(token) > maxTokenLen {
		return b, fmt.Errorf("a token of %d bytes (at most %d)", len(token), maxTokenLen)
	}
	b = append(b, FrameMagic...)
	b = binary.BigEndian.AppendUint16(b, FrameVersion)
	b = binary.BigEndian.AppendUint16(b, 0)
	b = binary.BigEndian.AppendUint16(b, uint16(len(token)))
	b = append(b, token...)
	return append(b, '\r', '\n'), nil
}

// ReadHello reads a client's hello (magic included) and returns its
// version and token.
func ReadHello(r io.Reader) (version uint16, token string, err error) {
	var h [helloLen]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return 0, "", fmt.Errorf("read hello: %w", err)
	}
	if string(h[:4]) != FrameMagic {
		return 0, "", fmt.Errorf("not a block protocol hello: %q", h[:4])
	}
	version = binary.BigEndian.Uint16(h[4:])
	tok := make([]byte, binary.BigEndian.Uint16(h[8:])+2)
	if _, err := io.ReadFull(r, tok); err != nil {
		return 0, "", fmt.Errorf("read hello token: %w", err)
	}
	if string(tok[len(tok)-2:]) != "\r\n" {
		return 0, "", errors.New("a hello that does not end in CR LF")
	}
	return version, string(tok[:len(tok)-2]), nil
}

// AppendHelloAnswer appends a worker's answer to a hello.
func AppendHelloAnswer(b []byte, status byte, msg string) []byte {
	if len(msg) > 4096 {
		msg = msg[:4096]
	}
	b = append(b, FrameMagic...)
	b = binary.BigEndian.AppendUint16(b, FrameVersion)
	b = append(b, status, 0)
	b = binary.BigEndian.AppendUint16(b, uint16(len(msg)))
	return append(b, msg...)
}

// ErrRefused is the error of a hello the worker refused.
var ErrRefused = errors.New("refused by the worker")

// ReadHelloAnswer reads a worker's answer; an error when it refused.
func ReadHelloAnswer(r io.Reader) error {
	var h [helloLen]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return fmt.Errorf("read the worker's hello: %w", err)
	}
	if string(h[:4]) != FrameMagic {
		return fmt.Errorf("not a block protocol answer: %q (a worker too old for the block protocol?)", h[:4])
	}
	msg := make([]byte, binary.BigEndian.Uint16(h[8:]))
	if _, err := io.ReadFull(r, msg); err != nil {
		return fmt.Errorf("read the worker's hello: %w", err)
	}
	switch h[6] {
	case HelloOK:
		return nil
	case HelloBadVersion:
		return fmt.Errorf("%w: it speaks version %d of the block protocol, this client %d: %s", ErrRefused, binary.BigEndian.Uint16(h[4:]), FrameVersion, msg)
	case HelloUnauthorized:
		return fmt.Errorf("%w: not authorised: %s", ErrRefused, msg)
	}
	return fmt.Errorf("%w: status %d: %s", ErrRefused, h[6], msg)
}
