#!/usr/bin/env bash
# granary's benchmarks: long, noisy, and therefore not part of CI. Each one
# reports its result as a ratio to a baseline measured in the same run.
#   bash test/bench.sh            # every benchmark
#   bash test/bench.sh RangedRead # those matching a pattern
set -euo pipefail
cd "$(dirname "$0")/.."
source test/lib.sh
install_test_deps

pattern=${1:-.}
step "go test -bench $pattern"
go test -run '^$' -bench "$pattern" -benchtime "${BENCHTIME:-5x}" -timeout 3h ./...
