package fluid

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/granary-cache/granary/internal/s3test"
)

// TestCacheRuntimeCommands runs the commands of granary's CacheRuntimeClass
// as Fluid would, on a runtime.json, against real workers: mount-ufs lists
// the mounts, load warms them, report-summary shows what is cached.
func TestCacheRuntimeCommands(t *testing.T) {
	srv := s3test.Start(t)
	const bucket = "fluid-cache"
	ctx := context.Background()
	if err := srv.CreateBucket(ctx, bucket); err != nil {
		t.Fatal(err)
	}
	var size int64
	for ds, files := range data() {
		for name, b := range files {
			if err := srv.Put(ctx, bucket, ds+"/"+name, b); err != nil {
				t.Fatal(err)
			}
			if ds == "imagenet" {
				size += int64(len(b))
			}
		}
	}
	workers, admins := startWorkers(t, srv, bucket, 2)

	dir := t.TempDir()
	opts := map[string]string{"endpoint": srv.Endpoint, "path_style": "true", "access_key": s3test.AccessKey, "secret_key": s3test.SecretKey}
	rc := map[string]any{
		"mounts": []any{
			map[string]any{"mountPoint": "s3://" + bucket + "/imagenet", "name": "imagenet", "options": opts},
			map[string]any{"mountPoint": "s3://" + bucket + "/coco", "name": "coco", "path": "/coco", "options": opts},
		},
		"targetPath": "/runtime-mnt/cache/ml/train/cache-fuse",
		"worker":     map[string]any{"enabled": true, "name": "train-worker", "replicas": 2, "options": map[string]string{"granary.membership.workers": workers}},
		"client":     map[string]any{"enabled": true, "options": map[string]string{"granary.dataset.metadata_sync": "never"}},
	}
	js, _ := json.Marshal(rc)
	rcPath := filepath.Join(dir, "runtime.json")
	if err := os.WriteFile(rcPath, js, 0o644); err != nil {
		t.Fatal(err)
	}
	run := func(env []string, args ...string) []byte {
		t.Helper()
		cmd := exec.Command(granary, append([]string{"fluid"}, args...)...)
		cmd.Env = append(append(os.Environ(), "FLUID_RUNTIME_CONFIG_PATH="+rcPath), env...)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("granary fluid %s: %v\n%s\n%s", strings.Join(args, " "), err, out, stderr.String())
		}
		return out
	}
	wd := []string{"--write-config", filepath.Join(dir, "granary.yaml")}

	var mounted struct {
		Mounted []string `json:"mounted"`
	}
	if err := json.Unmarshal(run(nil, append([]string{"mount-ufs"}, wd...)...), &mounted); err != nil {
		t.Fatal(err)
	}
	if strings.Join(mounted.Mounted, ",") != "/imagenet,/coco" {
		t.Errorf("mount-ufs: %v, want /imagenet, /coco", mounted.Mounted)
	}

	// A DataLoad of the whole imagenet mount, as Fluid's Job passes it.
	var loaded struct {
		State     string `json:"state"`
		BytesDone int64  `json:"bytesDone"`
		Datasets  []any  `json:"datasets"`
	}
	if err := json.Unmarshal(run([]string{"FLUID_DATALOAD_DATA_PATH=/imagenet", "FLUID_DATALOAD_PATH_REPLICAS=1"}, append([]string{"load"}, wd...)...), &loaded); err != nil {
		t.Fatal(err)
	}
	if loaded.State != "done" || loaded.BytesDone < size || len(loaded.Datasets) != 1 {
		t.Errorf("load: %+v, want done with %d bytes of one dataset", loaded, size)
	}
	if got := cachedBytes(t, admins, "imagenet"); got < size {
		t.Errorf("the workers cache %d bytes of imagenet after the load, want %d", got, size)
	}

	out := run(nil, append([]string{"report-summary"}, wd...)...)
	t.Logf("report-summary: %s", out)
	var summary map[string]string
	if err := json.Unmarshal(out, &summary); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	for _, k := range []string{"cached", "cachedPercentage", "cacheCapacity", "cacheHitRatio"} {
		if summary[k] == "" {
			t.Errorf("report-summary has no %s: %s", k, out)
		}
	}
	if c := summary["cached"]; c == "0.00B" || !strings.HasSuffix(c, "B") {
		t.Errorf("cached %q after a load, want more than nothing: %s", c, out)
	}
	// Two workers of a 64MiB memory tier each.
	if summary["cacheCapacity"] != "128.00MiB" {
		t.Errorf("cacheCapacity %q, want 128.00MiB", summary["cacheCapacity"])
	}
	if !strings.HasSuffix(summary["cachedPercentage"], "%") || !strings.HasSuffix(summary["cacheHitRatio"], "%") {
		t.Errorf("percentages: %s", out)
	}
}
