package csi

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/granary-cache/granary/api/v1alpha1"
	"github.com/granary-cache/granary/internal/config"
)

// FileConfig is a ConfigSource of one granary configuration file that
// defines the datasets (any namespace): for a plugin outside Kubernetes'
// operator, and for tests.
type FileConfig struct{ Path string }

// Config returns the file, if it defines the dataset.
func (f FileConfig) Config(_ context.Context, _, dataset string) (string, error) {
	cfg, err := config.Load(f.Path)
	if err != nil {
		return "", err
	}
	if _, ok := cfg.Dataset(dataset); !ok {
		return "", fmt.Errorf("%s defines no dataset %q", f.Path, dataset)
	}
	b, err := os.ReadFile(f.Path)
	return string(b), err
}

// Paths of the operator's rendered configuration, inside a worker's
// container (internal/operator), and what they become on the node.
const (
	renderedToken   = "/etc/granary/token/token"
	renderedSecrets = "/etc/granary/secrets/"
)

// KubeConfig is the ConfigSource of the operator: the dataset's runtime's
// ConfigMap, with the runtime's token and the dataset's Secrets written
// under the plugin's state directory (readable by root alone).
type KubeConfig struct {
	Client   client.Client
	StateDir string
	// Host is this node's name: the mount's client.host, so that it reads
	// the block files of the node's worker directly.
	Host string
}

// Config reads what the operator rendered for the dataset's runtime.
func (k KubeConfig) Config(ctx context.Context, ns, name string) (string, error) {
	var ds v1alpha1.Dataset
	if err := k.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, &ds); err != nil {
		return "", fmt.Errorf("get Dataset: %w", err)
	}
	rt := ds.Status.Runtime
	if rt == "" {
		return "", errors.New("no CacheRuntime serves it yet")
	}
	var cm corev1.ConfigMap
	if err := k.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: rt + "-config"}, &cm); err != nil {
		return "", fmt.Errorf("the configuration of CacheRuntime %s: %w", rt, err)
	}
	text, ok := cm.Data["granary.yaml"]
	if !ok {
		return "", fmt.Errorf("ConfigMap %s-config has no granary.yaml", rt)
	}
	secrets := filepath.Join(k.StateDir, "secrets", ns)
	var tok corev1.Secret
	if err := k.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: rt + "-token"}, &tok); err != nil {
		return "", fmt.Errorf("the token of CacheRuntime %s: %w", rt, err)
	}
	tokenPath := filepath.Join(secrets, rt+"-token", "token")
	if err := writeFileAtomic(tokenPath, tok.Data["token"], 0o600); err != nil {
		return "", err
	}
	for _, so := range ds.Spec.SecretOptions {
		ref := so.ValueFrom.SecretKeyRef
		var s corev1.Secret
		if err := k.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: ref.Name}, &s); err != nil {
			return "", fmt.Errorf("secret %s: %w", ref.Name, err)
		}
		v, ok := s.Data[ref.Key]
		if !ok {
			return "", fmt.Errorf("secret %s has no key %q", ref.Name, ref.Key)
		}
		if err := writeFileAtomic(filepath.Join(secrets, ref.Name, ref.Key), v, 0o600); err != nil {
			return "", err
		}
	}
	text = strings.ReplaceAll(text, renderedToken, tokenPath)
	text = strings.ReplaceAll(text, renderedSecrets, secrets+"/")
	if k.Host != "" {
		text += fmt.Sprintf("client:\n  host: %q\n", k.Host)
	}
	return text, nil
}
