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
	got := strings.Join(mountFlags([]string{"entry-timeout=10s", "no-passthrough", "ro", "max_read=1048576", "attr-timeout", "no-direct-io", "prefetch", "prefetch-idle=1m"}), " ")
	if want := "--entry-timeout 10s --no-passthrough --no-direct-io --prefetch --prefetch-idle 1m"; got != want {
		t.Errorf("mountFlags = %q, want %q", got, want)
	}
}
