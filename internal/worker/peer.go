package worker

import (
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"syscall"

	"github.com/granary-cache/granary/internal/transport"
)

type peerKey struct{}

// peerUID is the uid of the process at the other end of a unix socket
// connection (SO_PEERCRED).
func peerUID(c net.Conn) (int, bool) {
	uc, ok := transport.Underlying(c).(*net.UnixConn)
	if !ok {
		return 0, false
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return 0, false
	}
	var cred *syscall.Ucred
	raw.Control(func(fd uintptr) {
		cred, err = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	})
	if err != nil || cred == nil {
		return 0, false
	}
	return int(cred.Uid), true
}

// peerContext records the uid of the process at the other end of a unix
// socket connection, for samePeer.
func peerContext(ctx context.Context, c net.Conn) context.Context {
	if uid, ok := peerUID(c); ok {
		return context.WithValue(ctx, peerKey{}, uid)
	}
	return ctx
}

// errNotPeer refuses a process of another user on the unix socket.
var errNotPeer = errors.New("only the worker's own user or root may use its socket")

// allowedPeer reports whether uid may use the unix socket: it hands out
// paths of block files, which only the worker's own user and root may
// read.
func allowedPeer(uid int, known bool) bool {
	return known && (uid == os.Getuid() || uid == 0)
}

// samePeer serves only processes of the worker's own user, or root.
func samePeer(next http.Handler) http.Handler {
	return http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		uid, ok := r.Context().Value(peerKey{}).(int)
		if !allowedPeer(uid, ok) {
			http.Error(rw, errNotPeer.Error(), http.StatusForbidden)
			return
		}
		next.ServeHTTP(rw, r)
	})
}

// admitPeer is samePeer for the block protocol on the unix socket.
func admitPeer(c net.Conn) error {
	if !allowedPeer(peerUID(c)) {
		return errNotPeer
	}
	return nil
}
