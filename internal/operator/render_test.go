package operator

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/granary-cache/granary/api/v1alpha1"
	"github.com/granary-cache/granary/internal/config"
)

func testRuntime() *v1alpha1.CacheRuntime {
	high, low := int32(90), int32(60)
	return &v1alpha1.CacheRuntime{
		ObjectMeta: metav1.ObjectMeta{Name: "train", Namespace: "ml"},
		Spec: v1alpha1.CacheRuntimeSpec{
			Datasets: []string{"imagenet"},
			Tiers: []v1alpha1.TierSpec{
				{Name: "MEM", Medium: v1alpha1.MediumMemory, Quota: resource.MustParse("2Gi")},
				{Name: "SSD", Medium: v1alpha1.MediumHostPath, Path: "/mnt/nvme", Quota: resource.MustParse("100Gi"), High: &high, Low: &low},
			},
			Worker: v1alpha1.WorkerSpec{NodeSelector: map[string]string{"gpu": "true"}},
		},
	}
}

func testDataset() *v1alpha1.Dataset {
	return &v1alpha1.Dataset{
		ObjectMeta: metav1.ObjectMeta{Name: "imagenet", Namespace: "ml"},
		Spec: v1alpha1.DatasetSpec{
			UFS:     "s3://bucket/imagenet",
			Options: map[string]string{"endpoint": "http://rgw.ceph:8080", "path_style": "true"},
			SecretOptions: []v1alpha1.SecretOption{
				{Name: "access_key", ValueFrom: v1alpha1.SecretSource{SecretKeyRef: v1alpha1.SecretKeyRef{Name: "s3", Key: "id"}}},
				{Name: "secret_key", ValueFrom: v1alpha1.SecretSource{SecretKeyRef: v1alpha1.SecretKeyRef{Name: "s3", Key: "secret"}}},
			},
			Replicas:     2,
			MetadataSync: "10m",
		},
	}
}

// The rendered file is one granary reads: the worker's own parser accepts
// it once the files it names exist.
func TestRenderConfigIsGranaryConfig(t *testing.T) {
	r, err := renderConfig(testRuntime(), []*v1alpha1.Dataset{testDataset()})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"type: kubernetes", "cluster: train", "namespace: ml", "access_key_file: /etc/granary/secrets/s3/id",
		"secret_key_file: /etc/granary/secrets/s3/secret", "path: /cache/ssd", "quota: \"107374182400\"", "high: 0.9"} {
		if !strings.Contains(r.Config, want) {
			t.Errorf("rendered config lacks %q:\n%s", want, r.Config)
		}
	}
	if len(r.Secrets) != 2 || r.Secrets[0].Path() != "/etc/granary/secrets/s3/id" {
		t.Errorf("secrets %+v", r.Secrets)
	}
	// Parse it as the worker will, with the files rewritten to exist.
	dir := t.TempDir()
	text := strings.ReplaceAll(r.Config, "/etc/granary/", dir+"/")
	for _, f := range []string{"secrets/s3/id", "secrets/s3/secret", "token/token"} {
		writeFile(t, dir+"/"+f, "x")
	}
	cfg, err := config.Parse("rendered", []byte(text))
	if err != nil {
		t.Fatalf("granary refuses the rendered config: %v\n%s", err, text)
	}
	ds, _ := cfg.Dataset("imagenet")
	if ds.Replicas != 2 || ds.MetadataSync.Interval.Minutes() != 10 || ds.Options["access_key"] != "x" {
		t.Errorf("dataset as granary reads it: %+v", ds)
	}
	if cfg.Membership.Type != config.MembershipKubernetes || cfg.Worker.Tiers[1].Low != 0.6 {
		t.Errorf("cluster sections: %+v %+v", cfg.Membership, cfg.Worker.Tiers)
	}
	again, _ := renderConfig(testRuntime(), []*v1alpha1.Dataset{testDataset()})
	if again.Hash != r.Hash {
		t.Errorf("rendering twice gives hashes %s and %s", r.Hash, again.Hash)
	}
}

func TestDatasetSpecErrors(t *testing.T) {
	for _, c := range []struct {
		name  string
		edit  func(*v1alpha1.DatasetSpec)
		field string
		msg   string
	}{
		{"unknown scheme", func(s *v1alpha1.DatasetSpec) { s.UFS = "ftp://host/x" }, "spec.ufs", "unknown scheme"},
		{"unknown option", func(s *v1alpha1.DatasetSpec) { s.Options["colour"] = "red" }, "spec.options.colour", "unknown option"},
		{"secret in plain options", func(s *v1alpha1.DatasetSpec) { s.Options["secret_key"] = "hunter2" }, "spec.options.secret_key", "secretOptions"},
		{"unknown secret option", func(s *v1alpha1.DatasetSpec) { s.SecretOptions[0].Name = "password" }, "spec.secretOptions[0].name", "unknown option"},
		{"plain option from a secret", func(s *v1alpha1.DatasetSpec) { s.SecretOptions[0].Name = "region" }, "spec.secretOptions[0].name", "not a secret"},
		{"twice", func(s *v1alpha1.DatasetSpec) { s.SecretOptions[0].Name = "endpoint" }, "spec.secretOptions[0].name", "options too"},
	} {
		ds := testDataset()
		c.edit(&ds.Spec)
		_, _, err := datasetConfig(ds)
		se, ok := err.(*SpecError)
		if !ok || se.Field != c.field || !strings.Contains(se.Msg, c.msg) {
			t.Errorf("%s: error %v, want a SpecError on %s saying %q", c.name, err, c.field, c.msg)
		}
	}
}

// A CephFS keyring from a Secret is a file the worker reads.
func TestCephFSKeyringIsAFile(t *testing.T) {
	ds := &v1alpha1.Dataset{ObjectMeta: metav1.ObjectMeta{Name: "cfs", Namespace: "ml"}, Spec: v1alpha1.DatasetSpec{
		UFS:     "cephfs://cephfs/datasets",
		Options: map[string]string{"monitors": "10.0.0.1:6789", "user": "granary"},
		SecretOptions: []v1alpha1.SecretOption{{Name: "keyring",
			ValueFrom: v1alpha1.SecretSource{SecretKeyRef: v1alpha1.SecretKeyRef{Name: "ceph", Key: "keyring"}}}},
	}}
	d, files, err := datasetConfig(ds)
	if err != nil {
		t.Fatal(err)
	}
	if d.Options["keyring"] != "/etc/granary/secrets/ceph/keyring" || len(files) != 1 {
		t.Errorf("options %v, files %v", d.Options, files)
	}
	if !usesCephFS([]*v1alpha1.Dataset{ds}) {
		t.Error("a cephfs dataset does not pick the cephfs image")
	}
	if got := (Images{Default: "g:1", CephFS: "g:1-cephfs"}).pick(true); got != "g:1-cephfs" {
		t.Errorf("image %s", got)
	}
}

func TestWorkerPod(t *testing.T) {
	rt := testRuntime()
	r, err := renderConfig(rt, []*v1alpha1.Dataset{testDataset()})
	if err != nil {
		t.Fatal(err)
	}
	tmpl := workerPodSpec(rt, r, "granary:test", Images{}, false)
	c := tmpl.Spec.Containers[0]
	args := strings.Join(c.Args, " ")
	for _, want := range []string{"--id $(GRANARY_NODE)", "--listen $(GRANARY_POD_IP):7420", "--admin $(GRANARY_POD_IP):7421", "--config /etc/granary/config/granary.yaml"} {
		if !strings.Contains(args, want) {
			t.Errorf("args %q lack %q", args, want)
		}
	}
	vols := map[string]corev1.Volume{}
	for _, v := range tmpl.Spec.Volumes {
		vols[v.Name] = v
	}
	if v := vols["tier-mem"]; v.EmptyDir == nil || v.EmptyDir.Medium != corev1.StorageMediumMemory || v.EmptyDir.SizeLimit.String() != "2Gi" {
		t.Errorf("MEM tier volume %+v", v)
	}
	if v := vols["tier-ssd"]; v.HostPath == nil || v.HostPath.Path != "/mnt/nvme/ml-train" {
		t.Errorf("SSD tier volume %+v: want the node's /mnt/nvme/ml-train, kept across restarts", v)
	}
	if v := vols["state"]; v.HostPath == nil || v.HostPath.Path != "/var/lib/granary/ml-train" {
		t.Errorf("state volume %+v", v)
	}
	if v := vols["secret-s3"]; v.Secret == nil || v.Secret.SecretName != "s3" {
		t.Errorf("secret volume %+v", v)
	}
	if tmpl.Spec.NodeSelector["gpu"] != "true" || tmpl.Spec.ServiceAccountName != "train-worker" {
		t.Errorf("placement %v, service account %s", tmpl.Spec.NodeSelector, tmpl.Spec.ServiceAccountName)
	}
	sts := workerPodSpec(rt, r, "granary:test", Images{}, true)
	if !strings.Contains(strings.Join(sts.Spec.Containers[0].Args, " "), "--id $(GRANARY_POD)") {
		t.Error("a StatefulSet's workers are not named after their pods")
	}
}

func TestRenderRefusesBadTier(t *testing.T) {
	rt := testRuntime()
	rt.Spec.Tiers[0].Quota = resource.MustParse("-1Gi")
	_, err := renderConfig(rt, nil)
	if se, ok := err.(*SpecError); !ok || se.Field != "spec.tiers[0].quota" {
		t.Errorf("negative quota: %v", err)
	}
}

// A block smaller than granary's default page gets pages of its size; a
// spec granary would refuse fails with granary's own reason.
func TestRenderSmallBlocks(t *testing.T) {
	rt := testRuntime()
	small := resource.MustParse("1Mi")
	rt.Spec.BlockSize = &small
	r, err := renderConfig(rt, []*v1alpha1.Dataset{testDataset()})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(r.Config, `page_size: "1048576"`) {
		t.Errorf("no page size for 1 MiB blocks:\n%s", r.Config)
	}
	odd := resource.MustParse("1536Ki")
	ds := testDataset()
	ds.Spec.BlockSize = &odd
	_, err = renderConfig(rt, []*v1alpha1.Dataset{ds})
	if err == nil || !strings.Contains(err.Error(), "block_size") || strings.Contains(err.Error(), "cannot read") {
		t.Errorf("a dataset block of 1.5 pages: %v", err)
	}
}

// spec.worker.hugePages: the workers get CAP_SYS_ADMIN and their MEM tier
// huge_pages auto (they remount its emptyDir with huge pages); without it,
// no capability, and every tier huge_pages off, so that a worker does not
// say at every start that it cannot.
func TestWorkerHugePages(t *testing.T) {
	for _, huge := range []bool{false, true} {
		rt := testRuntime()
		rt.Spec.Worker.HugePages = huge
		r, err := renderConfig(rt, []*v1alpha1.Dataset{testDataset()})
		if err != nil {
			t.Fatal(err)
		}
		dir := t.TempDir()
		for _, f := range []string{"secrets/s3/id", "secrets/s3/secret", "token/token"} {
			writeFile(t, dir+"/"+f, "x")
		}
		cfg, err := config.Parse("rendered", []byte(strings.ReplaceAll(r.Config, "/etc/granary/", dir+"/")))
		if err != nil {
			t.Fatal(err)
		}
		want := config.HugePagesOff
		if huge {
			want = config.HugePagesAuto
		}
		if mem := cfg.Worker.Tiers[0]; mem.Name != "MEM" || mem.HugePages != want {
			t.Errorf("hugePages %v: MEM tier %+v; want huge_pages %s", huge, mem, want)
		}
		sc := workerPodSpec(rt, r, "granary:test", Images{}, false).Spec.Containers[0].SecurityContext
		hasCap := sc != nil && sc.Capabilities != nil && len(sc.Capabilities.Add) == 1 && sc.Capabilities.Add[0] == "SYS_ADMIN" &&
			sc.AppArmorProfile != nil && sc.AppArmorProfile.Type == corev1.AppArmorProfileTypeUnconfined
		if hasCap != huge || (sc != nil && sc.Privileged != nil) {
			t.Errorf("hugePages %v: security context %+v", huge, sc)
		}
	}
}
