#!/usr/bin/env bash
# The MDS test at the issue's full size: 20,000 files of ~100 KiB in 200
# directories on CephFS, read for 3 epochs by 2 ceph-fuse mounts and then by
# 2 granary mounts in front of 3 workers. It starts its own Ceph cluster and
# stops it by PID at the end. About 10 minutes; CI runs the same test on
# 6,000 files (test/run.sh).
#   bash test/mds.sh            # 200x100
#   bash test/mds.sh 400x100    # DIRSxFILES
set -euo pipefail
cd "$(dirname "$0")/.."
source test/lib.sh
install_test_deps

step "Ceph test cluster"
ceph_dir=$(mktemp -d /tmp/granary-ceph.XXXXXX)
trap 'bash test/ceph/stop.sh "$ceph_dir"; rm -rf "$ceph_dir"' EXIT
bash test/ceph/start.sh "$ceph_dir"

step "TestCephFSSparesTheMDS on ${1:-200x100}"
GRANARY_CEPH_DIR=$ceph_dir GRANARY_CEPH_TREE=${1:-200x100} \
	go test -count=1 -v -timeout 1h -run '^TestCephFSSparesTheMDS$' ./test/cluster/
