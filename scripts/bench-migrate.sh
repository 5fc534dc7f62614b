#!/usr/bin/env bash
# Live-migration benchmark, bare QEMU baseline (docs/benchmarks.md, "Live migration (bare QEMU
# baseline)"): builds test/bench/migrate and runs it under the machine-wide benchmark lock
# (/tmp/rakhsh-e2e.lock), so that no other QEMU benchmark or e2e run overlaps it.
#
#   scripts/bench-migrate.sh                          # all cases, 5 runs each
#   scripts/bench-migrate.sh -cases idle -runs 3      # any flag of the tool (-h lists them)
#
# Environment: RAKHSH_GUEST_DIR (default test/guest/out; built with test/guest/build.sh when
# missing), BENCH_OUT (raw output; default /tmp/rakhsh-bench-migrate.txt), BENCH_LOCK (lock file).
#
# PLATFORM=1 also measures the platform's own live migration right after, under the same lock
# (the side by side of docs/benchmarks.md): the e2e TestLiveMigrationBenchmark on a three-host
# cluster of its own, PLATFORM_RUNS migrations (default 5) of each of PLATFORM_CASES (default
# idle; also dirty-safe, dirty-autoconverge). Needs `make build` (bin/rakhsh) and root.
set -euo pipefail
cd "$(dirname "$0")/.."

out="${BENCH_OUT:-/tmp/rakhsh-bench-migrate.txt}"
guest="${RAKHSH_GUEST_DIR:-$PWD/test/guest/out}"
lock="${BENCH_LOCK:-/tmp/rakhsh-e2e.lock}"
if [ ! -f "$guest/guest.iso" ]; then
  echo "== building the test guest into $guest"
  test/guest/build.sh "$guest"
fi
bindir=$(mktemp -d)
trap 'rm -rf "$bindir"' EXIT
go build -o "$bindir/migbench" ./test/bench/migrate
echo "== waiting for $lock"
if [ -z "${PLATFORM:-}" ]; then
  flock "$lock" "$bindir/migbench" -guest "$guest" "$@" 2>&1 | tee "$out"
  exit "${PIPESTATUS[0]}"
fi
go test -c -o "$bindir/e2e.test" ./test/e2e
export RAKHSH_GUEST_DIR="$guest" RAKHSH_BIN="$PWD/bin/rakhsh"
export RAKHSH_BENCH_MIGRATION="${PLATFORM_RUNS:-5}" RAKHSH_BENCH_MIGRATION_CASES="${PLATFORM_CASES:-idle}"
flock "$lock" bash -c '
  echo "== bare QEMU"; "$1/migbench" -guest "$2" "${@:3}" || exit
  echo "== the platform (rakhsh vm migrate between two hosts of a test cluster)"
  cd test/e2e && "$1/e2e.test" -test.run "^TestLiveMigrationBenchmark$" -test.v -test.timeout 60m | grep -E "RESULT|run [0-9]+:|^(--- |ok|FAIL|PASS)"
' bench "$bindir" "$guest" "$@" 2>&1 | tee "$out"
exit "${PIPESTATUS[0]}"
