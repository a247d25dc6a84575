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
# - cephfs: the same tree on CephFS through granary, then through a ceph-fuse
#   mount, with the MDS's requests per epoch. Not in turns, unlike the
#   others: two clients of the same files share their capabilities, and the
#   MDS recalls them from one for the other. So each client's cold epoch is
#   measured alone: granary while no ceph-fuse is mounted, ceph-fuse freshly
#   mounted once granary is down;
# - prefetch: granary started again, cold, with --mount-prefetch: the first
#   epoch of the RGW dataset against the SDK again, and of the CephFS one.
# summary.txt gives every ratio: warm and cold epochs over their baselines,
# and each cold epoch with prefetch over the one without.
# SCALE (default 1GiB) sets the size of each dataset; reports go to $OUT
# (default bench-out/): handles.txt, rgw.*, rgw-prefetch.*, cephfs.*,
# cephfs-prefetch.*, cephfs-ceph-fuse.* (txt, json, png) and summary.txt.
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

# granary_down stops the `granary up` started last.
granary_down() {
	"$g" umount "$work/gmnt" >/dev/null 2>&1 || true
	kill "${pids[-1]}" 2>/dev/null || true
	wait "${pids[-1]}" 2>/dev/null || true
}

# bench NAME ARGS...: one `granary bench run` of the imagenet profile, its
# reports as $out/NAME.{txt,json,png}.
bench() {
	local name=$1
	shift
	"$g" bench run --quiet --profile imagenet --readers 16 --json "$out/$name.json" --png "$out/$name.png" "$@" |
		tee "$out/$name.txt"
}

step "granary up: 3 workers and a FUSE mount"
mkdir -p "$work/gmnt"
granary_up "$g" "$work/granary.yaml" "$work/state" "$work/gmnt" "$work/up.log"

step "bench run rgw: granary against a direct parallel SDK download"
bench rgw --config "$work/state/granary.yaml" --epochs 3 --path "granary=$work/gmnt/rgw" --baseline "sdk=dataset:rgw"

step "bench run cephfs: granary, with the MDS's requests (no ceph-fuse mounted)"
bench cephfs --config "$work/state/granary.yaml" --mds-admin-socket "$mds_asok" --epochs 3 --path "granary=$work/gmnt/cf"
granary_down

step "granary again, cold, with --mount-prefetch: the first epoch of each dataset"
rm -rf "$work/state"
granary_up "$g" "$work/granary.yaml" "$work/state" "$work/gmnt" "$work/up-prefetch.log" --mount-prefetch
bench rgw-prefetch --config "$work/state/granary.yaml" --epochs 1 --path "granary=$work/gmnt/rgw" --baseline "sdk=dataset:rgw"
bench cephfs-prefetch --config "$work/state/granary.yaml" --mds-admin-socket "$mds_asok" --epochs 1 --path "granary=$work/gmnt/cf"
granary_down

step "bench run cephfs: ceph-fuse, freshly mounted, with the MDS's requests (granary down)"
ceph-fuse -c "$conf" "$work/cf" >/dev/null
bench cephfs-ceph-fuse --mds-admin-socket "$mds_asok" --epochs 3 --path "ceph-fuse=$work/cf/bench/imagenet"
umount "$work/cf"

python3 - "$out" <<'PY' | tee "$out/summary.txt"
import json, sys
out = sys.argv[1]
def epochs(name, target):
    r = json.load(open(f"{out}/{name}.json"))
    return next(t["epochs"] for t in r["targets"] if t["name"] == target)
def line(what, a, b):
    return f"{what}: {a['files_per_s']:.0f} / {b['files_per_s']:.0f} files/s = {a['files_per_s'] / b['files_per_s']:.2f}"
g, s = epochs("rgw", "granary"), epochs("rgw", "sdk")
gp, sp = epochs("rgw-prefetch", "granary")[0], epochs("rgw-prefetch", "sdk")[0]
print("rgw, granary / sdk (same run, in turns):")
for e in range(len(g)):
    print("  " + line(f"epoch {e + 1}", g[e], s[e]))
print("  " + line("cold, with --mount-prefetch", gp, sp))
print("  " + line("cold, granary with prefetch / without", gp, g[0]))
c, f = epochs("cephfs", "granary"), epochs("cephfs-ceph-fuse", "ceph-fuse")
cp = epochs("cephfs-prefetch", "granary")[0]
mds = lambda ep: ep.get("mds_requests")
print("cephfs, granary / ceph-fuse (one after the other; MDS requests per epoch in brackets):")
for e in range(len(c)):
    print("  " + line(f"epoch {e + 1}", c[e], f[e]) + f" [{mds(c[e]):.0f} / {mds(f[e]):.0f}]")
print("  " + line("cold, with --mount-prefetch", cp, f[0]) + f" [{mds(cp):.0f}]")
print("  " + line("cold, granary with prefetch / without", cp, c[0]))
PY
