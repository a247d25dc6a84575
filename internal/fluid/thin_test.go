package fluid

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/granary-cache/granary/internal/config"
)

// A config.json as Fluid writes it for a Dataset of two S3 mounts, one with
// encryptOptions (values are the files Fluid mounts the Secret at).
const twoMounts = `{
  "mounts": [
    {"mountPoint": "s3://training/imagenet", "name": "imagenet",
     "options": {"fs.s3a.endpoint": "http://minio:9000", "region": "eu-west-1", "path_style": "true",
                 "access_key": "SECRETS/s3/ak", "fs.s3a.secret.key": "SECRETS/s3/sk",
                 "metadata_sync": "10m"}},
    {"mountPoint": "s3a://training/coco", "name": "coco", "path": "/coco2017",
     "options": {"endpoint": "SECRETS/s3/endpoint"}}
  ],
  "targetPath": "/runtime-mnt/thin/default/train/thin-fuse",
  "runtimeOptions": {"granary.membership.cluster": "train-cache", "granary.membership.namespace": "ml",
                     "granary.auth.token_file": "SECRETS/token", "granary.dataset.replicas": "2",
                     "fluid.other": "ignored"},
  "persistentVolumeAttrs": {},
  "accessModes": ["ReadOnlyMany"]
}`

func secrets(t *testing.T) string {
	dir := t.TempDir()
	for name, v := range map[string]string{"s3/ak": "AKIA", "s3/sk": "SK\n", "s3/endpoint": "http://rgw:80\n", "token": "tok"} {
		p := filepath.Join(dir, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(v), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func translate(t *testing.T, js, dir string) (*Translation, error) {
	t.Helper()
	c, err := ParseThinConfig("config.json", []byte(strings.ReplaceAll(js, "SECRETS", dir)))
	if err != nil {
		t.Fatal(err)
	}
	return Translate(c, TranslateOptions{SecretsDir: dir})
}

func TestTranslateTwoMounts(t *testing.T) {
	dir := secrets(t)
	tr, err := translate(t, twoMounts, dir)
	if err != nil {
		t.Fatal(err)
	}
	if tr.TargetPath != "/runtime-mnt/thin/default/train/thin-fuse" || tr.Root != "" {
		t.Errorf("target %q root %q", tr.TargetPath, tr.Root)
	}
	if strings.Join(tr.Datasets, ",") != "imagenet,coco2017" {
		t.Errorf("datasets %v", tr.Datasets)
	}
	if strings.Contains(string(tr.Config), "AKIA") || strings.Contains(string(tr.Config), "SK") {
		t.Errorf("a secret is in the config:\n%s", tr.Config)
	}
	// granary's own loader accepts it, and resolves the secrets' files.
	cfg, err := config.Parse("out.yaml", tr.Config)
	if err != nil {
		t.Fatalf("%v\n%s", err, tr.Config)
	}
	in, _ := cfg.Dataset("imagenet")
	if in.UFS != "s3://training/imagenet" || in.Options["endpoint"] != "http://minio:9000" || in.Options["region"] != "eu-west-1" ||
		in.Options["path_style"] != "true" || in.Options["access_key"] != "AKIA" || in.Options["secret_key"] != "SK" {
		t.Errorf("imagenet: %+v", in)
	}
	if in.MetadataSync.Interval.String() != "10m0s" || in.Replicas != 2 {
		t.Errorf("imagenet settings: sync %v replicas %d", in.MetadataSync, in.Replicas)
	}
	coco, _ := cfg.Dataset("coco2017")
	if coco.UFS != "s3://training/coco" || coco.Options["endpoint"] != "http://rgw:80" {
		t.Errorf("coco: %+v", coco)
	}
	m := cfg.Membership
	if m.Type != config.MembershipKubernetes || m.Cluster != "train-cache" || m.Namespace != "ml" {
		t.Errorf("membership %+v", m)
	}
	if cfg.Auth.Token != "tok" {
		t.Errorf("auth %+v", cfg.Auth)
	}
}

func TestTranslateOneMountIsRoot(t *testing.T) {
	for _, js := range []string{
		`{"mounts":[{"mountPoint":"s3://bucket/a/b"}],"targetPath":"/mnt/x/"}`,
		`{"mounts":[{"mountPoint":"s3://bucket/a/b","name":"b","path":"/"}],"targetPath":"/mnt/x"}`,
	} {
		tr, err := translate(t, js, t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		if tr.Root != "b" || tr.TargetPath != "/mnt/x" {
			t.Errorf("%s: root %q target %q", js, tr.Root, tr.TargetPath)
		}
	}
	// A lone mount with a path of its own is a directory.
	tr, err := translate(t, `{"mounts":[{"mountPoint":"local:///data/set","name":"set","path":"/set"}],"targetPath":"/mnt/x"}`, t.TempDir())
	if err != nil || tr.Root != "" || !strings.Contains(string(tr.Config), "ufs: file:///data/set") {
		t.Errorf("err %v root %q\n%s", err, tr.Root, tr.Config)
	}
}

func TestTranslateStaticMembershipAndBase(t *testing.T) {
	dir := t.TempDir()
	base := filepath.Join(dir, "granary.yaml")
	os.WriteFile(base, []byte("datasets:\n  - name: set\n    ufs: file:///ignored\n    pin: true\n    options: {region: us-east-2}\n  - name: other\n    ufs: file:///x\nclient:\n  timeout: 7s\n"), 0o644)
	js := `{"mounts":[{"mountPoint":"s3://b","name":"set","options":{"endpoint":"http://e"}}],"targetPath":"/mnt",
	  "runtimeOptions":{"granary.config":"` + base + `","granary.membership.workers":"w1=127.0.0.1:7700, w2=127.0.0.1:7702"}}`
	tr, err := translate(t, js, dir)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Parse("out.yaml", tr.Config)
	if err != nil {
		t.Fatalf("%v\n%s", err, tr.Config)
	}
	if len(cfg.Datasets) != 1 {
		t.Fatalf("datasets %+v", cfg.Datasets)
	}
	ds := cfg.Datasets[0]
	if ds.UFS != "s3://b" || !ds.Pin || ds.Options["region"] != "us-east-2" || ds.Options["endpoint"] != "http://e" {
		t.Errorf("dataset %+v", ds)
	}
	if time.Duration(cfg.Client.Timeout) != 7*time.Second || len(cfg.Membership.Workers) != 2 || cfg.Membership.Workers[1].Addr != "127.0.0.1:7702" {
		t.Errorf("client %+v membership %+v", cfg.Client, cfg.Membership)
	}
}

func TestTranslateErrors(t *testing.T) {
	cases := []struct{ name, js, want string }{
		{"no mounts", `{"targetPath":"/mnt"}`, "mounts: missing"},
		{"no target", `{"mounts":[{"mountPoint":"s3://b"}]}`, "targetPath: missing"},
		{"relative target", `{"mounts":[{"mountPoint":"s3://b"}],"targetPath":"mnt"}`, "targetPath: \"mnt\" is not an absolute path"},
		{"dotdot target", `{"mounts":[{"mountPoint":"s3://b"}],"targetPath":"/mnt/../etc"}`, "targetPath: \"/mnt/../etc\" must not contain"},
		{"no mount point", `{"mounts":[{"name":"a"}],"targetPath":"/mnt"}`, "mounts[0].mountPoint: missing"},
		{"bad scheme", `{"mounts":[{"mountPoint":"pvc://claim"}],"targetPath":"/mnt"}`, "mounts[0].mountPoint: unknown scheme \"pvc\""},
		{"dotdot name", `{"mounts":[{"mountPoint":"s3://a","name":".."},{"mountPoint":"s3://b","name":"b"}],"targetPath":"/mnt"}`, "mounts[0].name: \"..\" must be a plain name"},
		{"slash name", `{"mounts":[{"mountPoint":"s3://a","name":"x/y"},{"mountPoint":"s3://b","name":"b"}],"targetPath":"/mnt"}`, "mounts[0].name"},
		{"dotdot path", `{"mounts":[{"mountPoint":"s3://a","path":"/../../etc"}],"targetPath":"/mnt"}`, "mounts[0].path: \"/../../etc\" must not contain"},
		{"nested path", `{"mounts":[{"mountPoint":"s3://a","path":"/x/y"}],"targetPath":"/mnt"}`, "mounts[0].path: \"/x/y\" is nested"},
		{"root of two", `{"mounts":[{"mountPoint":"s3://a","path":"/"},{"mountPoint":"s3://b","name":"b"}],"targetPath":"/mnt"}`, "mounts[0].path: \"/\" (the root) is only for a Dataset of one mount"},
		{"duplicate", `{"mounts":[{"mountPoint":"s3://a","name":"x"},{"mountPoint":"s3://b","name":"x"}],"targetPath":"/mnt"}`, "mounts[1]: dataset \"x\" is also mounts[0]"},
		{"unknown option", `{"mounts":[{"mountPoint":"s3://a","options":{"colour":"red"}}],"targetPath":"/mnt"}`, "mounts[0].options.colour: not an option of s3:// datasets"},
		{"missing secret", `{"mounts":[{"mountPoint":"s3://a","options":{"endpoint":"SECRETS/nope"}}],"targetPath":"/mnt"}`, "mounts[0].options.endpoint:"},
		{"secret escape", `{"mounts":[{"mountPoint":"s3://a","options":{"access_key":"SECRETS/../../etc/shadow"}}],"targetPath":"/mnt"}`, "must not contain"},
		{"bad replicas", `{"mounts":[{"mountPoint":"s3://a"}],"targetPath":"/mnt","runtimeOptions":{"granary.dataset.replicas":"two"}}`, "runtimeOptions.granary.dataset.replicas: \"two\" is not a whole number"},
		{"unknown runtime option", `{"mounts":[{"mountPoint":"s3://a"}],"targetPath":"/mnt","runtimeOptions":{"granary.colour":"red"}}`, "runtimeOptions.granary.colour: unknown option"},
		{"bad worker", `{"mounts":[{"mountPoint":"s3://a"}],"targetPath":"/mnt","runtimeOptions":{"granary.membership.workers":"w1"}}`, "expected ID=HOST:PORT"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := translate(t, tc.js, t.TempDir())
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want %q", err, tc.want)
			}
		})
	}
	if _, err := ParseThinConfig("c.json", []byte("{")); err == nil || !strings.Contains(err.Error(), "c.json: not the JSON") {
		t.Errorf("bad JSON: %v", err)
	}
	if _, _, err := ReadThinConfig(filepath.Join(t.TempDir(), "none.json")); err == nil {
		t.Error("a missing --config-file read")
	}
}

func TestTranslateWarnsOfWrites(t *testing.T) {
	tr, err := translate(t, `{"mounts":[{"mountPoint":"s3://a"}],"targetPath":"/mnt","accessModes":["ReadWriteMany"]}`, t.TempDir())
	if err != nil || len(tr.Warnings) != 1 {
		t.Errorf("err %v warnings %v", err, tr.Warnings)
	}
}
