package transport_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/granary-cache/granary/internal/block"
	"github.com/granary-cache/granary/internal/transport"
	"github.com/granary-cache/granary/internal/ufs"
	"github.com/granary-cache/granary/internal/wire"
)

// scriptedWorker answers the hello, then, for each request frame it reads,
// writes what answer(id) returns in one write: frames laid out as a test
// needs them, to reach every case of the reader's one-read path.
func scriptedWorker(t *testing.T, answer func(id uint64) []byte) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() {
		ln.Close()
		<-done
	})
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		go func() { <-done; c.Close() }()
		br := bufio.NewReader(c)
		if _, _, err := wire.ReadHello(br); err != nil {
			return
		}
		c.Write(wire.AppendHelloAnswer(nil, wire.HelloOK, ""))
		var hdr [wire.FrameHeaderLen]byte
		for {
			if _, err := io.ReadFull(br, hdr[:]); err != nil {
				return
			}
			h, err := wire.ParseFrameHeader(hdr[:])
			if err != nil {
				return
			}
			if _, err := io.CopyN(io.Discard, br, int64(h.Len)); err != nil {
				return
			}
			if h.Kind == wire.KindCancel {
				continue
			}
			if _, err := c.Write(answer(h.ID)); err != nil {
				return
			}
		}
	}()
	return ln.Addr().String()
}

func frame(kind, flags byte, id uint64, body []byte) []byte {
	b := make([]byte, wire.FrameHeaderLen, wire.FrameHeaderLen+len(body))
	wire.FrameHeader{Len: uint32(len(body)), Kind: kind, Flags: flags, ID: id}.Put(b)
	return append(b, body...)
}

// TestFramedReadLayouts: whatever the worker's frames look like around the
// answer of a lone read (a frame for a read given up before it, the answer
// cut in two frames, an error, bytes of the next frame in the same
// segment), the reader puts every byte where it belongs.
func TestFramedReadLayouts(t *testing.T) {
	data := bytes.Repeat([]byte("0123456789abcdef"), 8192) // 128 KiB
	last := wire.DataFlags(wire.SourceMem, true)
	more := wire.DataFlags(wire.SourceMem, false)
	cases := map[string]func(id uint64) []byte{
		"answer alone": func(id uint64) []byte { return frame(wire.KindData, last, id, data) },
		"a stale frame first": func(id uint64) []byte {
			return append(frame(wire.KindData, last, id+1000, data[:5000]), frame(wire.KindData, last, id, data)...)
		},
		"in two frames": func(id uint64) []byte {
			return append(frame(wire.KindData, more, id, data[:70000]), frame(wire.KindData, last, id, data[70000:])...)
		},
		"a small first frame": func(id uint64) []byte {
			return append(frame(wire.KindData, more, id, data[:10]), frame(wire.KindData, last, id, data[10:])...)
		},
		"a stale frame after": func(id uint64) []byte {
			return append(frame(wire.KindData, last, id, data), frame(wire.KindData, last, id+1000, data[:3000])...)
		},
	}
	for name, answer := range cases {
		t.Run(name, func(t *testing.T) {
			addr := scriptedWorker(t, answer)
			rd := transport.NewFramed(transport.Options{Conns: 1})
			defer rd.Close()
			ref := block.Ref{ID: block.ID{Dataset: "d", Path: "f", Version: "v", BlockSize: 4 << 20}, Size: int64(len(data))}
			for i := range 20 { // the same connection: what one read leaves, the next finds
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				buf := make([]byte, len(data))
				_, err := rd.Read(ctx, addr, wire.ReadRequest{Block: ref, Length: int64(len(buf))}, buf)
				cancel()
				if err != nil || !bytes.Equal(buf, data) {
					t.Fatalf("read %d: %v (bytes equal %v)", i, err, bytes.Equal(buf, data))
				}
			}
		})
	}
	t.Run("an error", func(t *testing.T) {
		missing := &ufs.Error{Op: "read", Dataset: "d", Path: "f", Class: ufs.ClassNotExist, Err: errors.New("gone")}
		addr := scriptedWorker(t, func(id uint64) []byte { return frame(wire.KindError, 0, id, wire.AppendError(nil, missing)) })
		rd := transport.NewFramed(transport.Options{Conns: 1})
		defer rd.Close()
		ref := block.Ref{ID: block.ID{Dataset: "d", Path: "f", Version: "v", BlockSize: 4 << 20}, Size: 1000}
		for i := range 5 {
			_, err := rd.Read(context.Background(), addr, wire.ReadRequest{Block: ref, Length: 1000}, make([]byte, 1000))
			if ufs.ClassOf(err) != ufs.ClassNotExist {
				t.Fatalf("read %d: %v; want the worker's not-exist error", i, err)
			}
		}
	})
}
