package csi

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// csi-sanity, the CSI conformance suite, against the plugin for what it
// claims: the Identity and Node services of read-only volumes, without a
// controller service (volumes are made by the operator). The one Node case
// it would run that needs a controller's CreateVolume is left out.
func TestCSISanity(t *testing.T) {
	bin := os.Getenv("GRANARY_CSI_SANITY")
	if bin == "" {
		if p, err := exec.LookPath("csi-sanity"); err == nil {
			bin = p
		}
	}
	if bin == "" {
		if os.Getenv("GRANARY_REQUIRE_SERVERS") != "" {
			t.Fatal("csi-sanity not found: set GRANARY_CSI_SANITY (test/lib.sh builds it)")
		}
		t.Skip("csi-sanity not found (GRANARY_CSI_SANITY)")
	}
	f := newFixture(t)
	f.plugin(t)
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin,
		"--csi.endpoint="+f.socket,
		"--csi.mountdir="+filepath.Join(dir, "mount"),
		"--csi.stagingdir="+filepath.Join(dir, "staging"),
		"--ginkgo.focus=Identity Service|Node Service",
		"--ginkgo.skip=should remove target path",
		"--ginkgo.no-color")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("csi-sanity: %v\n%s", err, out)
	}
	m := regexp.MustCompile(`Ran (\d+) of (\d+) Specs`).FindStringSubmatch(string(out))
	if m == nil || m[1] == "0" {
		t.Fatalf("csi-sanity ran nothing:\n%s", out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, "Passed") || strings.Contains(line, "Ran ") {
			t.Log(strings.TrimSpace(line))
		}
	}
}
