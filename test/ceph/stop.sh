#!/usr/bin/env bash
# Stops the cluster test/ceph/start.sh started in DIR: unmounts CephFS mounts
# below DIR, then signals each recorded daemon by PID (only if it still runs
# with DIR's ceph.conf), newest first, and waits for it to exit.
set -uo pipefail

dir=${1:?usage: stop.sh DIR}
[[ -d $dir ]] || exit 0
dir=$(cd "$dir" && pwd)
conf=$dir/ceph.conf

# Mounts of this cluster: anything mounted below DIR.
awk -v d="$dir/" 'index($2, d) == 1 { print $2 }' /proc/mounts | sort -r | while read -r m; do
	umount -l "$m" 2>/dev/null || true
done

ours() { kill -0 "$1" 2>/dev/null && tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -qF -- "$conf"; }

[[ -s $dir/pids ]] || exit 0
pids=()
while read -r _ pid; do
	ours "$pid" && pids=("$pid" "${pids[@]}")
done <"$dir/pids"
for pid in "${pids[@]}"; do
	kill -TERM "$pid" 2>/dev/null
done
for _ in $(seq 40); do
	left=0
	for pid in "${pids[@]}"; do
		ours "$pid" && left=1
	done
	((left)) || exit 0
	sleep 0.5
done
for pid in "${pids[@]}"; do
	ours "$pid" && kill -KILL "$pid" 2>/dev/null
done
exit 0
