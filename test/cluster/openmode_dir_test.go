package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestMountOpenModePerDirectory: with open_mode auto, a top-level directory
// whose files differ from the rest of its dataset gets a FUSE connection of
// its own in the other mode, mounted at it: inside the namespace's
// connection (thumbnails among shards) and inside a dataset's own
// connection (checkpoints among images). Every file reads right, the
// status says which mode each got and why, and stopping the mount takes
// every connection down, the innermost first.
func TestMountOpenModePerDirectory(t *testing.T) {
	needFUSE(t)
	imgs, shards := t.TempDir(), t.TempDir()
	files := map[string][]byte{}
	put := func(root, ds, name string, size, seed int) {
		data := bytes.Repeat([]byte{byte(seed)}, size)
		files[ds+"/"+name] = data
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 30 {
		put(imgs, "imgs", fmt.Sprintf("train/img%02d.jpg", i), 20<<10+i, i)
	}
	for i := range 3 { // large, and each one block of the test layout
		put(imgs, "imgs", fmt.Sprintf("ckpt/step%d.pt", i), 600<<10+i, 100+i)
	}
	for i := range 12 {
		put(shards, "shards", fmt.Sprintf("shard%02d.tar", i), 300<<10+i, 50+i)
	}
	for i := range 5 {
		put(shards, "shards", fmt.Sprintf("thumbs/t%d.png", i), 10<<10+i, 200+i)
	}
	c := startCluster(t, clusterOpts{workers: 2, datasets: fmt.Sprintf(
		"  - {name: imgs, ufs: \"file://%s\"}\n  - {name: shards, ufs: \"file://%s\"}\n", imgs, shards)})
	m := c.mount(t)
	want := map[string]string{ // connections of their own
		filepath.Join(m.dir, "imgs"):          "imgs",
		filepath.Join(m.dir, "imgs", "ckpt"):  "imgs/ckpt",
		filepath.Join(m.dir, "shards/thumbs"): "shards/thumbs",
	}
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		mps := granaryMountPoints(t)
		missing := 0
		for mp := range want {
			if !slices.Contains(mps, mp) {
				missing++
			}
		}
		if missing == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of the connections of their own are missing; granary mounts: %v\n%s", missing, mps, m.log)
		}
	}

	resp, err := http.Get("http://" + m.admin + "/v1/status")
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		OpenModes map[string]struct{ Mode, Reason string } `json:"open_modes"`
	}
	err = json.NewDecoder(resp.Body).Decode(&st)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("open modes: %+v", st.OpenModes)
	for key, mode := range map[string]string{"imgs": "zero-message", "imgs/ckpt": "passthrough", "shards": "passthrough", "shards/thumbs": "zero-message"} {
		got := st.OpenModes[key]
		if got.Mode != mode || !strings.HasPrefix(got.Reason, "auto: ") {
			t.Errorf("%s: %+v; want %s, chosen by auto", key, got, mode)
		}
		if dir, ok := strings.CutPrefix(key, strings.Split(key, "/")[0]+"/"); ok && !strings.Contains(got.Reason, "directory "+dir+" differs") {
			t.Errorf("%s: the reason does not say why the directory differs: %q", key, got.Reason)
		}
	}
	if len(st.OpenModes) != 4 {
		t.Errorf("%d open modes; want the two datasets and two directories", len(st.OpenModes))
	}

	before := m.stats(t).Mount
	for name, data := range files {
		got, err := os.ReadFile(filepath.Join(m.dir, name))
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("read %s: %d bytes, %v", name, len(got), err)
		}
	}
	// The namespace's connection opened the shards alone, by passthrough
	// where the kernel has it: the thumbnails and the images went to their
	// zero-message connections, the checkpoints to theirs.
	after := m.stats(t).Mount
	if opens := after.Opens - before.Opens; opens != 12 {
		t.Errorf("the namespace's connection saw %d opens; want 12 (the shards)", opens)
	}
	if after.PassthroughSupported && after.PassthroughOpens-before.PassthroughOpens != 12 {
		t.Errorf("%d passthrough opens of the shards; want 12", after.PassthroughOpens-before.PassthroughOpens)
	}
	if entries, err := os.ReadDir(filepath.Join(m.dir, "imgs")); err != nil || len(entries) != 2 {
		t.Errorf("imgs: %v, %v; want train and ckpt", entries, err)
	}

	m.stop()
	if strings.Contains(m.log.String(), "failed") {
		t.Errorf("the mount's log tells of a failure:\n%s", m.log)
	}
	noMountsBelow(t, m.dir, "after the mount stopped")
}

// TestMountSubdir: `granary mount --dataset NAME --subdir DIR` shows one
// directory of a dataset at the mount's root; a --subdir that is missing,
// not a directory, outside the dataset or without a dataset is refused
// before anything is mounted, with an error that names it.
func TestMountSubdir(t *testing.T) {
	needFUSE(t)
	dir := t.TempDir()
	for _, p := range []string{"train/a/x.bin", "train/y.bin", "val/z.bin"} {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(dir, p)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, p), []byte("data of "+p), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	c := startCluster(t, clusterOpts{workers: 1, datasets: fmt.Sprintf("  - {name: d, ufs: \"file://%s\"}\n", dir)})
	m := c.mount(t, "--dataset", "d", "--subdir", "train/")
	entries, err := os.ReadDir(m.dir)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if err != nil || !slices.Equal(names, []string{"a", "y.bin"}) {
		t.Errorf("the mount's root: %v, %v; want the entries of train", names, err)
	}
	for p, want := range map[string]string{"a/x.bin": "data of train/a/x.bin", "y.bin": "data of train/y.bin"} {
		if got, err := os.ReadFile(filepath.Join(m.dir, p)); err != nil || string(got) != want {
			t.Errorf("read %s: %q, %v", p, got, err)
		}
	}
	if _, err := os.Stat(filepath.Join(m.dir, "val")); !os.IsNotExist(err) {
		t.Errorf("val, outside the directory mounted, is seen: %v", err)
	}
	m.stop()

	cfg := c.clientConfig(t)
	for _, bad := range []struct {
		args []string
		want string
	}{
		{[]string{"--dataset", "d", "--subdir", "test"}, "--subdir test: dataset d has no such directory"},
		{[]string{"--dataset", "d", "--subdir", "train/y.bin"}, "--subdir train/y.bin: not a directory of dataset d"},
		{[]string{"--dataset", "d", "--subdir", "train/../../etc"}, "escapes the dataset root"},
		{[]string{"--subdir", "train"}, "name it with --dataset NAME"},
	} {
		mp := t.TempDir()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		out, err := exec.CommandContext(ctx, granary, append(append([]string{"mount", "--config", cfg}, bad.args...), mp)...).CombinedOutput()
		cancel()
		if err == nil || !strings.Contains(string(out), bad.want) {
			t.Errorf("granary mount %v: %v\n%s\nwant an error with %q", bad.args, err, out, bad.want)
		}
		if slices.Contains(granaryMountPoints(t), mp) {
			t.Errorf("granary mount %v left %s mounted", bad.args, mp)
			syscall.Unmount(mp, syscall.MNT_DETACH)
		}
	}
}
