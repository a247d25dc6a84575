package fluid

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/granary-cache/granary/internal/kubetest"
)

// fluidCRDs are Fluid 1.1's CRDs, beside the project (../shared/fluid): a
// fixture, never copied into it.
const fluidCRDs = "../../../shared/fluid/crds"

// TestManifests applies Fluid's CRDs to a real API server and then every
// manifest of examples/fluid with a server-side dry run (strict field
// validation), so that a field Fluid's schema does not have fails here.
func TestManifests(t *testing.T) {
	crds, _ := filepath.Glob(filepath.Join(fluidCRDs, "*.yaml"))
	if len(crds) == 0 {
		skipOrFail(t, "no Fluid CRDs in %s (../shared/fluid/crds beside the project)", fluidCRDs)
	}
	manifests, _ := filepath.Glob("../../examples/fluid/*.yaml")
	if len(manifests) == 0 {
		t.Fatal("no manifests in examples/fluid")
	}
	c := kubetest.Start(t, kubetest.Options{CRDDirs: []string{fluidCRDs}})
	if _, err := c.Kubectl(t, "create", "namespace", "ml"); err != nil {
		t.Fatal(err)
	}
	for _, f := range manifests {
		t.Run(filepath.Base(f), func(t *testing.T) {
			out, err := c.Kubectl(t, "apply", "--dry-run=server", "--validate=strict", "-f", f)
			if err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			data, _ := os.ReadFile(f)
			// Every object of the file was accepted.
			if want := strings.Count(string(data), "\nkind: "); strings.Count(out, "(server dry run)") < want {
				t.Errorf("%d objects in the file, accepted:\n%s", want, out)
			}
		})
	}
}
