//go:build cephfs

package version

const cephfs = true
