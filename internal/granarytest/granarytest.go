// Package granarytest helps tests that run granary as processes: it builds
// the binary and finds free loopback addresses.
package granarytest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/granary-cache/granary/internal/testport"
)

// Build builds the pure-Go granary binary (CGO_ENABLED=0, as released) into
// dir and returns its path. It can run in TestMain, before any test.
func Build(dir string) (string, error) {
	bin := filepath.Join(dir, "granary")
	cmd := exec.Command("go", "build", "-o", bin, "github.com/granary-cache/granary/cmd/granary")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build granary: %v\n%s", err, out)
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
