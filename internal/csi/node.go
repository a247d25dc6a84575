// Package csi is granary's CSI node plugin: a Dataset's PersistentVolume
// (driver csi.granary.io, volume handle NAMESPACE/DATASET) is published
// into a pod by bind-mounting the node's one FUSE mount of the dataset,
// which a `granary mount` supervisor holds so that it outlives the plugin
// (see mounts.go). The plugin has no controller service: the operator makes
// the volumes.
package csi

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/granary-cache/granary/api/v1alpha1"
	"github.com/granary-cache/granary/internal/version"
)

// ConfigSource gives the granary configuration that mounts a dataset on
// this node (from the operator's ConfigMap, on Kubernetes).
type ConfigSource interface {
	Config(ctx context.Context, namespace, dataset string) (string, error)
}

// Node is the CSI Identity and Node services.
type Node struct {
	csi.UnimplementedIdentityServer
	csi.UnimplementedNodeServer

	// NodeID is the Kubernetes node's name.
	NodeID string
	// StateDir holds the dataset mounts and the published targets.
	StateDir string
	Configs  ConfigSource
	Mounter  Mounter
	Log      *slog.Logger

	locks datasetLocks
}

// GetPluginInfo names the driver.
func (n *Node) GetPluginInfo(context.Context, *csi.GetPluginInfoRequest) (*csi.GetPluginInfoResponse, error) {
	return &csi.GetPluginInfoResponse{Name: v1alpha1.CSIDriver, VendorVersion: version.Get().Version}, nil
}

// GetPluginCapabilities: a node plugin alone (no controller service).
func (n *Node) GetPluginCapabilities(context.Context, *csi.GetPluginCapabilitiesRequest) (*csi.GetPluginCapabilitiesResponse, error) {
	return &csi.GetPluginCapabilitiesResponse{}, nil
}

// Probe says the plugin is ready.
func (n *Node) Probe(context.Context, *csi.ProbeRequest) (*csi.ProbeResponse, error) {
	return &csi.ProbeResponse{}, nil
}

// NodeGetCapabilities: no staging; publishing does everything.
func (n *Node) NodeGetCapabilities(context.Context, *csi.NodeGetCapabilitiesRequest) (*csi.NodeGetCapabilitiesResponse, error) {
	return &csi.NodeGetCapabilitiesResponse{}, nil
}

// NodeGetInfo names the node.
func (n *Node) NodeGetInfo(context.Context, *csi.NodeGetInfoRequest) (*csi.NodeGetInfoResponse, error) {
	return &csi.NodeGetInfoResponse{NodeId: n.NodeID}, nil
}

// volumeDataset reads the dataset a volume names: NAMESPACE/DATASET, from
// its handle (the volume context says the same).
func volumeDataset(volumeID string, vctx map[string]string) (ns, ds string, err error) {
	ns, ds, ok := strings.Cut(volumeID, "/")
	if c := vctx["namespace"]; c != "" {
		ns = c
	}
	if c := vctx["dataset"]; c != "" {
		ds = c
	}
	if !ok && vctx["dataset"] == "" || ns == "" || ds == "" || strings.ContainsAny(ns+ds, "/\x00") || ns == ".." || ds == ".." {
		return "", "", fmt.Errorf("volume %q: expected NAMESPACE/DATASET", volumeID)
	}
	return ns, ds, nil
}

// checkCapability refuses what a read-only file system volume cannot do.
func checkCapability(c *csi.VolumeCapability, readonly bool) error {
	if c == nil {
		return errors.New("missing volume capability")
	}
	if c.GetBlock() != nil {
		return errors.New("granary volumes are file systems, not block devices")
	}
	if c.GetMount() == nil {
		return errors.New("volume capability has no access type")
	}
	switch c.GetAccessMode().GetMode() {
	case csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY, csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY:
	case csi.VolumeCapability_AccessMode_UNKNOWN:
		return errors.New("volume capability has no access mode")
	default:
		if !readonly {
			return fmt.Errorf("access mode %s: granary volumes are read-only (publish them readOnly)", c.GetAccessMode().GetMode())
		}
	}
	return nil
}

// NodePublishVolume mounts the dataset at the target path, read-only.
func (n *Node) NodePublishVolume(ctx context.Context, req *csi.NodePublishVolumeRequest) (*csi.NodePublishVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "missing volume id")
	}
	target := req.GetTargetPath()
	if target == "" || !filepath.IsAbs(target) {
		return nil, status.Errorf(codes.InvalidArgument, "target path %q is not an absolute path", target)
	}
	if err := checkCapability(req.GetVolumeCapability(), req.GetReadonly()); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	ns, ds, err := volumeDataset(req.GetVolumeId(), req.GetVolumeContext())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	key := ns + "_" + ds
	unlock := n.locks.lock(key)
	defer unlock()
	if m, err := mounted(target); err == nil && m {
		if err := n.record(req.GetVolumeId(), target); err != nil {
			return nil, status.Error(codes.Internal, err.Error())
		}
		return &csi.NodePublishVolumeResponse{}, nil // published already
	}
	config, err := n.Configs.Config(ctx, ns, ds)
	if err != nil {
		return nil, status.Errorf(codes.FailedPrecondition, "dataset %s/%s: %v", ns, ds, err)
	}
	var opts []string
	if mf := req.GetVolumeCapability().GetMount().GetMountFlags(); len(mf) > 0 {
		opts = mountFlags(mf)
	}
	staging, err := n.Mounter.Ensure(ctx, key, ds, config, opts)
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "mount dataset %s/%s: %v", ns, ds, err)
	}
	if err := os.MkdirAll(target, 0o750); err != nil {
		return nil, status.Errorf(codes.Internal, "target %s: %v", target, err)
	}
	if err := bindReadOnly(staging, target); err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	if err := n.record(req.GetVolumeId(), target); err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	n.log().Info("published", "volume", req.GetVolumeId(), "target", target)
	return &csi.NodePublishVolumeResponse{}, nil
}

// bindReadOnly binds staging at target with the mounts below it (the
// connections of directories that have one of their own), each of them
// read-only, nosuid and nodev at target.
func bindReadOnly(staging, target string) error {
	target = resolved(target) // the mount table lists resolved paths
	if err := unix.Mount(staging, target, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("bind %s at %s: %w", staging, target, err)
	}
	// The staging directory is a shared mount (the plugin's state directory
	// propagates to the host), and a bind of a shared mount joins its peer
	// group: an unmount below one pod's target would then reach the staging
	// directory and every other pod's. As a slave, the target still gets
	// what happens below the staging directory and sends nothing back.
	err := unix.Mount("", target, "", unix.MS_SLAVE|unix.MS_REC, "")
	if err != nil {
		err = fmt.Errorf("make it a slave of %s: %w", staging, err)
	}
	var mps []string
	if err == nil {
		mps, err = mountsAt(target)
	}
	if err == nil && len(mps) == 0 {
		err = errors.New("not in the mount table after the bind")
	}
	for _, mp := range mps {
		if e := unix.Mount("", mp, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV, ""); e != nil {
			err = fmt.Errorf("make %s read-only: %w", mp, e)
			break
		}
	}
	if err != nil {
		// Cut the target off before taking it down, so that its unmount
		// reaches no peer.
		unix.Mount("", target, "", unix.MS_PRIVATE|unix.MS_REC, "")
		unix.Unmount(target, unix.MNT_DETACH)
		return fmt.Errorf("publish %s at %s: %w", staging, target, err)
	}
	return nil
}

// resolved is path with its symbolic links resolved, or path itself when
// that fails.
func resolved(path string) string {
	if r, err := filepath.EvalSymlinks(path); err == nil {
		return r
	}
	return path
}

// unmountTree unmounts target and the mounts below it, the innermost
// first; one that is busy is detached.
func unmountTree(target string) error {
	target = resolved(target)
	mps, err := mountsAt(target)
	if err != nil {
		return fmt.Errorf("unmount %s: %w", target, err)
	}
	if len(mps) == 0 { // a FUSE mount whose server is gone may not list
		mps = []string{target}
	}
	for i := len(mps) - 1; i >= 0; i-- {
		if err := unix.Unmount(mps[i], 0); err != nil && !errors.Is(err, unix.EINVAL) {
			if err := unix.Unmount(mps[i], unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
				return fmt.Errorf("unmount %s: %w", mps[i], err)
			}
		}
	}
	return nil
}

// mountFlags maps the volume's mount options to `granary mount` flags:
// those granary knows, each as --NAME[=VALUE]; others are ignored.
func mountFlags(flags []string) []string {
	var out []string
	for _, f := range flags {
		name, value, hasValue := strings.Cut(f, "=")
		switch name {
		case "entry-timeout", "attr-timeout", "prefetch-idle":
			if hasValue {
				out = append(out, "--"+name, value)
			}
		case "no-passthrough", "no-direct-io", "zero-message-opens", "prefetch":
			out = append(out, "--"+name)
		}
	}
	return out
}

// NodeUnpublishVolume unmounts the target; the last target of a dataset
// stops its mount.
func (n *Node) NodeUnpublishVolume(_ context.Context, req *csi.NodeUnpublishVolumeRequest) (*csi.NodeUnpublishVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "missing volume id")
	}
	target := req.GetTargetPath()
	if target == "" || !filepath.IsAbs(target) {
		return nil, status.Errorf(codes.InvalidArgument, "target path %q is not an absolute path", target)
	}
	ns, ds, err := volumeDataset(req.GetVolumeId(), nil)
	if err != nil {
		// A volume we never published: nothing to undo but the target.
		ns, ds = "", ""
	}
	key := ns + "_" + ds
	unlock := n.locks.lock(key)
	defer unlock()
	if m, err := mounted(target); err != nil {
		return nil, status.Errorf(codes.Internal, "target %s: %v", target, err)
	} else if m {
		if err := unmountTree(target); err != nil {
			return nil, status.Error(codes.Internal, err.Error())
		}
	}
	if err := os.Remove(target); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, status.Errorf(codes.Internal, "remove %s: %v", target, err)
	}
	left, err := n.forget(req.GetVolumeId(), target)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	if left == 0 && ds != "" {
		if err := n.Mounter.Release(key); err != nil {
			return nil, status.Error(codes.Internal, err.Error())
		}
	}
	n.log().Info("unpublished", "volume", req.GetVolumeId(), "target", target, "targets left", left)
	return &csi.NodeUnpublishVolumeResponse{}, nil
}

// volumeDir holds one file per published target of a volume.
func (n *Node) volumeDir(volumeID string) string {
	sum := sha256.Sum256([]byte(volumeID))
	return filepath.Join(n.StateDir, "volumes", hex.EncodeToString(sum[:8]))
}

func targetFile(target string) string {
	sum := sha256.Sum256([]byte(target))
	return hex.EncodeToString(sum[:8])
}

// record notes a published target.
func (n *Node) record(volumeID, target string) error {
	return writeFileAtomic(filepath.Join(n.volumeDir(volumeID), targetFile(target)), []byte(target+"\n"), 0o644)
}

// forget drops a target and returns how many are left for the volume.
func (n *Node) forget(volumeID, target string) (int, error) {
	dir := n.volumeDir(volumeID)
	if err := os.Remove(filepath.Join(dir, targetFile(target))); err != nil && !errors.Is(err, os.ErrNotExist) {
		return 0, err
	}
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	if len(entries) == 0 {
		os.Remove(dir)
	}
	return len(entries), nil
}

func (n *Node) log() *slog.Logger {
	if n.Log == nil {
		return slog.Default()
	}
	return n.Log
}

// Serve serves the plugin on endpoint (unix:///path/csi.sock) until ctx
// ends.
func (n *Node) Serve(ctx context.Context, endpoint string) error {
	u, err := url.Parse(endpoint)
	if err != nil || u.Scheme != "unix" || u.Path == "" {
		return fmt.Errorf("endpoint %q: expected unix:///path/to/csi.sock", endpoint)
	}
	if err := os.MkdirAll(filepath.Dir(u.Path), 0o755); err != nil {
		return err
	}
	os.Remove(u.Path)
	l, err := net.Listen("unix", u.Path)
	if err != nil {
		return fmt.Errorf("listen %s: %w", u.Path, err)
	}
	srv := grpc.NewServer()
	csi.RegisterIdentityServer(srv, n)
	csi.RegisterNodeServer(srv, n)
	go func() {
		<-ctx.Done()
		srv.GracefulStop()
	}()
	n.log().Info("CSI node plugin serving", "endpoint", endpoint, "node", n.NodeID, "driver", v1alpha1.CSIDriver)
	return srv.Serve(l)
}
