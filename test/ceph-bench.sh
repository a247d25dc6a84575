#!/usr/bin/env bash
# granary in front of a real Ceph cluster, measured with `granary bench`
# against what users run today, in the same run. It starts its own one-host
# cluster (test/ceph) and stops everything it started by PID. Not part of CI:
# about 15 minutes at the default size.
#   bash test/ceph-bench.sh
# - handles: one libcephfs handle per dataset against a pool of four
#   (BenchmarkHandles);
# - rgw: an imagenet-shaped bucket on radosgw read through granary (3
#   workers, a FUSE mount) against a direct parallel download with the S3
#   SDK (the dataset's own endpoint and keys: `--baseline sdk=dataset:rgw`);
# - cephfs: the same tree on CephFS through granary against a ceph-fuse
#   mount, with the MDS's requests per epoch;
# - prefetch: granary started again, cold, with --mount-prefetch, and the
#   first epoch of both datasets read again against the same baselines; the
#   summary gives each cold epoch with prefetch over the one without.
# SCALE (default 1GiB) sets the size of each dataset; reports go to $OUT
# (default bench-out/): handles.txt, rgw.{txt,json,png}, cephfs.{txt,json,png},
# rgw-prefetch.*, cephfs-prefetch.* and prefetch.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
source test/lib.sh
install_test_deps

out=${OUT:-bench-out}
scale=${SCALE:-1GiB}
mkdir -p "$out"
work=$(mktemp -d /var/tmp/granary-ceph-bench.XXXXXX) # on disk: /tmp may be tmpfs
ceph_dir=$work/ceph
pids=()
cleanup() {
	umount "$work/cf" 2>/dev/null || umount -l "$work/cf" 2>/dev/null || true
	"$work/granary" umount "$work/gmnt" >/dev/null 2>&1 || true
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	bash test/ceph/stop.sh "$ceph_dir" || true
	rm -rf "$work"
}
trap cleanup EXIT

step "Ceph test cluster"
bash test/ceph/start.sh "$ceph_dir"
set -a
source "$ceph_dir/s3.env"
set +a
conf=$ceph_dir/ceph.conf
mds_asok=$ceph_dir/run/ceph-mds.a.asok

step "BenchmarkHandles: one libcephfs handle against a pool of four"
GRANARY_CEPH_DIR=$ceph_dir CGO_ENABLED=1 go test -tags cephfs -run '^$' -bench '^BenchmarkHandles$' -benchtime 5x \
	./internal/ufs/cephfs/ | tee "$out/handles.txt"

step "build granary with native CephFS"
CGO_ENABLED=1 go build -tags cephfs -o "$work/granary" ./cmd/granary
g=$work/granary
cat >"$work/granary.yaml" <<EOT
datasets:
  - name: rgw
    ufs: s3://bench/imagenet
    open_mode: zero-message
    options: {endpoint: "$S3_ENDPOINT", path_style: true, access_key: "\${AWS_ACCESS_KEY_ID}", secret_key: "\${AWS_SECRET_ACCESS_KEY}"}
  - name: cf
    ufs: cephfs://cephfs/bench/imagenet
    open_mode: zero-message
    options: {conf: "$conf"}
EOT

step "gen imagenet ($scale) into radosgw and into CephFS (through ceph-fuse)"
"$g" bench gen --quiet --config "$work/granary.yaml" --to rgw --profile imagenet --scale "$scale"
mkdir -p "$work/cf"
ceph-fuse -c "$conf" "$work/cf" >/dev/null
"$g" bench gen --quiet --ufs "file://$work/cf/bench/imagenet" --profile imagenet --scale "$scale"
umount "$work/cf" # the writer's sizes reach the MDS; the reader below starts cold
for _ in $(seq 100); do pgrep -f "ceph-fuse -c $conf $work/cf" >/dev/null || break; sleep 0.1; done

step "granary up: 3 workers and a FUSE mount"
mkdir -p "$work/gmnt"
granary_up "$g" "$work/granary.yaml" "$work/state" "$work/gmnt" "$work/up.log"

step "bench run rgw: granary against a direct parallel SDK download"
"$g" bench run --quiet --config "$work/state/granary.yaml" --profile imagenet --epochs 3 --readers 16 \
	--path "granary=$work/gmnt/rgw" --baseline "sdk=dataset:rgw" \
	--json "$out/rgw.json" --png "$out/rgw.png" | tee "$out/rgw.txt"

step "bench run cephfs: granary against ceph-fuse, with the MDS's requests"
ceph-fuse -c "$conf" "$work/cf" >/dev/null
"$g" bench run --quiet --config "$work/state/granary.yaml" --mds-admin-socket "$mds_asok" --profile imagenet --epochs 3 --readers 16 \
	--path "granary=$work/gmnt/cf" --baseline "ceph-fuse=$work/cf/bench/imagenet" \
	--json "$out/cephfs.json" --png "$out/cephfs.png" | tee "$out/cephfs.txt"

step "granary again, cold, with --mount-prefetch: the first epoch of each dataset"
umount "$work/cf"
"$g" umount "$work/gmnt" >/dev/null 2>&1 || true
kill "${pids[-1]}" 2>/dev/null || true
wait "${pids[-1]}" 2>/dev/null || true
rm -rf "$work/state"
granary_up "$g" "$work/granary.yaml" "$work/state" "$work/gmnt" "$work/up-prefetch.log" --mount-prefetch
"$g" bench run --quiet --config "$work/state/granary.yaml" --profile imagenet --epochs 1 --readers 16 \
	--path "granary=$work/gmnt/rgw" --baseline "sdk=dataset:rgw" \
	--json "$out/rgw-prefetch.json" --png "$out/rgw-prefetch.png" | tee "$out/rgw-prefetch.txt"
ceph-fuse -c "$conf" "$work/cf" >/dev/null
"$g" bench run --quiet --config "$work/state/granary.yaml" --mds-admin-socket "$mds_asok" --profile imagenet --epochs 1 --readers 16 \
	--path "granary=$work/gmnt/cf" --baseline "ceph-fuse=$work/cf/bench/imagenet" \
	--json "$out/cephfs-prefetch.json" --png "$out/cephfs-prefetch.png" | tee "$out/cephfs-prefetch.txt"

# The first epoch of each run: granary with prefetch over without, and each
# over its baseline (whose own cold epoch was measured in each run).
python3 - "$out" <<'PY' | tee "$out/prefetch.txt"
import json, sys
out = sys.argv[1]
def first(name):
    r = json.load(open(f"{out}/{name}.json"))
    return {t["name"]: t["epochs"][0]["files_per_s"] for t in r["targets"]}
for ds, base in (("rgw", "sdk"), ("cephfs", "ceph-fuse")):
    off, on = first(ds), first(ds + "-prefetch")
    print(f"{ds}: cold epoch, files/s: granary {off['granary']:.0f}, with prefetch {on['granary']:.0f} "
          f"(x{on['granary'] / off['granary']:.2f}); {base} {off[base]:.0f} and {on[base]:.0f}; "
          f"granary / {base}: {off['granary'] / off[base]:.2f} without, {on['granary'] / on[base]:.2f} with prefetch")
PY
