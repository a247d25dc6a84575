//go:build cephfs

package dataset

import (
	"github.com/granary-cache/granary/internal/ufs"
	"github.com/granary-cache/granary/internal/ufs/cephfs"
)

func openCephFS(u ufs.URI, opts map[string]string) (ufs.FS, error) {
	fsName := opts["fs_name"]
	if fsName == "" {
		fsName = u.Host
	}
	return cephfs.Open(u.Path, cephfs.Options{Conf: opts["conf"], Monitors: opts["monitors"], User: opts["user"],
		Keyring: opts["keyring"], Secret: opts["secret"], FSName: fsName})
}
