#!/usr/bin/env bash
# The whole granary test suite, as CI runs it (README.md, second command).
#
# On a fresh Debian machine as root it installs what the tests need — Debian
# packages (fuse3, Ceph), staticcheck and versitygw (a real S3 server) from the
# Go module proxy — then runs gofmt, go vet, staticcheck, the race detector on
# the packages with concurrency, and every test. It starts a one-host Ceph
# cluster for the Ceph suites; test packages start the other servers they need
# themselves (on 127.0.0.1). Everything is stopped by PID.
set -euo pipefail

cd "$(dirname "$0")/.."
source test/lib.sh

install_test_deps

step "gofmt"
unformatted=$(gofmt -l $(git ls-files '*.go'))
if [[ -n "$unformatted" ]]; then
	echo "gofmt would change: $unformatted" >&2
	exit 1
fi

step "go build (pure Go, CGO_ENABLED=0)"
CGO_ENABLED=0 go build -o /dev/null ./cmd/granary

step "go vet"
go vet ./...

step "staticcheck"
"$tools/staticcheck" ./...

# controller-gen's output (deep-copy methods, the CRDs, the operator's rules)
# must be what the Go API and the RBAC markers make: generate again and fail
# if anything changed (or appeared).
step "generated files are up to date (test/generate.sh)"
generated=(api charts/granary/crds charts/granary/files)
generated_sums() { find "${generated[@]}" -type f -print0 | sort -z | xargs -0 sha256sum; }
before=$(generated_sums)
CONTROLLER_GEN="$tools/controller-gen" bash test/generate.sh
if ! changed=$(diff <(echo "$before") <(generated_sums)); then
	awk '$1 == "<" || $1 == ">" {print "  " $3}' <<<"$changed" | sort -u >&2
	echo "test/generate.sh changed the generated files above (they were stale): commit what it wrote" >&2
	exit 1
fi
git diff --quiet -- "${generated[@]}" ||
	echo "note: generated files differ from the last commit (current, but not committed)"

# The Helm chart lints and renders, with the default values and others; a
# replicated operator without leader election is refused. (--kube-version:
# a helm built by go install assumes Kubernetes 1.20, below the chart's
# kubeVersion.)
step "helm lint, helm template (charts/granary)"
chart_helm() { "$tools/helm" "$@" --kube-version "$K8S_VERSION"; }
helm_other=(--set 'watchNamespaces={a,b}' --set operator.replicas=1 --set operator.leaderElect=false
	--set worker.image=registry.example/granary:x --set metrics.service.enabled=false)
chart_helm lint --strict charts/granary
chart_helm lint --strict charts/granary "${helm_other[@]}"
chart_helm template granary charts/granary --namespace granary-system >/dev/null
rendered=$(chart_helm template granary charts/granary --namespace granary-system "${helm_other[@]}")
for want in '--namespace=a' '--namespace=b' '--leader-elect=false' '--worker-image=registry.example/granary:x' 'replicas: 1'; do
	grep -qF -- "$want" <<<"$rendered" || { echo "helm template ${helm_other[*]}: no $want" >&2; exit 1; }
done
if refused=$(chart_helm template granary charts/granary --set operator.leaderElect=false 2>&1) ||
	! grep -q "needs operator.leaderElect" <<<"$refused"; then
	echo "helm template: 2 replicas without leader election were not refused: $refused" >&2
	exit 1
fi

# A one-host Ceph cluster (test/ceph), for the radosgw and CephFS suites and
# the MDS accounting test; stopped by PID when the script ends.
step "Ceph test cluster"
ceph_dir=$(mktemp -d /tmp/granary-ceph.XXXXXX)
trap 'bash test/ceph/stop.sh "$ceph_dir"; rm -rf "$ceph_dir"' EXIT
bash test/ceph/start.sh "$ceph_dir"
export GRANARY_CEPH_DIR=$ceph_dir

step "go test -tags cephfs (the native CephFS backend, cgo)"
CGO_ENABLED=1 go vet -tags cephfs ./internal/ufs/cephfs/ ./internal/dataset/
CGO_ENABLED=1 go test -race -tags cephfs -count=1 ./internal/ufs/cephfs/

# build/image is a module of its own (its go.mod keeps go-containerregistry
# out of granary's): both images are built, unpacked and run chrooted, and
# the cephfs one reads the Ceph cluster. The log has their sizes (SIZE).
step "go test ./build/image/ (container images: build, unpack, run chrooted)"
(cd build/image && go vet ./... && go test -count=1 -v -timeout 30m ./...)

# Packages with concurrency run under the race detector; the others once
# without it (running everything twice would double the suite's time).
# test/cluster then builds the worker binary with -race as well.
race_pkgs=(./internal/ufs/... ./internal/dataset/... ./internal/cache/... ./internal/client/...
	./internal/bufpool/... ./internal/flight/... ./internal/meta/... ./internal/placement/... ./internal/membership/...
	./internal/worker/... ./internal/localcluster/... ./internal/mount/... ./internal/bench/... ./internal/load/... ./internal/transport/... ./internal/prefetch/...
	./test/cluster/...)
# test/multihost runs alone (below): its hosts are network namespaces and
# its faults are timed by probes and leases.
alone_pkgs=(./test/multihost)
mapfile -t race_list < <(go list "${race_pkgs[@]}")
mapfile -t alone_list < <(go list "${alone_pkgs[@]}")
mapfile -t other_list < <(go list ./... | grep -v -x -F "${race_list[@]/#/-e}" "${alone_list[@]/#/-e}")

# The CephFS tests of test/cluster count the cluster's MDS requests and OSD
# reads: they run alone, after the others.
step "go test -race ${race_pkgs[*]}"
go test -race -count=1 -skip '^TestCephFS' "${race_list[@]}"

step "go test (the other packages)"
go test -count=1 "${other_list[@]}"

step "go test ./test/multihost/ (alone: hosts in network namespaces, etcd, faults)"
go test -count=1 -timeout 20m ./test/multihost/

step "go test -race -run TestCephFS ./test/cluster/ (alone: they count MDS requests)"
go test -race -count=1 -run '^TestCephFS' ./test/cluster/

step "all tests passed"
