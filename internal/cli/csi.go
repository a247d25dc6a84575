package cli

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/granary-cache/granary/internal/csi"
	"github.com/granary-cache/granary/internal/membership"
	"github.com/granary-cache/granary/internal/operator"
)

func newCSICmd(g *globals) *cobra.Command {
	var (
		endpoint, nodeID, stateDir, kubeconfig, static, mounter string
	)
	cmd := &cobra.Command{
		Use:   "csi --endpoint unix:///csi/csi.sock --node-id NODE",
		Short: "Run the CSI node plugin: mount Datasets' volumes into pods",
		Long: `csi serves the CSI Identity and Node services of the driver csi.granary.io.
Publishing a Dataset's volume mounts the dataset once per node (a granary mount
supervisor, in a session of its own, holds the FUSE connection, so that the mount
outlives this plugin and its serving process) and bind-mounts it read-only at the
pod's target path; the last unpublish of a dataset on the node stops its mount.

The configuration of a dataset comes from the operator's ConfigMap of its
CacheRuntime (in a pod, or with --kubeconfig), or from --config-file outside
Kubernetes.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if nodeID == "" {
				return fmt.Errorf("--node-id is required (the Kubernetes node's name)")
			}
			self, err := os.Executable()
			if err != nil {
				return err
			}
			spawner := &csi.Spawner{StateDir: stateDir, Binary: self}
			n := &csi.Node{NodeID: nodeID, StateDir: stateDir, Mounter: spawner}
			if mounter != "" {
				n.Mounter = csi.NewRemoteMounter(mounter)
			}
			if static != "" {
				abs, err := filepath.Abs(static)
				if err != nil {
					return err
				}
				n.Configs = csi.FileConfig{Path: abs}
			} else {
				rc, err := membership.KubeConfig(kubeconfig)
				if err != nil {
					return err
				}
				c, err := client.New(rc, client.Options{Scheme: operator.Scheme()})
				if err != nil {
					return err
				}
				n.Configs = csi.KubeConfig{Client: c, StateDir: stateDir, Host: nodeID}
				if kubeconfig != "" {
					spawner.Env = append(spawner.Env, "KUBECONFIG="+kubeconfig)
				}
			}
			return n.Serve(ctrl.SetupSignalHandler(), endpoint)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&endpoint, "endpoint", "unix:///csi/csi.sock", "the CSI socket")
	fl.StringVar(&nodeID, "node-id", os.Getenv("NODE_NAME"), "this node's name (default $NODE_NAME)")
	fl.StringVar(&stateDir, "state-dir", "/var/lib/granary/csi", "where dataset mounts and published targets are kept (a host directory: it must outlive the plugin)")
	fl.StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig file (default $KUBECONFIG, then the pod's service account)")
	fl.StringVar(&static, "config-file", "", "take every dataset's configuration from this granary configuration file instead of Kubernetes")
	fl.StringVar(&mounter, "mounter", "", "the socket of a `granary csi mounter` that holds the dataset mounts (default: this process starts them)")
	cmd.AddCommand(newCSIMounterCmd())
	return cmd
}

func newCSIMounterCmd() *cobra.Command {
	var socket, stateDir string
	cmd := &cobra.Command{
		Use:   "mounter --socket PATH",
		Short: "Hold the node's dataset mounts for the CSI plugin",
		Long: `mounter starts and stops the node's dataset mounts (one granary mount
supervisor per dataset) when the CSI plugin asks, over a unix socket. Run apart
from the plugin (on Kubernetes, a DaemonSet of its own that is not upgraded with
the plugin), it keeps the mounts through a restart or an upgrade of the plugin.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			self, err := os.Executable()
			if err != nil {
				return err
			}
			s := &csi.Spawner{StateDir: stateDir, Binary: self}
			return csi.ServeMounter(ctrl.SetupSignalHandler(), socket, s, slog.Default())
		},
	}
	cmd.Flags().StringVar(&socket, "socket", "/var/lib/granary/csi/mounter.sock", "the socket the plugin asks on")
	cmd.Flags().StringVar(&stateDir, "state-dir", "/var/lib/granary/csi", "where the dataset mounts are kept (the plugin's --state-dir)")
	return cmd
}
