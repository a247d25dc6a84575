// Package version reports what granary binary this is. Version and Commit are
// set at link time (-ldflags "-X ..."); without that, the VCS information the
// Go toolchain stamps into the binary is used.
package version

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// Set by the linker: -X github.com/granary-cache/granary/internal/version.Version=v0.1.0
var (
	Version = "dev"
	Commit  = ""
)

// Info describes the running binary.
type Info struct {
	Version   string `json:"version"`
	Commit    string `json:"commit"`
	GoVersion string `json:"go_version"`
	Platform  string `json:"platform"`
	CephFS    bool   `json:"cephfs"`
}

// Get returns the version information of this binary.
func Get() Info {
	i := Info{Version: Version, Commit: Commit, GoVersion: runtime.Version(),
		Platform: runtime.GOOS + "/" + runtime.GOARCH, CephFS: cephfs}
	if i.Commit == "" {
		i.Commit = "unknown"
		if bi, ok := debug.ReadBuildInfo(); ok {
			for _, s := range bi.Settings {
				if s.Key == "vcs.revision" {
					i.Commit = s.Value
				}
			}
		}
	}
	return i
}

func (i Info) String() string {
	features := "pure Go"
	if i.CephFS {
		features = "cephfs"
	}
	return fmt.Sprintf("granary %s (commit %s, %s, %s, %s)", i.Version, i.Commit, i.GoVersion, i.Platform, features)
}
