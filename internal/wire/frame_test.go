package wire

import (
	"bytes"
	"errors"
	"io/fs"
	"strings"
	"testing"

	"github.com/granary-cache/granary/internal/block"
	"github.com/granary-cache/granary/internal/ufs"
)

func sampleRead() ReadRequest {
	return ReadRequest{
		Block:  block.Ref{ID: block.ID{Dataset: "imagenet", Path: "train/n01440764/n01440764_10026.JPEG", Version: "etag-\"abc\"", BlockSize: 64 << 20, Index: 0}, Size: 110_000},
		Offset: 4096, Length: 105_904,
	}
}

func TestFrameHeaderRoundTrip(t *testing.T) {
	h := FrameHeader{Len: 123456, Kind: KindData, Flags: DataFlags(SourceSSD, true), Item: 513, ID: 1<<63 + 7}
	var b [FrameHeaderLen]byte
	h.Put(b[:])
	// The table of the package doc, byte by byte.
	want := []byte{0, 1, 0xe2, 0x40, 0x81, 0x21, 0x02, 0x01, 0x80, 0, 0, 0, 0, 0, 0, 7}
	if !bytes.Equal(b[:], want) {
		t.Fatalf("header bytes % x, want % x", b, want)
	}
	got, err := ParseFrameHeader(b[:])
	if err != nil || got != h {
		t.Fatalf("round trip: %+v, %v; want %+v", got, err, h)
	}
	if got.Source() != SourceSSD || got.Flags&FlagLast == 0 {
		t.Errorf("source %v, flags %#x", got.Source(), got.Flags)
	}
	h.Len = MaxFrameBody + 1
	h.Put(b[:])
	if _, err := ParseFrameHeader(b[:]); err == nil || !strings.Contains(err.Error(), "exceeds") {
		t.Errorf("an oversized frame: %v", err)
	}
	if _, err := ParseFrameHeader(b[:10]); err == nil {
		t.Error("a short header parsed")
	}
}

func TestReadRequestRoundTrip(t *testing.T) {
	r := sampleRead()
	b, err := r.Append(nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) != r.EncodedLen() {
		t.Errorf("encoded %d bytes, EncodedLen says %d", len(b), r.EncodedLen())
	}
	got, err := ParseReadRequest(b)
	if err != nil || got != r {
		t.Fatalf("round trip: %+v, %v", got, err)
	}
	// Every truncation fails, and so does a byte too many.
	for i := range len(b) {
		if _, err := ParseReadRequest(b[:i]); err == nil {
			t.Fatalf("cut to %d bytes: parsed", i)
		}
	}
	if _, err := ParseReadRequest(append(b, 0)); err == nil || !strings.Contains(err.Error(), "too many") {
		t.Errorf("a trailing byte: %v", err)
	}
	for name, bad := range map[string]ReadRequest{
		"negative offset": {Block: r.Block, Offset: -1, Length: 1},
		"too long":        {Block: r.Block, Length: MaxReadLength + 1},
		"no block size":   {Block: block.Ref{ID: block.ID{Dataset: "d"}, Size: 1}, Length: 1},
		"long path":       {Block: block.Ref{ID: block.ID{Dataset: "d", Path: strings.Repeat("a", 1<<16), BlockSize: 1}}, Length: 1},
	} {
		if _, err := bad.Append(nil); err == nil {
			t.Errorf("%s: encoded", name)
		}
	}
}

func TestBatchRoundTrip(t *testing.T) {
	var reads []ReadRequest
	for i := range 3 {
		r := sampleRead()
		r.Block.Index = int64(i)
		r.Block.Path += strings.Repeat("x", i)
		reads = append(reads, r)
	}
	b, err := AppendBatch(nil, reads)
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParseBatch(b)
	if err != nil || len(got) != 3 {
		t.Fatalf("round trip: %d reads, %v", len(got), err)
	}
	for i := range reads {
		if got[i] != reads[i] {
			t.Errorf("read %d: %+v, want %+v", i, got[i], reads[i])
		}
	}
	for i := range len(b) {
		if _, err := ParseBatch(b[:i]); err == nil {
			t.Fatalf("cut to %d bytes: parsed", i)
		}
	}
	if _, err := AppendBatch(nil, nil); err == nil {
		t.Error("an empty batch encoded")
	}
	if _, err := AppendBatch(nil, make([]ReadRequest, MaxBatch+1)); err == nil {
		t.Error("an oversized batch encoded")
	}
}

func TestErrorFrameKeepsClass(t *testing.T) {
	for _, c := range []struct {
		name   string
		err    error
		class  ufs.Class // want, ClassNone: a worker error
		worker bool
	}{
		{"not exist", &ufs.Error{Op: "read", Path: "a", Class: ufs.ClassNotExist, Err: fs.ErrNotExist}, ufs.ClassNotExist, false},
		{"changed", &ufs.Error{Op: "read", Path: "a", Class: ufs.ClassVersionChanged, Err: ufs.ErrVersionChanged}, ufs.ClassVersionChanged, false},
		{"permission", &ufs.Error{Op: "read", Path: "a", Class: ufs.ClassPermission, Err: fs.ErrPermission}, ufs.ClassPermission, false},
		{"retryable: the next owner", &ufs.Error{Op: "read", Path: "a", Class: ufs.ClassRetryable, Err: errors.New("503 slow down")}, ufs.ClassNone, true},
		{"worker's own", errors.New("disk on fire"), ufs.ClassNone, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			got := ParseError("read", "ds", "p/q", AppendError(nil, c.err))
			if !Answered(got) {
				t.Errorf("%v: not Answered", got)
			}
			if isWorker := errors.Is(got, ErrWorker); isWorker != c.worker {
				t.Errorf("%v: ErrWorker %v, want %v", got, isWorker, c.worker)
			}
			if !c.worker {
				var ue *ufs.Error
				if !errors.As(got, &ue) || ue.Class != c.class || ue.Dataset != "ds" || ue.Path != "p/q" {
					t.Errorf("%v: want a UFS error of class %v on /ds/p/q", got, c.class)
				}
			}
		})
	}
	if err := ParseError("read", "d", "p", nil); !errors.Is(err, ErrWorker) {
		t.Errorf("an empty error frame: %v", err)
	}
}

func TestHello(t *testing.T) {
	b, err := AppendHello(nil, "s3cret")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b, []byte("GRNB\x00\x01\x00\x00\x00\x06s3cret\r\n")) {
		t.Fatalf("hello % x", b)
	}
	v, tok, err := ReadHello(bytes.NewReader(b))
	if err != nil || v != FrameVersion || tok != "s3cret" {
		t.Fatalf("ReadHello: %d %q %v", v, tok, err)
	}
	if _, _, err := ReadHello(strings.NewReader("GET / HTTP/1.1\r\n")); err == nil {
		t.Error("HTTP parsed as a hello")
	}
	if err := ReadHelloAnswer(bytes.NewReader(AppendHelloAnswer(nil, HelloOK, ""))); err != nil {
		t.Errorf("ok answer: %v", err)
	}
	err = ReadHelloAnswer(bytes.NewReader(AppendHelloAnswer(nil, HelloUnauthorized, "wrong token")))
	if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "wrong token") {
		t.Errorf("refused answer: %v", err)
	}
	err = ReadHelloAnswer(strings.NewReader("HTTP/1.1 400 Bad Request\r\n\r\n"))
	if err == nil || !strings.Contains(err.Error(), "too old") {
		t.Errorf("an HTTP answer: %v", err)
	}
}

func TestSource(t *testing.T) {
	for _, s := range []Source{SourceMem, SourceSSD, SourceHDD, SourceUFS} {
		if SourceOf(strings.ToUpper(s.String())) != s {
			t.Errorf("SourceOf(%q) != %v", strings.ToUpper(s.String()), s)
		}
	}
	if SourceOf("nvme") != SourceUnknown {
		t.Error("an unknown tier has a source")
	}
}

func FuzzParseBatch(f *testing.F) {
	b, _ := AppendBatch(nil, []ReadRequest{sampleRead()})
	f.Add(b)
	f.Fuzz(func(t *testing.T, b []byte) {
		reads, err := ParseBatch(b)
		if err != nil {
			return
		}
		again, err := AppendBatch(nil, reads)
		if err != nil {
			t.Fatalf("a parsed batch does not encode: %v", err)
		}
		if !bytes.Equal(again, b) {
			t.Fatalf("re-encoded % x, from % x", again, b)
		}
	})
}
