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
flock "$lock" "$bindir/migbench" -guest "$guest" "$@" 2>&1 | tee "$out"
exit "${PIPESTATUS[0]}"
