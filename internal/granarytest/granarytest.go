// Package granarytest helps tests that run granary as processes: it builds
// the binary and finds free loopback addresses.
package granarytest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/granary-cache/granary/internal/testport"
)

// Build builds the pure-Go granary binary (CGO_ENABLED=0, as released) into
// dir and returns its path. It can run in TestMain, before any test.
func Build(dir string) (string, error) { return BuildWith(dir, BuildOptions{}) }

// BuildOptions choose a build of granary other than the released one.
type BuildOptions struct {
	// Race builds with the race detector: a race in a granary process
	// makes it exit non-zero, which the test sees.
	Race bool
	// CephFS builds the native CephFS backend in (cgo, libcephfs).
	CephFS bool
}

// BuildWith builds granary into dir as o says and returns its path.
func BuildWith(dir string, o BuildOptions) (string, error) {
	bin := filepath.Join(dir, "granary")
	args := []string{"build", "-o", bin}
	cgo := "0"
	if o.Race {
		args, cgo = append(args, "-race"), "1"
	}
	if o.CephFS {
		args, cgo = append(args, "-tags", "cephfs"), "1"
	}
	cmd := exec.Command("go", append(args, "github.com/granary-cache/granary/cmd/granary")...)
	cmd.Env = append(os.Environ(), "CGO_ENABLED="+cgo)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build granary (%s): %v\n%s", strings.Join(cmd.Args, " "), err, out)
	}
	return bin, nil
}

// FreeAddr returns a loopback address whose port was free a moment ago.
func FreeAddr(t testing.TB) string {
	t.Helper()
	a, err := testport.Addr("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	return a
}
