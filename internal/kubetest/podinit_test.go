package kubetest

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestPodInit runs the runtime side of RunPod alone, without a cluster: a
// static program in an overlay root, with a read-only volume, as an
// unprivileged container.
func TestPodInit(t *testing.T) {
	if os.Geteuid() != 0 {
		if Required() {
			t.Fatal("needs root")
		}
		t.Skip("needs root")
	}
	rootfs := buildRootfs(t)
	dir := t.TempDir()
	vol := filepath.Join(dir, "vol")
	if err := os.MkdirAll(vol, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(vol, "f"), []byte("data"), 0o640); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"upper", "work", "root"} {
		os.MkdirAll(filepath.Join(dir, d), 0o755)
	}
	caps, err := containerCaps(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	spec := &initSpec{
		Lower: rootfs, Upper: filepath.Join(dir, "upper"), Work: filepath.Join(dir, "work"), Root: filepath.Join(dir, "root"),
		Mounts:   []mountSpec{{Source: vol, Target: "/vol", ReadOnly: true, Propagation: "private"}},
		Hostname: "pi-test", ShmSize: 1 << 20, Dir: "/w",
		Argv: []string{"podcheck", "-ls", "/vol", "-write-fails", "/vol/x", "-mount-fails", "/tmp/m", "-write", "/etc/new=1"},
		Env:  []string{"PATH=/usr/bin", "X=1"},
		Caps: caps, TmpfsTmp: true,
	}
	p, lf, err := spawnInit(spec, dir, filepath.Join(dir, "log"))
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	select {
	case <-p.Done():
	case <-time.After(30 * time.Second):
		p.Kill()
		t.Fatalf("did not exit: %s", p.Log())
	}
	if err := p.Stop(); err != nil {
		t.Errorf("exit: %v\n%s", err, p.Log())
	}
	var r report
	for _, line := range strings.Split(p.Log(), "\n") {
		if js, ok := strings.CutPrefix(line, "REPORT "); ok {
			if err := json.Unmarshal([]byte(js), &r); err != nil {
				t.Fatal(err)
			}
		}
	}
	if os.Getenv("KUBETEST_DEBUG") != "" {
		t.Log(p.Log())
	}
	var bnd uint64
	for _, c := range caps {
		bnd |= 1 << c
	}
	if r.Hostname != "pi-test" || r.PID != 1 || r.Cwd != "/w" || r.Env["X"] != "1" || len(r.Env) != 2 {
		t.Errorf("hostname %q pid %d cwd %q env %v", r.Hostname, r.PID, r.Cwd, r.Env)
	}
	if f := r.Files["/vol/f"]; f.Content != "data" || f.Mode != "640" {
		t.Errorf("/vol/f: %+v", f)
	}
	if r.CapBnd != fmt.Sprintf("%016x", bnd) {
		t.Errorf("CapBnd %s, want %016x", r.CapBnd, bnd)
	}
	if len(r.Errors) != 0 {
		t.Errorf("errors: %q\n%s", r.Errors, p.Log())
	}
	// Writes went to the container's layer, not the image.
	if _, err := os.Stat(filepath.Join(rootfs, "etc/new")); err == nil {
		t.Error("the container wrote into the image")
	}
	if b, err := os.ReadFile(filepath.Join(dir, "upper/etc/new")); err != nil || string(b) != "1" {
		t.Errorf("container layer: %q, %v", b, err)
	}
	// Nothing of the container's mounts is left on this machine.
	b, _ := os.ReadFile("/proc/self/mountinfo")
	for _, m := range parseMountinfo(string(b)) {
		if strings.HasPrefix(m.Point, dir) {
			t.Errorf("mount left behind: %s", m.Point)
		}
	}
}
