package client

import (
	"context"
	"net"
	"net/http"
	"os"
	"sync"
	"time"
)

// A worker is on this client's host when membership says its host is the
// client's (worker.host, client.host) and its unix socket is there; the
// client then reads its block files directly (short-circuit). Membership
// changes (etcd), so this is decided per worker when needed and kept,
// with a socket that is not there looked for again a little later.

// socketRecheck is how long a worker whose socket was not found is taken
// to be elsewhere.
const socketRecheck = 10 * time.Second

type localSockets struct {
	mu     sync.Mutex
	byPath map[string]*localSocket
}

type localSocket struct {
	path    string
	hc      *http.Client // nil: not there
	checked time.Time
}

// unixClient returns the unix socket of worker id (its path and an HTTP
// client on it), if that worker runs on this host and short-circuit is
// allowed.
func (c *Client) unixClient(id string) (*localSocket, bool) {
	if !c.cfg.Client.ShortCircuitOn() {
		return nil, false
	}
	m, ok := c.members.Current().Member(id)
	if !ok || m.Socket == "" || (m.Host != "" && c.host != "" && m.Host != c.host) {
		return nil, false
	}
	s := &c.sockets
	s.mu.Lock()
	defer s.mu.Unlock()
	if ls, ok := s.byPath[m.Socket]; ok && (ls.hc != nil || time.Since(ls.checked) < socketRecheck) {
		return ls, ls.hc != nil
	}
	if s.byPath == nil {
		s.byPath = map[string]*localSocket{}
	}
	ls := &localSocket{path: m.Socket, checked: time.Now()}
	s.byPath[m.Socket] = ls
	if st, err := os.Stat(m.Socket); err != nil || st.Mode()&os.ModeSocket == 0 {
		return nil, false // not on this host, or not running
	}
	sock := m.Socket
	ls.hc = &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{Timeout: 2 * time.Second}).DialContext(ctx, "unix", sock)
		},
		MaxIdleConnsPerHost: 64,
	}}
	return ls, true
}

// isLocal reports whether worker id runs on this host.
func (c *Client) isLocal(id string) bool {
	_, ok := c.unixClient(id)
	return ok
}

func (s *localSockets) closeAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, ls := range s.byPath {
		if ls.hc != nil {
			ls.hc.CloseIdleConnections()
		}
	}
}
