#!/usr/bin/env bash
# The cluster benchmarks of test/multihost: workers, mounts and etcd each in
# a network namespace of its own, every figure a ratio to a baseline measured
# in the same run. Long, and therefore not part of CI.
#   bash test/cluster-bench.sh                 # all four
#   bash test/cluster-bench.sh NearCopies      # those matching a pattern
#   GRANARY_BENCH_LOAD_SCALE=4GiB bash test/cluster-bench.sh LoadScaling
set -euo pipefail
cd "$(dirname "$0")/.."
source test/lib.sh
install_test_deps

pattern=${1:-.}
step "go test -bench $pattern ./test/multihost/"
GRANARY_CLUSTER_BENCH=1 go test -run '^$' -bench "$pattern" -benchtime 1x -timeout 2h -v ./test/multihost/ |
	grep -v '^        {' | grep -E '^(Benchmark|---|    |ok|PASS|FAIL)'
