#!/usr/bin/env bash
# A throw-away Ceph cluster on one host, for granary's tests: one monitor, one
# manager, one OSD (bluestore on a sparse file), one MDS serving the CephFS
# "cephfs", and radosgw with an S3 user — all on 127.0.0.1, all state under
# DIR, every daemon recorded by PID in DIR/pids so that stop.sh stops exactly
# these.
#
#   test/ceph/start.sh DIR     # start (or restart what is not running)
#   test/ceph/stop.sh DIR      # stop
#
# After start: DIR/ceph.conf and DIR/keyring (client.admin) for clients,
# DIR/s3.env (S3_ENDPOINT, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) for RGW,
# admin sockets in DIR/run (MDS counters: ceph --admin-daemon DIR/run/ceph-mds.a.asok perf dump).
#
# Knobs: MON_PORT (3300), MON_V1_PORT (6789), RGW_PORT (7480), SKIP_APT=1.
set -euo pipefail

dir=${1:?usage: start.sh DIR}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
conf=$dir/ceph.conf
mon_port=${MON_PORT:-3300}
mon_v1_port=${MON_V1_PORT:-6789}
rgw_port=${RGW_PORT:-7480}
started=$SECONDS

say() { echo "[ceph $((SECONDS - started))s] $*" >&2; }
fail() { say "FAILED: $*"; exit 1; }
ceph_cli() { timeout 60 ceph -c "$conf" "$@"; }

install_packages() {
	[[ -n ${SKIP_APT:-} ]] && return
	local want=(ceph-mon ceph-mgr ceph-osd ceph-mds radosgw ceph-fuse ceph-common libcephfs-dev uuid-runtime curl python3)
	local missing=()
	for p in "${want[@]}"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
	done
	((${#missing[@]})) || return 0
	say "apt-get install ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >"$dir/apt.log" 2>&1 || { tail -20 "$dir/apt.log" >&2; fail "apt-get install"; }
}

# running NAME: the PID recorded for NAME is alive and is a daemon of this cluster.
running() {
	local pid
	pid=$(awk -v n="$1" '$1 == n { p = $2 } END { print p }' "$dir/pids")
	[[ -n $pid ]] && kill -0 "$pid" 2>/dev/null && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$conf"
}

# daemon NAME PIDFILE COMMAND...: start a daemon (it forks) unless it runs, and record its PID.
daemon() {
	local name=$1 pidfile=$2
	shift 2
	if running "$name"; then
		say "$name is running"
		return
	fi
	rm -f "$pidfile"
	"$@" </dev/null >>"$dir/log/$name.out" 2>&1 || fail "$name did not start (see $dir/log/$name.out)"
	local pid="" tries=0
	until [[ -s $pidfile ]] && pid=$(<"$pidfile") && kill -0 "$pid" 2>/dev/null; do
		((++tries < 100)) || fail "$name wrote no PID (see $dir/log)"
		sleep 0.1
	done
	grep -v "^$name " "$dir/pids" >"$dir/pids.new" || true
	echo "$name $pid" >>"$dir/pids.new"
	mv "$dir/pids.new" "$dir/pids"
	say "$name started, PID $pid"
}

# state NAME: the state a daemon reports on its own admin socket (the cluster
# maps lag behind after a restart).
state() {
	timeout 10 ceph --admin-daemon "$dir/run/ceph-$1.asok" status 2>/dev/null |
		python3 -c 'import json, sys; print(json.load(sys.stdin).get("state", ""))' 2>/dev/null || true
}

# in_state NAME STATE: whether a daemon reports STATE (for await).
in_state() { [[ $(state "$1") == "$2" ]]; }

# await WHAT COMMAND...: retry COMMAND for up to two minutes.
await() {
	local what=$1
	shift
	for _ in $(seq 240); do
		"$@" && return 0
		sleep 0.5
	done
	fail "$what"
}

write_conf() {
	[[ -s $conf ]] && return
	cat >"$conf" <<EOF
[global]
fsid = $(uuidgen)
mon initial members = a
mon host = [v2:127.0.0.1:$mon_port,v1:127.0.0.1:$mon_v1_port]
public addr = 127.0.0.1
public network = 127.0.0.0/8
ms bind ipv6 = false
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
auth allow insecure global id reclaim = false
mon warn on insecure global id reclaim allowed = false
run dir = $dir/run
crash dir = $dir/crash
admin socket = $dir/run/\$cluster-\$name.asok
log file = $dir/log/\$cluster-\$name.log
log to stderr = false
err to stderr = false
# A single OSD: one copy of everything, few placement groups, no autoscaling.
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon max pg per osd = 1000
mon data avail warn = 2
mon data avail crit = 1

# Daemons keep their own keyrings in their data directories; the admin
# keyring is for clients only (in [global] it would shadow the daemons').
[mon]
pid file = $dir/run/\$cluster-\$name.pid
mon data = $dir/data/\$cluster-\$name
[mgr]
pid file = $dir/run/\$cluster-\$name.pid
mgr data = $dir/data/\$cluster-\$name
[osd]
pid file = $dir/run/\$cluster-\$name.pid
osd data = $dir/data/\$cluster-\$name
osd objectstore = bluestore
osd memory target = 1073741824
bluestore block create = true
bluestore block size = 21474836480
bluestore block db create = false
bluestore block wal create = false
[mds]
pid file = $dir/run/\$cluster-\$name.pid
mds data = $dir/data/\$cluster-\$name
mds cache memory limit = 1073741824
[client.rgw.gw]
pid file = $dir/run/\$cluster-\$name.pid
keyring = $dir/data/rgw.keyring
rgw frontends = beast endpoint=127.0.0.1:$rgw_port
rgw data = $dir/data/rgw
[client]
keyring = $dir/keyring
log file = $dir/log/client.log
admin socket = $dir/run/\$cluster-\$name.\$pid.asok
EOF
	say "wrote $conf"
}

bootstrap_mon() {
	[[ -e $dir/data/ceph-mon.a/ready ]] && return
	rm -rf "$dir/data/ceph-mon.a"
	ceph-authtool --create-keyring "$dir/mon.keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
	ceph-authtool --create-keyring "$dir/keyring" --gen-key -n client.admin \
		--cap mon 'allow *' --cap osd 'allow *' --cap mds 'allow *' --cap mgr 'allow *' >/dev/null
	ceph-authtool "$dir/mon.keyring" --import-keyring "$dir/keyring" >/dev/null
	monmaptool --create --fsid "$(ceph-conf -c "$conf" --lookup fsid)" \
		--addv a "[v2:127.0.0.1:$mon_port,v1:127.0.0.1:$mon_v1_port]" "$dir/monmap" >/dev/null
	ceph-mon -c "$conf" -i a --mkfs --monmap "$dir/monmap" --keyring "$dir/mon.keyring" >"$dir/log/mon-mkfs.out" 2>&1 ||
		fail "mon mkfs (see $dir/log/mon-mkfs.out)"
	touch "$dir/data/ceph-mon.a/ready"
}

# key ENTITY FILE CAPS...: create a daemon's key once.
key() {
	local entity=$1 file=$2
	shift 2
	[[ -s $file ]] && return
	mkdir -p "$(dirname "$file")"
	ceph_cli auth get-or-create "$entity" "$@" -o "$file" >/dev/null
}

bootstrap_osd() {
	[[ -e $dir/data/ceph-osd.0/ready ]] && return
	rm -rf "$dir/data/ceph-osd.0"
	mkdir -p "$dir/data/ceph-osd.0"
	local uuid id
	uuid=$(uuidgen)
	id=$(ceph_cli osd new "$uuid")
	[[ $id == 0 ]] || fail "the new OSD got id '$id', not 0: $dir holds an old cluster (stop.sh, then remove it)"
	# The key first: mkfs fetches the monitors' config with it.
	key osd.0 "$dir/data/ceph-osd.0/keyring" mon 'allow profile osd' mgr 'allow profile osd' osd 'allow *'
	ceph-osd -c "$conf" -i 0 --mkfs --osd-uuid "$uuid" >"$dir/log/osd-mkfs.out" 2>&1 ||
		fail "osd mkfs (see $dir/log/osd-mkfs.out)"
	touch "$dir/data/ceph-osd.0/ready"
}

make_fs() {
	ceph_cli fs ls 2>/dev/null | grep -q "name: cephfs," && return
	ceph_cli osd pool create cephfs_metadata 8 8 >/dev/null 2>&1
	ceph_cli osd pool create cephfs_data 8 8 >/dev/null 2>&1
	ceph_cli fs new cephfs cephfs_metadata cephfs_data >/dev/null 2>&1
	say "created the file system cephfs"
}

s3_user() {
	[[ -s $dir/s3.env ]] && return
	local admin=(timeout 60 radosgw-admin -c "$conf" -n client.admin)
	"${admin[@]}" user info --uid=granary >"$dir/data/s3-user.json" 2>/dev/null ||
		"${admin[@]}" user create --uid=granary --display-name=granary >"$dir/data/s3-user.json" 2>"$dir/log/s3-user.err" ||
		fail "create the S3 user (see $dir/log/s3-user.err)"
	python3 -c '
import json, sys
k = json.load(open(sys.argv[1]))["keys"][0]
print("S3_ENDPOINT=http://127.0.0.1:" + sys.argv[2])
print("AWS_ACCESS_KEY_ID=" + k["access_key"])
print("AWS_SECRET_ACCESS_KEY=" + k["secret_key"])
' "$dir/data/s3-user.json" "$rgw_port" >"$dir/s3.env"
	say "S3 user in $dir/s3.env"
}

install_packages
command -v ceph-mon >/dev/null || fail "ceph-mon is not installed"
mkdir -p "$dir"/{data,log,run,crash}
touch "$dir/pids"
write_conf
bootstrap_mon
daemon mon.a "$dir/run/ceph-mon.a.pid" ceph-mon -c "$conf" -i a
await "the monitor does not answer" ceph_cli -s >/dev/null 2>&1
key mgr.x "$dir/data/ceph-mgr.x/keyring" mon 'allow profile mgr' osd 'allow *' mds 'allow *'
daemon mgr.x "$dir/run/ceph-mgr.x.pid" ceph-mgr -c "$conf" -i x
bootstrap_osd
daemon osd.0 "$dir/run/ceph-osd.0.pid" ceph-osd -c "$conf" -i 0
await "osd.0 is not active (see $dir/log/ceph-osd.0.log)" in_state osd.0 active
key mds.a "$dir/data/ceph-mds.a/keyring" mon 'allow profile mds' mgr 'allow profile mds' osd 'allow rwx' mds 'allow *'
make_fs
daemon mds.a "$dir/run/ceph-mds.a.pid" ceph-mds -c "$conf" -i a
key client.rgw.gw "$dir/data/rgw.keyring" mon 'allow rw' osd 'allow rwx' mgr 'allow rw'
mkdir -p "$dir/data/rgw"
daemon rgw.gw "$dir/run/ceph-client.rgw.gw.pid" radosgw -c "$conf" -n client.rgw.gw
await "the MDS is not active (see $dir/log/ceph-mds.a.log)" in_state mds.a up:active
await "radosgw does not answer on 127.0.0.1:$rgw_port" curl -fs -o /dev/null "http://127.0.0.1:$rgw_port/"
s3_user
await "the cluster is not healthy" bash -c "timeout 20 ceph -c '$conf' health | grep -q HEALTH_OK"
say "up: ceph -c $conf -s"
