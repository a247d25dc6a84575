package fluid

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/granary-cache/granary/internal/client"
	"github.com/granary-cache/granary/internal/load"
	"github.com/granary-cache/granary/internal/wire"
)

func jsonOf(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// A CacheRuntime's runtime.json: no runtimeOptions, granary's options on
// the components, encryptOptions as an object of files.
const runtimeJSON = `{
  "mounts": [
    {"mountPoint": "s3://training/imagenet", "name": "imagenet", "options": {"region": "us-east-1"},
     "encryptOptions": {"access_key": "SECRETS/s3/ak", "secret_key": "SECRETS/s3/sk"}},
    {"mountPoint": "s3://training/coco", "name": "coco", "path": "/coco2017"}
  ],
  "accessModes": ["ReadOnlyMany"],
  "targetPath": "/runtime-mnt/cache/ml/train/cache-fuse",
  "worker": {"enabled": true, "name": "train-worker", "replicas": 2,
             "options": {"granary.membership.workers": "w1=10.0.0.1:7700", "other": "x"}},
  "client": {"enabled": true, "name": "train-client", "options": {"granary.dataset.metadata_sync": "never"}}
}`

func TestRuntimeJSON(t *testing.T) {
	dir := secrets(t)
	tr, err := translate(t, runtimeJSON, dir)
	if err != nil {
		t.Fatal(err)
	}
	cfg := string(tr.Config)
	for _, want := range []string{"w1", "10.0.0.1:7700", "metadata_sync: never", "access_key_file: " + dir + "/s3/ak", "secret_key_file: " + dir + "/s3/sk"} {
		if !strings.Contains(cfg, want) {
			t.Errorf("config lacks %q:\n%s", want, cfg)
		}
	}
	if strings.Contains(cfg, "AKIA") {
		t.Errorf("a key in the config:\n%s", cfg)
	}
	if !reflect.DeepEqual(tr.Datasets, []string{"imagenet", "coco2017"}) {
		t.Errorf("datasets %v", tr.Datasets)
	}
}

func TestThinConfigEncryptOptionsList(t *testing.T) {
	// Anything but an object of strings is ignored, not an error.
	c, err := ParseThinConfig("c.json", []byte(`{"mounts":[{"mountPoint":"s3://b","encryptOptions":[{"name":"x"}]}],"targetPath":"/t"}`))
	if err != nil || len(c.Mounts[0].Options) != 0 {
		t.Fatalf("%v %+v", err, c)
	}
}

func TestMounted(t *testing.T) {
	mounts := []Mount{{Name: "imagenet"}, {Name: "coco", Path: "/coco2017"}, {Name: "laion"}}
	ds := []string{"imagenet", "coco2017", "laion"}
	got := jsonOf(t, Mounted(mounts, ds, func(d string) bool { return d != "laion" }))
	if want := `{"mounted":["/imagenet","/coco2017"]}`; got != want {
		t.Errorf("got %s, want %s", got, want)
	}
	if got := jsonOf(t, Mounted(mounts, ds, func(string) bool { return false })); got != `{"mounted":[]}` {
		t.Errorf("none served: %s", got)
	}
	// A granary configuration given outright: /DATASET.
	if got := jsonOf(t, Mounted(nil, []string{"a", "b"}, func(string) bool { return true })); got != `{"mounted":["/a","/b"]}` {
		t.Errorf("--config: %s", got)
	}
}

func TestBytes(t *testing.T) {
	for n, want := range map[int64]string{0: "0.00B", 1023: "1023.00B", 1536: "1.50KiB", 4 << 30: "4.00GiB", 3<<40 + 1<<39: "3.50TiB"} {
		if got := Bytes(n); got != want {
			t.Errorf("Bytes(%d) = %s, want %s", n, got, want)
		}
	}
}

func status() client.ClusterStatus {
	worker := func(id string, capacity, hits, misses int64) client.WorkerStatus {
		return client.WorkerStatus{ID: id, Status: &wire.Status{
			Tiers: []wire.TierStatus{{Name: "MEM", Capacity: capacity}, {Name: "SSD", Capacity: 3 * capacity}},
			Hits:  hits, Misses: misses,
		}}
	}
	return client.ClusterStatus{
		Members: []client.WorkerStatus{worker("w1", 1<<30, 30, 10), worker("w2", 1<<30, 45, 15), {ID: "w3", Error: "connection refused"}},
		Datasets: []client.DatasetStatus{
			{Name: "imagenet", Replicas: 1, CachedBytes: 3 << 29, Usage: &wire.UFSUsage{Files: 1000, Bytes: 4 << 30, Complete: true}},
			{Name: "coco", Replicas: 2, CachedBytes: 1 << 30, Usage: &wire.UFSUsage{Files: 10, Bytes: 1 << 30, Complete: true}},
			{Name: "laion", Replicas: 1, CachedBytes: 0, Usage: &wire.UFSUsage{Files: 5, Bytes: 100, Complete: false}},
		},
	}
}

func TestSummarize(t *testing.T) {
	st := status()
	got := jsonOf(t, Summarize(st, []string{"imagenet", "coco"}))
	// cached 1.5GiB+1GiB; size 4GiB + 1GiB×2; hits 75 of 100; capacity 2×(1+3)GiB.
	want := `{"cached":"2.50GiB","cachedPercentage":"41.7%","cacheCapacity":"8.00GiB","cacheHitRatio":"75.0%","fileNum":"1010","ufsTotal":"5.00GiB"}`
	if got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
	// A dataset still being measured: no percentage, files or total yet.
	got = jsonOf(t, Summarize(st, nil))
	want = `{"cached":"2.50GiB","cachedPercentage":"0.0%","cacheCapacity":"8.00GiB","cacheHitRatio":"75.0%"}`
	if got != want {
		t.Errorf("all datasets:\ngot  %s\nwant %s", got, want)
	}
	// Nobody answered.
	got = jsonOf(t, Summarize(client.ClusterStatus{}, nil))
	want = `{"cached":"0.00B","cachedPercentage":"0.0%","cacheCapacity":"0.00B","cacheHitRatio":"0.0%"}`
	if got != want {
		t.Errorf("empty:\ngot  %s\nwant %s", got, want)
	}
}

func TestLoadTargets(t *testing.T) {
	mounts := []Mount{{Name: "imagenet"}, {Name: "coco", Path: "/coco2017"}}
	ds := []string{"imagenet", "coco2017"}
	order, targets, err := LoadTargets([]string{"/coco2017/train", "/imagenet", "/coco2017/val/*.jpg", "/coco2017"}, mounts, ds)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(order, []string{"coco2017", "imagenet"}) {
		t.Errorf("order %v", order)
	}
	want := map[string][]string{"coco2017": {"/coco2017/train", "/coco2017/val/*.jpg", "/coco2017"}, "imagenet": {"/imagenet"}}
	if !reflect.DeepEqual(targets, want) {
		t.Errorf("targets %v, want %v", targets, want)
	}
	// A mount at the root of a one-mount Dataset holds every path.
	_, targets, err = LoadTargets([]string{"/train/a"}, []Mount{{Name: "data", Path: "/"}}, []string{"data"})
	if err != nil || !reflect.DeepEqual(targets, map[string][]string{"data": {"/data/train/a"}}) {
		t.Errorf("root mount: %v %v", targets, err)
	}
	// A path of no mount.
	if _, _, err := LoadTargets([]string{"/laion/x"}, mounts, ds); err == nil || !strings.Contains(err.Error(), "/laion/x") {
		t.Errorf("no mount: %v", err)
	}
	// granary paths with --config.
	_, targets, err = LoadTargets([]string{"/a/b/c", "/a", "/b/"}, nil, nil)
	if err != nil || !reflect.DeepEqual(targets, map[string][]string{"a": {"/a/b/c", "/a"}, "b": {"/b"}}) {
		t.Errorf("granary paths: %v %v", targets, err)
	}
}

func TestSummarizeLoads(t *testing.T) {
	res := []load.Result{
		{ID: "l1", Dataset: "imagenet", Progress: wire.LoadProgress{Files: 3, Bytes: 300, FilesDone: 3, BytesDone: 300, BytesSkipped: 100, State: wire.LoadDone}, Elapsed: 1.5},
		{ID: "l2", Dataset: "coco", Progress: wire.LoadProgress{Files: 2, Bytes: 20, FilesDone: 1, BytesDone: 10, Failed: 1, State: wire.LoadFailed}, Elapsed: 0.5},
	}
	out := SummarizeLoads(res, errors.New("coco: some blocks were not loaded"))
	var m map[string]any
	if err := json.Unmarshal([]byte(jsonOf(t, out)), &m); err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]any{"state": "failed", "files": 5.0, "bytes": 320.0, "filesDone": 4.0, "bytesDone": 310.0,
		"bytesSkipped": 100.0, "failedBlocks": 1.0, "elapsedSeconds": 2.0, "error": "coco: some blocks were not loaded"} {
		if m[k] != want {
			t.Errorf("%s = %v, want %v", k, m[k], want)
		}
	}
	if len(m["datasets"].([]any)) != 2 {
		t.Errorf("datasets %v", m["datasets"])
	}
	if got := jsonOf(t, SummarizeLoads(nil, nil)); !strings.HasPrefix(got, `{"state":"done","files":0`) || !strings.HasSuffix(got, `"datasets":[]}`) {
		t.Errorf("nothing to load: %s", got)
	}
}
