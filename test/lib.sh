# Shared by test/run.sh and test/bench.sh: installing what tests need.
# Sourced from the repository root.

export PATH="/usr/local/go/bin:$PATH"
export GOTOOLCHAIN="${GOTOOLCHAIN:-local}"

STATICCHECK_VERSION=v0.8.2
VERSITYGW_VERSION=v1.8.0
# The etcd server's version is the one test/tools/etcd/go.mod pins.
ETCD_VERSION=$(awk '$1 == "require" && $2 == "go.etcd.io/etcd/server/v3" {print $3}' test/tools/etcd/go.mod)
# Kubernetes' version is the one test/tools/k8s/go.mod pins.
K8S_VERSION=$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" {print $3}' test/tools/k8s/go.mod)
KWOK_VERSION=v0.8.0
HELM_VERSION=v3.22.0
CONTROLLER_GEN_VERSION=v0.23.0
CSI_SANITY_VERSION=v5.6.0

tools="$PWD/.cache/bin"
mkdir -p "$tools"

step() { printf '\n=== %s\n' "$*"; }

# apt_install installs the Debian packages that are not there yet.
apt_install() {
	local missing=()
	for p in "$@"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
	done
	if ((${#missing[@]})); then
		step "apt-get install ${missing[*]}"
		export DEBIAN_FRONTEND=noninteractive
		apt-get update -qq
		apt-get install -y -qq --no-install-recommends "${missing[@]}"
	fi
}

# go_tool installs a Go command at a pinned version into .cache/bin.
go_tool() {
	local name=$1 pkg=$2 version=$3
	local stamp="$tools/.$name-$version"
	if [[ ! -x "$tools/$name" || ! -e "$stamp" ]]; then
		step "go install $pkg@$version"
		GOBIN="$tools" CGO_ENABLED=0 go install "$pkg@$version"
		touch "$stamp"
	fi
}

# go_etcd builds the etcd server of test/tools/etcd into .cache/bin/etcd
# (its go.mod says why it is a module of its own).
go_etcd() {
	local stamp="$tools/.etcd-$ETCD_VERSION"
	if [[ ! -x "$tools/etcd" || ! -e "$stamp" ]]; then
		step "go build etcd $ETCD_VERSION (test/tools/etcd)"
		(cd test/tools/etcd && GOFLAGS=-mod=mod CGO_ENABLED=0 go build -ldflags='-s -w' -o "$tools/etcd" go.etcd.io/etcd/server/v3)
		touch "$stamp"
	fi
}

# go_k8s builds kube-apiserver, kube-controller-manager, kube-scheduler and
# kubectl of test/tools/k8s into .cache/bin (its README says why it is a
# module of its own). The version flags make `--version` tell the truth.
go_k8s() {
	local stamp="$tools/.k8s-$K8S_VERSION"
	if [[ -e "$stamp" ]]; then return; fi
	local v=${K8S_VERSION#v} minor
	minor=$(cut -d. -f2 <<<"$v")
	local ld="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor"
	for c in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
		step "go build $c $K8S_VERSION (test/tools/k8s)"
		(cd test/tools/k8s && GOFLAGS=-mod=mod CGO_ENABLED=0 go build -ldflags="$ld" -o "$tools/$c" "k8s.io/kubernetes/cmd/$c")
	done
	touch "$stamp"
}

# install_test_deps installs everything the tests and benchmarks use and
# exports where to find it.
install_test_deps() {
	command -v go >/dev/null || { echo "Go is missing: install Go 1.26 in /usr/local/go" >&2; exit 1; }
	# python3-torch(vision): the PyTorch DataLoader example's test; iproute2
	# and util-linux (nsenter): the network namespaces of multi-host tests;
	# gcc, libc6-dev, libcephfs-dev: the cgo build with native CephFS;
	# ceph-common and libsnappy1v5: Ceph's compressor and crypto plugins and
	# snappy's library, which the cephfs container image ships (build/image).
	apt_install ca-certificates git fuse3 iproute2 util-linux openssl python3-torch python3-torchvision \
		gcc libc6-dev libcephfs-dev ceph-common libsnappy1v5
	go_tool staticcheck honnef.co/go/tools/cmd/staticcheck "$STATICCHECK_VERSION"
	go_tool versitygw github.com/versity/versitygw/cmd/versitygw "$VERSITYGW_VERSION"
	export GRANARY_VERSITYGW="$tools/versitygw"
	go_etcd
	export GRANARY_ETCD="$tools/etcd"
	# A real control plane for the operator's tests: kube-apiserver (with
	# envtest, over the etcd above), controller-manager, scheduler, kubectl,
	# kwok for nodes, helm for the chart, controller-gen for the CRDs.
	go_k8s
	go_tool kwok sigs.k8s.io/kwok/cmd/kwok "$KWOK_VERSION"
	go_tool helm helm.sh/helm/v3/cmd/helm "$HELM_VERSION"
	go_tool controller-gen sigs.k8s.io/controller-tools/cmd/controller-gen "$CONTROLLER_GEN_VERSION"
	# csi-sanity, the CSI conformance tests, for granary's node plugin.
	go_tool csi-sanity github.com/kubernetes-csi/csi-test/v5/cmd/csi-sanity "$CSI_SANITY_VERSION"
	export GRANARY_CSI_SANITY="$tools/csi-sanity"
	export GRANARY_KUBE_BIN="$tools"
	# kwok's node and pod stages ship in its module (downloaded again if the
	# module cache was emptied since kwok was built).
	local kwok_dir
	kwok_dir=$(go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
	export GRANARY_KWOK_STAGES="$kwok_dir/kustomize/stage"
	# Tests that need a server fail, rather than skip, when it is missing.
	export GRANARY_REQUIRE_SERVERS=1
}

# granary_up GRANARY CONFIG STATE MOUNTPOINT LOG [FLAG...] starts `granary
# up` (3 workers on loopback) with a FUSE mount and any further flags, in
# the background, adds its PID to the array pids, and waits until the mount
# serves.
granary_up() {
	local g=$1 config=$2 state=$3 mnt=$4 log=$5
	shift 5
	"$g" up --config "$config" --workers 3 --state-dir "$state" --mem 2GiB --ssd 8GiB --mount "$mnt" "$@" >"$log" 2>&1 &
	pids+=($!)
	for _ in $(seq 300); do mountpoint -q "$mnt" && [[ -e "$state/granary.yaml" ]] && break; sleep 0.1; done
	mountpoint -q "$mnt" || { cat "$log"; return 1; }
}
