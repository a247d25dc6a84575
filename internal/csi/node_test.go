package csi

import (
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
)

func TestVolumeDataset(t *testing.T) {
	for _, c := range []struct {
		id     string
		ctx    map[string]string
		ns, ds string
		bad    bool
	}{
		{id: "ml/imagenet", ns: "ml", ds: "imagenet"},
		{id: "ml/imagenet", ctx: map[string]string{"namespace": "ml", "dataset": "imagenet"}, ns: "ml", ds: "imagenet"},
		{id: "handle", ctx: map[string]string{"namespace": "ml", "dataset": "imagenet"}, ns: "ml", ds: "imagenet"},
		{id: "imagenet", bad: true},
		{id: "ml/", bad: true},
		{id: "../x", bad: true},
		{id: "ml/..", bad: true},
		{id: "ml/a/b", bad: true},
	} {
		ns, ds, err := volumeDataset(c.id, c.ctx)
		if c.bad != (err != nil) || ns != c.ns || ds != c.ds {
			t.Errorf("volumeDataset(%q, %v) = %q, %q, %v", c.id, c.ctx, ns, ds, err)
		}
	}
}

func TestCheckCapability(t *testing.T) {
	mount := &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}}
	mode := func(m csi.VolumeCapability_AccessMode_Mode) *csi.VolumeCapability {
		return &csi.VolumeCapability{AccessType: mount, AccessMode: &csi.VolumeCapability_AccessMode{Mode: m}}
	}
	if err := checkCapability(mode(csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY), false); err != nil {
		t.Error(err)
	}
	if err := checkCapability(mode(csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER), false); err == nil || !strings.Contains(err.Error(), "read-only") {
		t.Errorf("a writer mode, not read-only: %v", err)
	}
	// Kubernetes asks for a ReadOnlyMany claim mounted readOnly.
	if err := checkCapability(mode(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER), true); err != nil {
		t.Errorf("a writer mode published read-only: %v", err)
	}
	if err := checkCapability(nil, true); err == nil {
		t.Error("no capability accepted")
	}
}

func TestMountFlags(t *testing.T) {
	got := strings.Join(mountFlags([]string{"entry-timeout=10s", "no-passthrough", "ro", "max_read=1048576", "attr-timeout"}), " ")
	if want := "--entry-timeout 10s --no-passthrough"; got != want {
		t.Errorf("mountFlags = %q, want %q", got, want)
	}
}

func TestUnescapeMountPath(t *testing.T) {
	if got := unescapeMountPath(`/var/lib/kubelet/pods/a\040b/vol`); got != "/var/lib/kubelet/pods/a b/vol" {
		t.Errorf("got %q", got)
	}
}

func TestParseMountsAt(t *testing.T) {
	const info = `22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
40 22 0:40 / /pods/a/volume rw,nosuid,nodev,relatime shared:5 - fuse.granary granary rw
41 40 0:41 / /pods/a/volume/thumbs rw,nosuid,nodev,relatime shared:6 - fuse.granary granary rw
42 22 0:40 / /pods/a/volume2 rw shared:5 - fuse.granary granary rw
43 22 0:42 / /pods/b\040c/volume rw - fuse.granary granary rw
`
	for _, c := range []struct{ path, want string }{
		{"/pods/a/volume", "/pods/a/volume /pods/a/volume/thumbs"},
		{"/pods/a/volume/thumbs", "/pods/a/volume/thumbs"},
		{"/pods/a", "/pods/a/volume /pods/a/volume/thumbs /pods/a/volume2"},
		{"/pods/b c/volume", "/pods/b c/volume"},
		{"/pods/x", ""},
	} {
		if got := strings.Join(parseMountsAt(info, c.path), " "); got != c.want {
			t.Errorf("parseMountsAt(%q) = %q, want %q", c.path, got, c.want)
		}
	}
}
