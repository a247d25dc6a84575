//go:build !cephfs

package dataset

import (
	"errors"

	"github.com/granary-cache/granary/internal/ufs"
)

func openCephFS(ufs.URI, map[string]string) (ufs.FS, error) {
	return nil, errors.New("this granary binary was built without CephFS support: " +
		"use the granary-cephfs build (go build -tags cephfs, needs libcephfs-dev), " +
		"or mount CephFS with ceph-fuse or the kernel client and point a file:// dataset at the mount")
}
