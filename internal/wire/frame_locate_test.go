package wire

import (
	"bytes"
	"reflect"
	"strings"
	"testing"
)

func TestLocateRequestRoundTrip(t *testing.T) {
	r := sampleRead()
	r.Offset, r.Length = 0, 0
	for _, lr := range []LocateRequest{
		{Read: r, Verify: VerifyNone},
		{Read: r, Verify: VerifyChanged, Near: true},
		{Read: r, Verify: VerifyAll},
	} {
		b, err := lr.Append(nil)
		if err != nil {
			t.Fatal(err)
		}
		if len(b) != 2+r.EncodedLen() {
			t.Errorf("encoded %d bytes, want %d", len(b), 2+r.EncodedLen())
		}
		got, err := ParseLocateRequest(b)
		if err != nil || got != lr {
			t.Fatalf("round trip of %+v: %+v, %v", lr, got, err)
		}
		for i := range len(b) {
			if _, err := ParseLocateRequest(b[:i]); err == nil {
				t.Fatalf("cut to %d bytes: parsed", i)
			}
		}
	}
	// The table of the package doc: verify all, near.
	b, _ := LocateRequest{Read: r, Verify: VerifyAll, Near: true}.Append(nil)
	if b[0] != 2 || b[1] != 1 {
		t.Errorf("leading bytes % x, want 02 01", b[:2])
	}
	if _, err := (LocateRequest{Read: r, Verify: "some"}).Append(nil); err == nil || !strings.Contains(err.Error(), `"some"`) {
		t.Errorf("an unknown verify mode: %v", err)
	}
	for name, bad := range map[string][]byte{
		"verify code": append([]byte{3, 0}, b[2:]...),
		"flags":       append([]byte{0, 2}, b[2:]...),
	} {
		if _, err := ParseLocateRequest(bad); err == nil {
			t.Errorf("%s: parsed", name)
		}
	}
}

func TestLocalBlockRoundTrip(t *testing.T) {
	lb := LocalBlock{File: "/var/lib/granary/mem/3f/3f2a.blk", Length: 9 << 20, PageSize: 4 << 20, CRCs: []uint32{0xdeadbeef, 1, 0xffffffff}}
	b, err := AppendLocalBlock(nil, lb)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) != LocalBlockLen(lb) {
		t.Errorf("encoded %d bytes, LocalBlockLen says %d", len(b), LocalBlockLen(lb))
	}
	// The table of the package doc.
	head := []byte{0, 0, 0, 0, 0, 0x90, 0, 0, 0, 0, 0, 0, 0, 0x40, 0, 0, 0, 0, 0, 3, 0xde, 0xad, 0xbe, 0xef}
	if !bytes.HasPrefix(b, head) || string(b[len(b)-len(lb.File):]) != lb.File {
		t.Fatalf("bytes % x", b)
	}
	got, err := ParseLocalBlock(b)
	if err != nil || !reflect.DeepEqual(got, lb) {
		t.Fatalf("round trip: %+v, %v", got, err)
	}
	for i := range len(b) {
		if _, err := ParseLocalBlock(b[:i]); err == nil {
			t.Fatalf("cut to %d bytes: parsed", i)
		}
	}
	if _, err := ParseLocalBlock(append(b, 0)); err == nil {
		t.Error("a trailing byte: parsed")
	}
	huge := append([]byte(nil), b...)
	huge[16], huge[17], huge[18], huge[19] = 0xff, 0xff, 0xff, 0xff
	if _, err := ParseLocalBlock(huge); err == nil {
		t.Error("4 billion pages: parsed")
	}
	if _, err := AppendLocalBlock(nil, LocalBlock{File: strings.Repeat("a", 1<<16)}); err == nil {
		t.Error("a path too long: encoded")
	}
	if _, err := AppendLocalBlock(nil, LocalBlock{Length: -1}); err == nil {
		t.Error("a negative length: encoded")
	}
}
