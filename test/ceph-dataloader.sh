#!/usr/bin/env bash
# A PyTorch DataLoader's first epoch on CephFS: through granary (3 workers
# and a FUSE mount, the defaults; then the same with --mount-prefetch)
# against a ceph-fuse mount, each on a fresh client, with the OSD's read
# operations and the MDS's requests per file. Not part of CI: about 10
# minutes at the default size.
#   bash test/ceph-dataloader.sh
# FILES (default 5000) files of 77-143 KiB in 100 class directories;
# WORKERS (default 8) DataLoader workers. CEPH_DIR names a running test
# cluster (test/ceph/start.sh) to use instead of starting one. The report
# goes to $OUT/dataloader.txt (default bench-out/).
set -euo pipefail
cd "$(dirname "$0")/.."
source test/lib.sh
install_test_deps

out=${OUT:-bench-out}
files=${FILES:-5000}
loaders=${WORKERS:-8}
mkdir -p "$out"
work=$(mktemp -d /var/tmp/granary-ceph-dl.XXXXXX)
ceph_dir=${CEPH_DIR:-$work/ceph}
pids=()
cleanup() {
	umount "$work/cf" 2>/dev/null || umount -l "$work/cf" 2>/dev/null || true
	[[ -x "$work/granary" ]] && "$work/granary" umount "$work/gmnt" >/dev/null 2>&1 || true
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	[[ -n "${CEPH_DIR:-}" ]] || bash test/ceph/stop.sh "$ceph_dir" || true
	rm -rf "$work"
}
trap cleanup EXIT

if [[ -z "${CEPH_DIR:-}" ]]; then
	step "Ceph test cluster"
	bash test/ceph/start.sh "$ceph_dir"
fi
conf=$ceph_dir/ceph.conf
osd_asok=$ceph_dir/run/ceph-osd.0.asok
mds_asok=$ceph_dir/run/ceph-mds.a.asok
counter() { # daemon socket, section, counter
	ceph --admin-daemon "$1" perf dump | /usr/bin/python3 -c "import json,sys; print(int(json.load(sys.stdin)['$2']['$3']))"
}
python=/usr/bin/python3 # Debian's, with python3-torch

step "build granary with native CephFS"
CGO_ENABLED=1 go build -tags cephfs -o "$work/granary" ./cmd/granary
g=$work/granary

root=dl$$ # a tree of its own: the cluster may be shared
step "write $files files into CephFS (through ceph-fuse)"
mkdir -p "$work/cf"
ceph-fuse -c "$conf" "$work/cf" >/dev/null
/usr/bin/python3 - "$work/cf/$root/train" "$files" <<'EOF'
import os, random, sys
root, n = sys.argv[1], int(sys.argv[2])
rnd = random.Random(1)
chunk = rnd.randbytes(143 << 10)
for i in range(n):
    d = os.path.join(root, f"c{i % 100:03d}")
    os.makedirs(d, exist_ok=True)
    size = (77 << 10) + rnd.randrange(66 << 10)
    with open(os.path.join(d, f"img{i:07d}.jpg"), "wb") as f:
        f.write(i.to_bytes(4, "little") + chunk[4:size])
EOF
umount "$work/cf" # the reader below starts cold
for _ in $(seq 100); do pgrep -f "ceph-fuse -c $conf $work/cf" >/dev/null || break; sleep 0.1; done

report=$out/dataloader.txt
: >"$report"
# run NAME DIR: the first epoch over DIR, with the OSD reads and MDS
# requests it caused per file.
run() {
	local name=$1 dir=$2 r0 m0 r1 m1 line
	r0=$(counter "$osd_asok" osd op_r)
	m0=$(counter "$mds_asok" mds request)
	line=$("$python" examples/pytorch/loader.py "$dir" --epochs 1 --workers "$loaders" | grep '^epoch 1')
	r1=$(counter "$osd_asok" osd op_r)
	m1=$(counter "$mds_asok" mds request)
	echo "$name: $line; $(awk -v a="$r0" -v b="$r1" -v n="$files" 'BEGIN{printf "%.2f", (b-a)/n}') OSD reads and $(awk -v a="$m0" -v b="$m1" -v n="$files" 'BEGIN{printf "%.2f", (b-a)/n}') MDS requests per file" | tee -a "$report"
}
# samples/s of a report line
rate() { grep "^$1:" "$report" | sed -E 's/.* ([0-9]+) samples\/s.*/\1/'; }

step "ceph-fuse, cold"
ceph-fuse -c "$conf" "$work/cf" >/dev/null
run ceph-fuse "$work/cf/$root/train"
umount "$work/cf"

cat >"$work/granary.yaml" <<EOT
datasets:
  - name: cf
    ufs: cephfs://cephfs/$root
    options: {conf: "$conf"}
EOT
for variant in defaults prefetch; do
	step "granary ($variant), cold"
	rm -rf "$work/state"
	mkdir -p "$work/gmnt"
	extra=()
	[[ $variant == prefetch ]] && extra=(--mount-prefetch)
	"$g" up --config "$work/granary.yaml" --workers 3 --state-dir "$work/state" --mem 2GiB --ssd 8GiB \
		--mount "$work/gmnt" "${extra[@]}" >"$work/up.log" 2>&1 &
	up=$!
	for _ in $(seq 300); do mountpoint -q "$work/gmnt" && [[ -e "$work/state/granary.yaml" ]] && break; sleep 0.1; done
	mountpoint -q "$work/gmnt" || { cat "$work/up.log"; exit 1; }
	run "granary-$variant" "$work/gmnt/cf/train"
	"$g" umount "$work/gmnt" >/dev/null 2>&1 || true
	kill "$up" 2>/dev/null || true
	wait "$up" 2>/dev/null || true
done
awk -v f="$(rate ceph-fuse)" -v d="$(rate granary-defaults)" -v p="$(rate granary-prefetch)" \
	'BEGIN{printf "first epoch, granary / ceph-fuse: %.2f with the defaults, %.2f with --mount-prefetch\n", d/f, p/f}' | tee -a "$report"
