package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
)

// LocateRequest asks a worker on the client's host where the file of a
// whole block is (frame kind KindLocate).
type LocateRequest struct {
	Read   ReadRequest // the block; its Offset and Length are 0
	Verify string      // VerifyNone, VerifyChanged or VerifyAll
	Near   bool        // keep a near copy when not an owner (QueryNear)
}

var verifyCodes = [...]string{VerifyNone, VerifyChanged, VerifyAll}

// Append appends r's encoding to b.
func (r LocateRequest) Append(b []byte) ([]byte, error) {
	code := -1
	for i, v := range verifyCodes {
		if v == r.Verify {
			code = i
		}
	}
	if code < 0 {
		return b, fmt.Errorf("verify %q: want %q, %q or %q", r.Verify, VerifyNone, VerifyChanged, VerifyAll)
	}
	var flags byte
	if r.Near {
		flags |= 1
	}
	return r.Read.Append(append(b, byte(code), flags))
}

// ParseLocateRequest decodes one LocateRequest that fills b exactly.
func ParseLocateRequest(b []byte) (LocateRequest, error) {
	var r LocateRequest
	if len(b) < 2 {
		return r, errors.New("locate request cut short")
	}
	if int(b[0]) >= len(verifyCodes) {
		return r, fmt.Errorf("locate request with verify code %d", b[0])
	}
	if b[1]&^1 != 0 {
		return r, fmt.Errorf("locate request with unknown flags %#x", b[1])
	}
	r.Verify, r.Near = verifyCodes[b[0]], b[1]&1 != 0
	var err error
	r.Read, err = ParseReadRequest(b[2:])
	return r, err
}

// maxLocalPages bounds the pages of a LocalBlock on the wire: its encoding
// must fit one frame.
const maxLocalPages = (MaxFrameBody - 22 - maxName) / 4

// AppendLocalBlock appends lb's encoding to b.
func AppendLocalBlock(b []byte, lb LocalBlock) ([]byte, error) {
	switch {
	case len(lb.CRCs) > maxLocalPages:
		return b, fmt.Errorf("a block of %d pages (at most %d)", len(lb.CRCs), maxLocalPages)
	case len(lb.File) > maxName:
		return b, fmt.Errorf("a block file path of %d bytes (at most %d)", len(lb.File), maxName)
	case lb.Length < 0 || lb.PageSize < 0:
		return b, fmt.Errorf("a block of %d bytes in pages of %d", lb.Length, lb.PageSize)
	}
	b = binary.BigEndian.AppendUint64(b, uint64(lb.Length))
	b = binary.BigEndian.AppendUint64(b, uint64(lb.PageSize))
	b = binary.BigEndian.AppendUint32(b, uint32(len(lb.CRCs)))
	for _, c := range lb.CRCs {
		b = binary.BigEndian.AppendUint32(b, c)
	}
	b = binary.BigEndian.AppendUint16(b, uint16(len(lb.File)))
	return append(b, lb.File...), nil
}

// LocalBlockLen is the length of lb's encoding.
func LocalBlockLen(lb LocalBlock) int { return 22 + 4*len(lb.CRCs) + len(lb.File) }

// ParseLocalBlock decodes one LocalBlock that fills b exactly.
func ParseLocalBlock(b []byte) (LocalBlock, error) {
	var lb LocalBlock
	if len(b) < 22 {
		return lb, fmt.Errorf("located answer of %d bytes, shorter than 22", len(b))
	}
	length, pageSize := binary.BigEndian.Uint64(b[0:]), binary.BigEndian.Uint64(b[8:])
	if length > math.MaxInt64 || pageSize > math.MaxInt64 {
		return lb, errors.New("located answer with a negative length")
	}
	lb.Length, lb.PageSize = int64(length), int64(pageSize)
	n := int(binary.BigEndian.Uint32(b[16:]))
	rest := b[20:]
	if n > maxLocalPages || len(rest) < 4*n+2 {
		return lb, fmt.Errorf("located answer cut short: %d pages in %d bytes", n, len(b))
	}
	lb.CRCs = make([]uint32, n)
	for i := range lb.CRCs {
		lb.CRCs[i] = binary.BigEndian.Uint32(rest[4*i:])
	}
	rest = rest[4*n:]
	m := int(binary.BigEndian.Uint16(rest))
	if len(rest) != 2+m {
		return lb, fmt.Errorf("located answer: a path of %d bytes in %d", m, len(rest)-2)
	}
	lb.File = string(rest[2:])
	return lb, nil
}
