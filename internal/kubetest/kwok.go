package kubetest

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"sigs.k8s.io/yaml"
)

// kwokStageFiles are the stages kwok runs, from its module's
// kustomize/stage directory (kwok v0.8.0 exits with "no stages found"
// without them; kwokctl writes them for its clusters):
//   - nodes become Ready at once and renew their leases;
//   - pods become Running and Ready at once (with a pod IP from the node's
//     podCIDR), complete when their containers all have (Jobs: never, as
//     kwok does not run them), and are deleted at once when they have a
//     deletionTimestamp (no grace period: kwok runs no process to stop);
//   - claims of storage class "kwok-volume" get a hostPath volume, bound.
var kwokStageFiles = []string{
	"node/fast/node-initialize.yaml",
	"node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
	"pod/fast/pod-ready.yaml",
	"pod/fast/pod-complete.yaml",
	"pod/fast/pod-delete.yaml",
	"volume/fast/pvc-provision.yaml",
	"volume/fast/pv-bind.yaml",
	"volume/fast/pvc-delete.yaml",
	"volume/fast/pv-delete.yaml",
}

// kwokStages reads kwokStageFiles from dir and joins them into one YAML
// stream for kwok's --config, checking that each is a kwok Stage.
func kwokStages(dir string) (string, error) {
	var out strings.Builder
	for _, name := range kwokStageFiles {
		b, err := os.ReadFile(filepath.Join(dir, filepath.FromSlash(name)))
		if err != nil {
			return "", fmt.Errorf("kwok stages: %w", err)
		}
		var head struct {
			APIVersion string `json:"apiVersion"`
			Kind       string `json:"kind"`
		}
		if err := yaml.Unmarshal(b, &head); err != nil {
			return "", fmt.Errorf("kwok stage %s: %w", name, err)
		}
		if head.Kind != "Stage" || !strings.HasPrefix(head.APIVersion, "kwok.x-k8s.io/") {
			return "", fmt.Errorf("kwok stage %s: kind %q apiVersion %q, want a kwok.x-k8s.io Stage", name, head.Kind, head.APIVersion)
		}
		if out.Len() > 0 {
			out.WriteString("---\n")
		}
		out.Write(bytes.TrimSpace(b))
		out.WriteString("\n")
	}
	return out.String(), nil
}
