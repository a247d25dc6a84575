package worker

import (
	"context"
	"net"
	"net/http"
	"os"
	"syscall"
)

type peerKey struct{}

// peerContext records the uid of the process at the other end of a unix
// socket connection (SO_PEERCRED), for samePeer.
func peerContext(ctx context.Context, c net.Conn) context.Context {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return ctx
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return ctx
	}
	var cred *syscall.Ucred
	raw.Control(func(fd uintptr) {
		cred, err = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	})
	if err != nil || cred == nil {
		return ctx
	}
	return context.WithValue(ctx, peerKey{}, int(cred.Uid))
}

// samePeer serves only processes of the worker's own user, or root: the
// unix socket hands out paths of block files, which only they may read.
func samePeer(next http.Handler) http.Handler {
	self := os.Getuid()
	return http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		uid, ok := r.Context().Value(peerKey{}).(int)
		if !ok || (uid != self && uid != 0) {
			http.Error(rw, "only the worker's own user or root may use its socket", http.StatusForbidden)
			return
		}
		next.ServeHTTP(rw, r)
	})
}
