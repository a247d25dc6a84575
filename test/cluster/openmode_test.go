package cluster

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/granary-cache/granary/internal/mountinfo"
)

// granaryMountPoints lists the granary file systems mounted on this host.
func granaryMountPoints(t *testing.T) []string {
	mounts, err := mountinfo.Read()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, m := range mounts {
		if m.FSType == "fuse.granary" {
			out = append(out, m.Point)
		}
	}
	return out
}

// TestMountOpenModes: one mount of two datasets, one of many small files
// (open_mode: zero-message), one of large files (passthrough). The first is
// served on a mount of its own at its directory, so that neither mode
// costs the other; `granary umount` takes both down.
func TestMountOpenModes(t *testing.T) {
	needFUSE(t)
	small, big := t.TempDir(), t.TempDir()
	files := map[string][]byte{}
	for i := range 20 {
		name := fmt.Sprintf("img%02d.jpg", i)
		files["imgs/"+name] = bytes.Repeat([]byte{byte(i)}, 100<<10+i)
		if err := os.WriteFile(filepath.Join(small, name), files["imgs/"+name], 0o644); err != nil {
			t.Fatal(err)
		}
	}
	shard := bytes.Repeat([]byte("shard"), 400<<10) // 2 MB: two blocks of the test layout
	files["big/shard.tar"] = shard
	if err := os.WriteFile(filepath.Join(big, "shard.tar"), shard, 0o644); err != nil {
		t.Fatal(err)
	}
	c := startCluster(t, clusterOpts{workers: 2, datasets: fmt.Sprintf(
		"  - {name: imgs, ufs: \"file://%s\", open_mode: zero-message}\n  - {name: big, ufs: \"file://%s\", open_mode: passthrough}\n", small, big)})
	m := c.mount(t)
	own := filepath.Join(m.dir, "imgs")
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		mps := granaryMountPoints(t)
		if strings.Contains(strings.Join(mps, "\n")+"\n", own+"\n") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no mount of its own for the zero-message dataset at %s; granary mounts: %v\n%s", own, mps, m.log)
		}
	}
	before := m.stats(t).Mount.Opens
	for name, want := range files {
		got, err := os.ReadFile(filepath.Join(m.dir, name))
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("read %s: %d bytes, %v", name, len(got), err)
		}
	}
	// Only the large file was opened through the namespace's mount: the
	// small ones went to their own mount, which answers no OPEN at all.
	if opens := m.stats(t).Mount.Opens - before; opens != 1 {
		t.Errorf("the namespace mount saw %d opens; want 1 (the shard)", opens)
	}
	if entries, err := os.ReadDir(m.dir); err != nil || len(entries) != 2 {
		t.Errorf("the mount's root: %v, %v; want the two datasets", entries, err)
	}

	if out, err := exec.Command(granary, "umount", m.dir).CombinedOutput(); err != nil {
		t.Fatalf("granary umount: %v\n%s", err, out)
	}
	select {
	case <-m.done:
	case <-time.After(20 * time.Second):
		t.Fatalf("granary mount still runs after granary umount:\n%s", m.log)
	}
	noMountsBelow(t, m.dir, "after granary umount")
}

// noMountsBelow fails the test for every granary mount at or below dir.
func noMountsBelow(t *testing.T, dir, when string) {
	t.Helper()
	for _, mp := range granaryMountPoints(t) {
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			t.Errorf("still mounted %s: %s", when, mp)
		}
	}
}

// TestMountOpenModeAuto: with open_mode unset (auto), a dataset of small
// files gets zero-message opens on a mount of its own and one of large
// files passthrough, and the mount's status says which and why.
func TestMountOpenModeAuto(t *testing.T) {
	needFUSE(t)
	small, big := t.TempDir(), t.TempDir()
	for i := range 30 {
		if err := os.WriteFile(filepath.Join(small, fmt.Sprintf("img%02d.jpg", i)), bytes.Repeat([]byte{byte(i)}, 90<<10+i), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 3 { // large, and each one block of the test layout
		if err := os.WriteFile(filepath.Join(big, fmt.Sprintf("shard%d.tar", i)), bytes.Repeat([]byte{byte(i)}, 900<<10), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	c := startCluster(t, clusterOpts{workers: 2, datasets: fmt.Sprintf(
		"  - {name: imgs, ufs: \"file://%s\"}\n  - {name: big, ufs: \"file://%s\"}\n", small, big)})
	m := c.mount(t)
	own := filepath.Join(m.dir, "imgs")
	for deadline := time.Now().Add(20 * time.Second); !slices.Contains(granaryMountPoints(t), own); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("auto gave the small files no zero-message mount of their own at %s:\n%s", own, m.log)
		}
	}
	resp, err := http.Get("http://" + m.admin + "/v1/status")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st struct {
		OpenModes map[string]struct{ Mode, Reason string } `json:"open_modes"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	for ds, want := range map[string]string{"imgs": "zero-message", "big": "passthrough"} {
		got := st.OpenModes[ds]
		if got.Mode != want || !strings.HasPrefix(got.Reason, "auto: ") || !strings.Contains(got.Reason, "median size") {
			t.Errorf("%s: %+v; want %s, decided by auto from the median size", ds, got, want)
		}
	}
	t.Logf("open modes: %+v", st.OpenModes)
	// Both read right, the shards by passthrough where the kernel has it.
	before := m.stats(t)
	for i := range 3 {
		got, err := os.ReadFile(filepath.Join(m.dir, "big", fmt.Sprintf("shard%d.tar", i)))
		if err != nil || !bytes.Equal(got, bytes.Repeat([]byte{byte(i)}, 900<<10)) {
			t.Fatalf("shard %d: %d bytes, %v", i, len(got), err)
		}
	}
	if got, err := os.ReadFile(filepath.Join(own, "img07.jpg")); err != nil || !bytes.Equal(got, bytes.Repeat([]byte{7}, 90<<10+7)) {
		t.Fatalf("img07: %d bytes, %v", len(got), err)
	}
	if after := m.stats(t); before.Mount.PassthroughSupported && after.Mount.PassthroughOpens == before.Mount.PassthroughOpens {
		t.Errorf("the shards were not opened by passthrough")
	}
}

// TestMountIoctls: an ioctl on a file of the mount (isatty's, as Python's
// open() asks of every file) reaches the mount's server whatever the open
// mode, even with zero-message opens; it fails as on any file that is no
// terminal, and is counted.
func TestMountIoctls(t *testing.T) {
	needFUSE(t)
	dir := t.TempDir()
	for i := range 3 {
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("f%d", i)), bytes.Repeat([]byte{byte(i)}, 10<<10), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	c := startCluster(t, clusterOpts{workers: 1, datasets: fmt.Sprintf("  - {name: d, ufs: \"file://%s\", open_mode: zero-message}\n", dir)})
	m := c.mount(t)
	for i := range 3 {
		f, err := os.Open(filepath.Join(m.dir, "d", fmt.Sprintf("f%d", i)))
		if err != nil {
			t.Fatal(err)
		}
		_, err = unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
		f.Close()
		if !errors.Is(err, unix.ENOTTY) {
			t.Errorf("isatty of a file of the mount: %v; want ENOTTY", err)
		}
	}
	if got := m.stats(t).Mount.Ioctls; got != 3 {
		t.Errorf("the mount counted %d ioctls; want 3", got)
	}
	m.stop() // its output is all in the log once it has exited
	if !strings.Contains(m.log.String(), "buffering=0") {
		t.Errorf("the mount's log does not say what to do about them:\n%s", m.log)
	}
}
