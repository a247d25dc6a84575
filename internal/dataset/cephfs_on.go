//go:build cephfs

package dataset

import (
	"fmt"
	"time"

	"github.com/granary-cache/granary/internal/ufs"
	"github.com/granary-cache/granary/internal/ufs/cephfs"
)

func openCephFS(u ufs.URI, opts map[string]string) (ufs.FS, error) {
	// The file system is named by the URI's host (cephfs:///path for the
	// default one) or by fs_name or its older name mds_namespace.
	fsName := u.Host
	for _, k := range []string{"fs_name", "mds_namespace"} {
		v := opts[k]
		switch {
		case v == "":
		case fsName == "":
			fsName = v
		case v != fsName:
			return nil, fmt.Errorf("option %s is %q but the file system is already named %q (by the URI or fs_name)", k, v, fsName)
		}
	}
	o := cephfs.Options{Conf: opts["conf"], Monitors: opts["monitors"], User: opts["user"],
		Keyring: opts["keyring"], Secret: opts["secret"], FSName: fsName}
	// Both were checked when the config was read.
	o.OpTimeout, _ = time.ParseDuration(opts["op_timeout"])
	o.IdleUnmount, _ = time.ParseDuration(opts["idle_unmount"])
	return cephfs.Open(u.Path, o)
}
