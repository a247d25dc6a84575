#!/usr/bin/env bash
# `granary bench` on the four profiles, side by side: granary (3 workers and a
# FUSE mount, `granary up`) against a local copy of the same files and an
# rclone mount (--vfs-cache-mode full) of the same S3 bucket, served by
# versitygw on loopback. Not part of CI: it takes about half an hour.
#   bash test/bench-profiles.sh                  # imagenet shards records meta
#   bash test/bench-profiles.sh imagenet         # some of them
# Reports go to $OUT (default bench-out/): PROFILE.txt, .json and .png.
# SCALE_<profile> sets a profile's size (defaults: imagenet 2GiB, shards 4GiB,
# records 2GiB, meta 50000 files); DROP_CACHES=1 drops the page cache before
# every epoch.
set -euo pipefail
cd "$(dirname "$0")/.."
source test/lib.sh
install_test_deps
apt_install rclone

profiles=("$@")
((${#profiles[@]})) || profiles=(imagenet shards records meta)
out=${OUT:-bench-out}
mkdir -p "$out"
work=$(mktemp -d /var/tmp/granary-bench.XXXXXX) # on disk: /tmp may be tmpfs
pids=()
cleanup() {
	umount -l "$work/rmnt" 2>/dev/null || true
	"$work/granary" umount "$work/gmnt" >/dev/null 2>&1 || true
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT

step "build"
go build -o "$work/granary" ./cmd/granary
g="$work/granary"

step "versitygw on loopback"
port=$((20000 + RANDOM % 20000))
export AWS_ACCESS_KEY_ID=granary-bench AWS_SECRET_ACCESS_KEY=granary-bench-secret
mkdir -p "$work/s3/bench"
"$GRANARY_VERSITYGW" --port "127.0.0.1:$port" --access "$AWS_ACCESS_KEY_ID" --secret "$AWS_SECRET_ACCESS_KEY" \
	--keep-alive --quiet posix "$work/s3" &
pids+=($!)
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done

# Each dataset as a user would set it up: many small files open without a
# FUSE round trip (open_mode: zero-message); large files are one block each,
# so that the kernel reads them with passthrough (block_size: 1GiB).
declare -A tuning=([imagenet]="open_mode: zero-message" [meta]="open_mode: zero-message" [shards]="block_size: 1GiB" [records]="block_size: 1GiB")
{
	echo "datasets:"
	for p in "${profiles[@]}"; do
		cat <<EOT
  - name: $p
    ufs: s3://bench/$p
    ${tuning[$p]}
    options: {endpoint: "http://127.0.0.1:$port", path_style: true, access_key: "\${AWS_ACCESS_KEY_ID}", secret_key: "\${AWS_SECRET_ACCESS_KEY}"}
EOT
	done
} >"$work/granary.yaml"

declare -A scale=([imagenet]=${SCALE_imagenet:-2GiB} [shards]=${SCALE_shards:-4GiB} [records]=${SCALE_records:-2GiB} [meta]=${SCALE_meta:-50000})
for p in "${profiles[@]}"; do
	step "gen $p (${scale[$p]}): the bucket and a local copy, the same bytes"
	"$g" bench gen --quiet --config "$work/granary.yaml" --to "$p" --profile "$p" --scale "${scale[$p]}"
	mkdir -p "$work/local/$p"
	"$g" bench gen --quiet --ufs "file://$work/local/$p" --profile "$p" --scale "${scale[$p]}"
done

step "granary up: 3 workers and a FUSE mount"
mkdir -p "$work/gmnt" "$work/rmnt"
granary_up "$g" "$work/granary.yaml" "$work/state" "$work/gmnt" "$work/up.log"

step "rclone mount --vfs-cache-mode full of the same bucket"
# (without AWS_CA_BUNDLE: rclone's S3 SDK cannot load a CA bundle into its own transport)
env -u AWS_CA_BUNDLE RCLONE_CONFIG_S3_TYPE=s3 RCLONE_CONFIG_S3_PROVIDER=Other RCLONE_CONFIG_S3_ENDPOINT="http://127.0.0.1:$port" \
	RCLONE_CONFIG_S3_ACCESS_KEY_ID="$AWS_ACCESS_KEY_ID" RCLONE_CONFIG_S3_SECRET_ACCESS_KEY="$AWS_SECRET_ACCESS_KEY" \
	rclone mount s3:bench "$work/rmnt" --vfs-cache-mode full --cache-dir "$work/rclone-cache" --read-only >"$work/rclone.log" 2>&1 &
pids+=($!)
for _ in $(seq 300); do mountpoint -q "$work/rmnt" && break; sleep 0.1; done
mountpoint -q "$work/rmnt" || { cat "$work/rclone.log"; exit 1; }

drop=()
[[ "${DROP_CACHES:-}" == 1 ]] && drop=(--drop-caches)
for p in "${profiles[@]}"; do
	step "bench run $p"
	"$g" bench run --quiet --config "$work/state/granary.yaml" --profile "$p" --epochs 3 --readers 16 "${drop[@]}" \
		--path "granary=$work/gmnt/$p" --baseline "local=$work/local/$p" --baseline "rclone=$work/rmnt/$p" \
		--json "$out/$p.json" --png "$out/$p.png" | tee "$out/$p.txt"
done
