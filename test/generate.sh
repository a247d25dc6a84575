#!/usr/bin/env bash
# Writes what controller-gen makes from the Go API (api/v1alpha1) and the
# operator's RBAC markers: the deep-copy methods, the CRDs (into the Helm
# chart's crds/, their one home) and the operator's rules (into the chart's
# files/, which its ClusterRole reads). test/run.sh runs it and fails if the
# committed files differ.
set -euo pipefail
cd "$(dirname "$0")/.."
gen=${CONTROLLER_GEN:-.cache/bin/controller-gen}
"$gen" object paths=./api/...
"$gen" crd paths=./api/... output:crd:dir=charts/granary/crds
"$gen" rbac:roleName=granary-operator paths=./internal/operator/... output:rbac:dir=charts/granary/files
mv charts/granary/files/role.yaml charts/granary/files/operator-rules.yaml
