package client

import (
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"sync"
	"time"

	"github.com/granary-cache/granary/internal/wire"
)

// localBlock is an open block file of a worker on this host. Each page is
// checked against its CRC the first time this client reads it from this
// open file, which is dropped after localBlockTTL.
type localBlock struct {
	f       *os.File
	info    wire.LocalBlock
	expires time.Time
	// Guarded by localBlocks.mu: the readers using f, and whether the
	// block left the set (f is then closed by the last of them).
	refs    int
	dropped bool

	mu       sync.Mutex
	verified []bool
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// readAt fills buf from the block at off: pages checked before are read
// straight into buf, others read whole, checked and copied.
func (lb *localBlock) readAt(buf []byte, off int64) error {
	end := off + int64(len(buf))
	if off < 0 || end > lb.info.Length {
		return fmt.Errorf("read [%d, %d) past the end of a %d-byte block", off, end, lb.info.Length)
	}
	ps := lb.info.PageSize
	for p := off / ps; p*ps < end; {
		if !lb.isVerified(p) {
			start, stop := max(off, p*ps), min(end, (p+1)*ps)
			if err := lb.check(p, buf[start-off:stop-off], start); err != nil {
				return err
			}
			p++
			continue
		}
		q := p // a run of checked pages in one read
		for (q+1)*ps < end && lb.isVerified(q+1) {
			q++
		}
		start, stop := max(off, p*ps), min(end, (q+1)*ps)
		if n, err := lb.f.ReadAt(buf[start-off:stop-off], start); int64(n) != stop-start {
			return fmt.Errorf("read %s: %d of %d bytes: %v", lb.f.Name(), n, stop-start, err)
		}
		p = q + 1
	}
	return nil
}

func (lb *localBlock) isVerified(p int64) bool {
	lb.mu.Lock()
	defer lb.mu.Unlock()
	return lb.verified[p]
}

// check reads page p whole, checks it against its CRC and copies its bytes
// from off on into dst (reading it into dst itself when dst takes the
// whole page). dst holds bytes the check failed on when it returns an
// error: the caller reads them again or fails.
func (lb *localBlock) check(p int64, dst []byte, off int64) error {
	ps := lb.info.PageSize
	n := min(ps, lb.info.Length-p*ps)
	var page []byte
	if off == p*ps && int64(len(dst)) >= n {
		page = dst[:n] // the whole page is wanted: read and check it in place
	} else {
		bufp := pageBuf(n)
		defer pageBufs.Put(bufp)
		page = (*bufp)[:n]
	}
	// A short read (the file was cut) fails like changed bytes do.
	k, err := lb.f.ReadAt(page, p*ps)
	if err != nil && err != io.EOF {
		return fmt.Errorf("read %s: %w", lb.f.Name(), err)
	}
	if int64(k) != n || crc32.Checksum(page, castagnoli) != lb.info.CRCs[p] {
		return fmt.Errorf("%w: page %d of %s", errPageMismatch, p, lb.f.Name())
	}
	if &page[0] != &dst[0] {
		copy(dst, page[off-p*ps:])
	}
	lb.mu.Lock()
	lb.verified[p] = true
	lb.mu.Unlock()
	return nil
}

// pageBufs holds buffers for checking pages.
var pageBufs sync.Pool

func pageBuf(n int64) *[]byte {
	if b, ok := pageBufs.Get().(*[]byte); ok && int64(cap(*b)) >= n {
		return b
	}
	b := make([]byte, n)
	return &b
}

// localBlocks keeps a bounded set of open block files, and the blocks
// whose worker just refused to hand out their file.
type localBlocks struct {
	mu      sync.Mutex
	max     int
	files   map[string]*localBlock
	refused map[string]time.Time // until when not to ask again
}

// refusedFor is how long a block whose file the worker refused is read
// through the worker without asking again: a large block being fetched
// whole is refused until it is complete, and its reader's every window
// would otherwise cost a round trip more.
const refusedFor = 250 * time.Millisecond

func newLocalBlocks(n int) *localBlocks {
	return &localBlocks{max: n, files: map[string]*localBlock{}, refused: map[string]time.Time{}}
}

// refuse notes that key's file was refused now.
func (l *localBlocks) refuse(key string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.refused) >= l.max {
		now := time.Now()
		for k, until := range l.refused {
			if now.After(until) {
				delete(l.refused, k)
			}
		}
		if len(l.refused) >= l.max {
			clear(l.refused)
		}
	}
	l.refused[key] = time.Now().Add(refusedFor)
}

// wasRefused reports whether key's file was refused less than refusedFor
// ago.
func (l *localBlocks) wasRefused(key string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	until, ok := l.refused[key]
	if ok && time.Now().After(until) {
		delete(l.refused, key)
		return false
	}
	return ok
}

// get returns key's block file with a reference, or nil when there is none
// or its life is over.
func (l *localBlocks) get(key string) *localBlock {
	l.mu.Lock()
	defer l.mu.Unlock()
	lb := l.files[key]
	if lb == nil {
		return nil
	}
	if time.Now().After(lb.expires) {
		l.removeLocked(key, lb)
		return nil
	}
	lb.refs++
	return lb
}

// put adds lb as key's block file, unless another reader added one first,
// and returns the one kept, with a reference.
func (l *localBlocks) put(key string, lb *localBlock) *localBlock {
	l.mu.Lock()
	defer l.mu.Unlock()
	if old := l.files[key]; old != nil {
		lb.f.Close()
		old.refs++
		return old
	}
	if len(l.files) >= l.max {
		for k, v := range l.files { // drop any one: map order is random enough
			l.removeLocked(k, v)
			break
		}
	}
	lb.refs = 1
	l.files[key] = lb
	return lb
}

// release gives back a reference taken by get or put.
func (l *localBlocks) release(lb *localBlock) {
	l.mu.Lock()
	defer l.mu.Unlock()
	lb.refs--
	if lb.dropped && lb.refs == 0 {
		lb.f.Close()
	}
}

// drop takes lb out of the set if it is still key's block file.
func (l *localBlocks) drop(key string, lb *localBlock) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.files[key] == lb {
		l.removeLocked(key, lb)
	}
}

// removeLocked takes lb out of the set; its file is closed now, or by the
// last reader still using it.
func (l *localBlocks) removeLocked(key string, lb *localBlock) {
	delete(l.files, key)
	lb.dropped = true
	if lb.refs == 0 {
		lb.f.Close()
	}
}

func (l *localBlocks) closeAll() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for k, lb := range l.files {
		l.removeLocked(k, lb)
	}
}
