// Package transport carries block reads between a reader (a client, or a
// worker copying from an owner) and a worker, over either protocol a worker
// speaks on its data port: HTTP range requests, and the framed block
// protocol of package wire (persistent connections, several reads in flight
// on each, a batch of reads in one request, hits sent from the block file by
// sendfile). Readers use the framed protocol and fall back to HTTP for a
// worker that answers in HTTP (one older than the protocol).
//
// The worker side is Handler, the block engine, which knows nothing of
// either protocol: it writes a range's bytes to a RangeWriter. Server
// serves it on framed connections, HTTPHandler on HTTP, and Listen splits a
// listener's connections between the two by their first bytes.
package transport

import (
	"context"
	"crypto/tls"
	"os"
	"time"

	"github.com/granary-cache/granary/internal/wire"
)

// Reader reads block ranges from workers. Implementations are safe for
// concurrent use.
type Reader interface {
	// Read fills buf with the range r of a block from the worker at addr
	// (r.Length is len(buf)) and says where the bytes came from. Errors
	// keep their class: a UFS error (ufs.Error) is final, one that wraps
	// wire.ErrWorker or no answer at all means trying the next owner, and
	// wire.Answered tells an error the worker answered from one of the
	// connection.
	Read(ctx context.Context, addr string, r wire.ReadRequest, buf []byte) (wire.Source, error)
	// ReadBatch reads several ranges from one worker in one request;
	// bufs[i] receives reads[i], and the error of each is at its index
	// (all nil on success).
	ReadBatch(ctx context.Context, addr string, reads []wire.ReadRequest, bufs [][]byte) []error
	// Drop closes the connections kept for the worker at addr. A worker
	// marked down may be cut off: its connections hang rather than fail,
	// and a read after it answers again must not queue behind them. The
	// framed protocol fails the reads still in flight on them as
	// unanswered; HTTP, which cannot close one host's connections, closes
	// the idle ones to every worker and leaves those in flight to their
	// contexts.
	Drop(addr string)
	// Close closes the connections.
	Close() error
}

// Options configure a Reader.
type Options struct {
	Token          string        // sent once per connection (framed) or per request (HTTP)
	TLS            *tls.Config   // nil: plain TCP
	ConnectTimeout time.Duration // default 5 s
	// Conns bounds the framed connections a reader opens to one worker
	// (default 32). A read takes an idle connection, else a new one while
	// under the bound, else shares the least busy: a connection carrying
	// one response at a time streams it without waiting behind others.
	Conns int
	// IdleTimeout closes a framed connection that carried no read for
	// that long (default 90 s, as net/http's idle connections), so that
	// a reader keeps no sockets open at workers it no longer reads from.
	IdleTimeout time.Duration
}

func (o Options) idleTimeout() time.Duration {
	if o.IdleTimeout > 0 {
		return o.IdleTimeout
	}
	return 90 * time.Second
}

func (o Options) connectTimeout() time.Duration {
	if o.ConnectTimeout > 0 {
		return o.ConnectTimeout
	}
	return 5 * time.Second
}

// Handler serves block ranges: the worker's block engine.
type Handler interface {
	// ServeRead writes the r.Length bytes of range r to w, in order, or
	// returns an error. An error before the first write reaches the reader
	// whole; one after it (a page failing its check halfway) makes the
	// reader drop what it got.
	ServeRead(ctx context.Context, r wire.ReadRequest, w RangeWriter) error
}

// UFSReader is a Handler that also reads ranges of the UFS's files for
// peers, uncached (wire.KindUFSRead): a worker that listed a directory
// reads its small files for the others.
type UFSReader interface {
	// ServeUFSRead writes the r.Length bytes at r.Offset of the file r's
	// block names (r.Block.Version is the version it must have) to w.
	ServeUFSRead(ctx context.Context, r wire.ReadRequest, w RangeWriter) error
}

// RangeWriter receives the bytes of one range, in order.
type RangeWriter interface {
	// Write sends bytes in hand.
	Write(p []byte, src wire.Source) error
	// WriteFile sends n bytes of f at off: by sendfile where the
	// connection allows it. f's own offset is neither used nor moved: the
	// file may be shared by concurrent requests.
	WriteFile(f *os.File, off, n int64, src wire.Source) error
}
