package kubetest

import (
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
)

func TestVolumePayload(t *testing.T) {
	pod := testPod()
	objs := testObjects()
	objs.cms["bin"] = &corev1.ConfigMap{BinaryData: map[string][]byte{"blob": {0, 1, 2}}, Data: map[string]string{"t": "text"}}
	mode := func(m int32) *int32 { return &m }
	for _, c := range []struct {
		name string
		vol  corev1.VolumeSource
		want map[string]string // path -> "mode:data"
	}{
		{"configMap all keys", corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
			LocalObjectReference: corev1.LocalObjectReference{Name: "bin"}}},
			map[string]string{"blob": "644:\x00\x01\x02", "t": "644:text"}},
		{"configMap items and modes", corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
			LocalObjectReference: corev1.LocalObjectReference{Name: "cfg"}, DefaultMode: mode(0o600),
			Items: []corev1.KeyToPath{{Key: "A", Path: "dir/a.txt"}, {Key: "B", Path: "b", Mode: mode(0o400)}}}},
			map[string]string{"dir/a.txt": "600:from-cm", "b": "400:b"}},
		{"optional missing configMap", corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
			LocalObjectReference: corev1.LocalObjectReference{Name: "nope"}, Optional: ptr(true)}},
			map[string]string{}},
		{"secret", corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "sec", DefaultMode: mode(0o440),
			Items: []corev1.KeyToPath{{Key: "PASSWORD", Path: "pw"}}}},
			map[string]string{"pw": "440:s3cret"}},
		{"downwardAPI", corev1.VolumeSource{DownwardAPI: &corev1.DownwardAPIVolumeSource{Items: []corev1.DownwardAPIVolumeFile{
			{Path: "labels", FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.labels"}},
			{Path: "name", FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}, Mode: mode(0o400)},
			{Path: "mem", ResourceFieldRef: &corev1.ResourceFieldSelector{ContainerName: "main", Resource: "limits.memory", Divisor: resource.MustParse("1Mi")}},
		}}}, map[string]string{"labels": "644:app=\"x\"\ntier=\"be\"", "name": "400:pod-a", "mem": "644:64"}},
		{"projected", corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{DefaultMode: mode(0o640), Sources: []corev1.VolumeProjection{
			{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Path: "token", Audience: "granary"}},
			{ConfigMap: &corev1.ConfigMapProjection{LocalObjectReference: corev1.LocalObjectReference{Name: "cfg"}, Items: []corev1.KeyToPath{{Key: "B", Path: "b"}}}},
			{Secret: &corev1.SecretProjection{LocalObjectReference: corev1.LocalObjectReference{Name: "sec"}, Items: []corev1.KeyToPath{{Key: "A", Path: "s/a"}}}},
			{DownwardAPI: &corev1.DownwardAPIProjection{Items: []corev1.DownwardAPIVolumeFile{{Path: "ns", FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.namespace"}}}}},
		}}}, map[string]string{"token": "640:token-for-granary", "b": "640:b", "s/a": "640:from-secret", "ns": "640:ns1"}},
	} {
		v := corev1.Volume{Name: "v", VolumeSource: c.vol}
		p, err := volumePayload(pod, testNode(), &v, objs)
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		got := map[string]string{}
		for k, f := range p {
			got[k] = strings.TrimPrefix(f.mode.Perm().String(), "-") + ":" + string(f.data)
		}
		// Compare modes in octal form.
		want := map[string]string{}
		for k, v := range c.want {
			m, d, _ := strings.Cut(v, ":")
			var n uint32
			for _, ch := range m {
				n = n*8 + uint32(ch-'0')
			}
			want[k] = strings.TrimPrefix(os.FileMode(n).String(), "-") + ":" + d
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s:\n got %q\nwant %q", c.name, got, want)
		}
	}
	if len(objs.tokens) != 1 || objs.tokens[0] != "granary/3600" {
		t.Errorf("token requests %q, want one for audience granary, 3600 s", objs.tokens)
	}
	// Errors: a missing key that is not optional, a missing object.
	for name, vs := range map[string]corev1.VolumeSource{
		"missing key": {ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: "cfg"},
			Items: []corev1.KeyToPath{{Key: "nokey", Path: "x"}}}},
		"missing secret": {Secret: &corev1.SecretVolumeSource{SecretName: "nope"}},
		"escaping path": {ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: "cfg"},
			Items: []corev1.KeyToPath{{Key: "A", Path: "../x"}}}},
	} {
		v := corev1.Volume{Name: "v", VolumeSource: vs}
		if _, err := volumePayload(pod, nil, &v, objs); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	// Other kinds have no payload.
	if p, err := volumePayload(pod, nil, &corev1.Volume{VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}, objs); p != nil || err != nil {
		t.Errorf("emptyDir payload %v, %v", p, err)
	}
}

func TestWriteAtomic(t *testing.T) {
	dir := t.TempDir()
	p1 := payload{"a": {data: []byte("1"), mode: 0o644}, "sub/b": {data: []byte("2"), mode: 0o400}, "c": {data: []byte("3"), mode: 0o600}}
	changed, err := writeAtomic(dir, p1)
	if err != nil || !changed {
		t.Fatalf("first write: %v, %v", changed, err)
	}
	read := func(rel string) string {
		b, err := os.ReadFile(filepath.Join(dir, rel))
		if err != nil {
			return "<" + err.Error() + ">"
		}
		return string(b)
	}
	if read("a") != "1" || read("sub/b") != "2" || read("c") != "3" {
		t.Fatalf("contents: %q %q %q", read("a"), read("sub/b"), read("c"))
	}
	if st, _ := os.Stat(filepath.Join(dir, "sub/b")); st.Mode().Perm() != 0o400 {
		t.Errorf("mode of sub/b: %v", st.Mode())
	}
	if l, _ := os.Readlink(filepath.Join(dir, "a")); l != "..data/a" {
		t.Errorf("a links to %q, want ..data/a", l)
	}
	old, _ := os.Readlink(filepath.Join(dir, "..data"))
	if changed, err := writeAtomic(dir, p1); err != nil || changed {
		t.Errorf("same payload again: changed %v, %v", changed, err)
	}
	p2 := payload{"a": {data: []byte("1b"), mode: 0o644}, "d": {data: []byte("4"), mode: 0o644}}
	if changed, err := writeAtomic(dir, p2); err != nil || !changed {
		t.Fatalf("second write: %v, %v", changed, err)
	}
	if read("a") != "1b" || read("d") != "4" {
		t.Errorf("after update: a=%q d=%q", read("a"), read("d"))
	}
	for _, gone := range []string{"c", "sub", old} {
		if _, err := os.Lstat(filepath.Join(dir, gone)); !os.IsNotExist(err) {
			t.Errorf("%s still there after the update (%v)", gone, err)
		}
	}
}

func TestPrepareHostPath(t *testing.T) {
	dir := t.TempDir()
	typ := func(s corev1.HostPathType) *corev1.HostPathType { return &s }
	if err := prepareHostPath(filepath.Join(dir, "new/dir"), typ(corev1.HostPathDirectoryOrCreate)); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(filepath.Join(dir, "new/dir")); err != nil || !st.IsDir() {
		t.Fatalf("DirectoryOrCreate made no directory: %v", err)
	}
	if err := prepareHostPath(filepath.Join(dir, "new/file"), typ(corev1.HostPathFileOrCreate)); err != nil {
		t.Fatal(err)
	}
	if err := prepareHostPath(filepath.Join(dir, "absent/file"), typ(corev1.HostPathFileOrCreate)); err == nil {
		t.Error("FileOrCreate made the parent directory (the kubelet does not)")
	}
	if err := prepareHostPath(filepath.Join(dir, "untyped/x"), nil); err != nil {
		t.Error(err)
	}
	l, err := net.Listen("unix", filepath.Join(dir, "sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for _, c := range []struct {
		p  string
		t  corev1.HostPathType
		ok bool
	}{
		{"new/dir", corev1.HostPathDirectory, true},
		{"new/file", corev1.HostPathDirectory, false},
		{"new/file", corev1.HostPathFile, true},
		{"new/dir", corev1.HostPathFile, false},
		{"new/file", corev1.HostPathDirectoryOrCreate, false},
		{"missing", corev1.HostPathDirectory, false},
		{"missing", corev1.HostPathFile, false},
		{"sock", corev1.HostPathSocket, true},
		{"new/file", corev1.HostPathSocket, false},
		{"/dev/null", corev1.HostPathCharDev, true},
		{"new/file", corev1.HostPathCharDev, false},
		{"/dev/null", corev1.HostPathBlockDev, false},
		{"new/dir", "Bogus", false},
	} {
		p := c.p
		if !filepath.IsAbs(p) {
			p = filepath.Join(dir, p)
		}
		if err := prepareHostPath(p, typ(c.t)); (err == nil) != c.ok {
			t.Errorf("%s as %s: %v, want ok=%v", c.p, c.t, err, c.ok)
		}
	}
}

func TestHostPathSource(t *testing.T) {
	shared := []string{"/dev", "/sys"}
	for in, want := range map[string]string{
		"/var/lib/granary":  "/n/var/lib/granary",
		"var/../etc/x":      "/n/etc/x",
		"/dev/fuse":         "/dev/fuse",
		"/dev":              "/dev",
		"/devices":          "/n/devices",
		"/sys/fs/cgroup":    "/sys/fs/cgroup",
		"/../../etc/passwd": "/n/etc/passwd",
	} {
		if got := hostPathSource("/n", in, shared); got != want {
			t.Errorf("hostPathSource(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestSubPathIn(t *testing.T) {
	vol := t.TempDir()
	os.MkdirAll(filepath.Join(vol, "data"), 0o755)
	os.Symlink("/etc", filepath.Join(vol, "escape"))
	env := &envList{}
	env.Set("POD", "p1")
	for _, c := range []struct {
		m    corev1.VolumeMount
		want string // "" for an error
	}{
		{corev1.VolumeMount{Name: "v"}, vol},
		{corev1.VolumeMount{Name: "v", SubPath: "data"}, filepath.Join(vol, "data")},
		{corev1.VolumeMount{Name: "v", SubPath: "new/dir"}, filepath.Join(vol, "new/dir")},
		{corev1.VolumeMount{Name: "v", SubPathExpr: "pods/$(POD)"}, filepath.Join(vol, "pods/p1")},
		{corev1.VolumeMount{Name: "v", SubPathExpr: "$(NOPE)"}, ""},
		{corev1.VolumeMount{Name: "v", SubPath: "../x"}, ""},
		{corev1.VolumeMount{Name: "v", SubPath: "/abs"}, ""},
		{corev1.VolumeMount{Name: "v", SubPath: "escape"}, ""},
	} {
		got, err := subPathIn(vol, &c.m, env)
		if c.want == "" {
			if err == nil {
				t.Errorf("%+v: %q, want an error", c.m, got)
			}
			continue
		}
		want, _ := filepath.EvalSymlinks(c.want)
		if c.m.SubPath == "" && c.m.SubPathExpr == "" {
			want = c.want
		}
		if err != nil || got != want {
			t.Errorf("%+v: %q, %v; want %q", c.m, got, err, want)
		}
	}
}
