package bench_test

import (
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// goList runs go list with env added and returns the lines it printed.
func goList(t *testing.T, env []string, args ...string) []string {
	t.Helper()
	cmd := exec.Command("go", append([]string{"list"}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.Output()
	if err != nil {
		msg := err.Error()
		if ee, ok := err.(*exec.ExitError); ok {
			msg += "\n" + string(ee.Stderr)
		}
		t.Fatalf("go list %s: %s", strings.Join(args, " "), msg)
	}
	return strings.Fields(string(out))
}

const module = "github.com/granary-cache/granary/"

// TestBinaryLinksNoPlotting: the worker, the mount, the operator and the CSI
// plugin are the one granary binary, and a Go binary runs the init of every
// package it links, whichever command it runs. The charts of `granary bench
// run --png` must not bring a plotting library into it: gonum.org/v1/plot
// parsed twelve Liberation fonts at init (230 kB of heap, 2.4 MB more RSS in
// an idle worker) and made the binary 7.3 MB bigger. Both release builds are
// checked, and that they do link the processes and the chart code (a wrong
// package pattern would list nothing and pass).
func TestBinaryLinksNoPlotting(t *testing.T) {
	forbidden := []string{
		"gonum.org/v1/plot", "codeberg.org/go-fonts/", "codeberg.org/go-latex/", "codeberg.org/go-pdf/",
		"github.com/ajstarks/svgo", "github.com/golang/freetype", "git.sr.ht/~sbinet/gg",
		"golang.org/x/image/font/gofont/gobold", "golang.org/x/image/font/gofont/goitalic", "golang.org/x/image/font/gofont/gomono",
		"golang.org/x/image/tiff", "golang.org/x/image/draw",
	}
	for _, build := range []struct {
		name string
		env  []string
		args []string
	}{
		{"static", []string{"CGO_ENABLED=0"}, nil},
		{"cephfs", []string{"CGO_ENABLED=1"}, []string{"-tags", "cephfs"}},
	} {
		t.Run(build.name, func(t *testing.T) {
			deps := goList(t, build.env, append(build.args, "-deps", module+"cmd/granary")...)
			for _, want := range []string{"internal/worker", "internal/mount", "internal/operator", "internal/csi", "internal/bench", "internal/bench/chart"} {
				if !slices.Contains(deps, module+want) {
					t.Errorf("the binary does not link %s: the list of its packages is wrong (%d packages)", want, len(deps))
				}
			}
			for _, d := range deps {
				for _, f := range forbidden {
					if strings.HasPrefix(d, f) {
						t.Errorf("the binary links %s: every granary process would pay for it", d)
					}
				}
			}
		})
	}
}

// TestChartDependencies: the chart code needs the standard library and
// these packages only, none of which works at init (chart's tests check
// that too). Another dependency is a choice to make here, for every process.
func TestChartDependencies(t *testing.T) {
	allowed := []string{
		"golang.org/x/image/font", "golang.org/x/image/font/gofont/goregular", "golang.org/x/image/font/opentype",
		"golang.org/x/image/font/sfnt", "golang.org/x/image/math/fixed", "golang.org/x/image/vector",
		"golang.org/x/text/encoding", "golang.org/x/text/encoding/charmap", "golang.org/x/text/encoding/internal",
		"golang.org/x/text/encoding/internal/identifier", "golang.org/x/text/transform",
	}
	deps := goList(t, nil, "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", module+"internal/bench/chart")
	if !slices.Contains(deps, "golang.org/x/image/vector") {
		t.Fatalf("go list gave no chart dependencies: %q", deps)
	}
	for _, d := range deps {
		if d != module+"internal/bench/chart" && !slices.Contains(allowed, d) {
			t.Errorf("internal/bench/chart depends on %s", d)
		}
	}
}
