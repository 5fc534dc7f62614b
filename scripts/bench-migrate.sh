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
# BARE_LINKS (default loopback) says over what the bare QEMUs migrate, comma-separated:
# loopback (both QEMUs in this namespace, 127.0.0.1) and underlay (each in a network namespace
# of its own, eth0 a veth on one bridge in a third: the same path as the test cluster's hosts,
# MTU 1500; the namespaces rbm-a, rbm-b and rbm-ul are made and removed by this script).
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
links="${BARE_LINKS:-loopback}"
trap 'rm -rf "$bindir"' EXIT
go build -o "$bindir/migbench" ./test/bench/migrate
# underlay_down removes the underlay's namespaces (and with them their veths and bridge).
underlay_down() {
  for ns in rbm-a rbm-b rbm-ul; do ip netns del "$ns" 2>/dev/null || true; done
}
# underlay_up makes them anew (under the lock: a run waiting for it touches nothing). Each
# veth is made inside rbm-ul, so nothing is ever left in this namespace.
underlay_up() {
  underlay_down
  ip netns add rbm-ul &&
    ip -n rbm-ul link add rbm-br type bridge &&
    ip -n rbm-ul link set rbm-br up || return
  local i=1 h
  for h in a b; do
    ip netns add "rbm-$h" &&
      ip -n rbm-ul link add "rbm-${h}v" type veth peer name eth0 netns "rbm-$h" &&
      ip -n rbm-ul link set "rbm-${h}v" master rbm-br up &&
      ip -n "rbm-$h" addr add "10.238.0.$i/24" dev eth0 &&
      ip -n "rbm-$h" link set eth0 up &&
      ip -n "rbm-$h" link set lo up || return
    i=$((i + 1))
  done
}
# bare runs the bare baseline over each of BARE_LINKS.
bare() {
  local bindir=$1 guest=$2 links=$3 link
  shift 3
  for link in ${links//,/ }; do
    case $link in
      loopback) echo "== bare QEMU (loopback)"; "$bindir/migbench" -guest "$guest" "$@" || return ;;
      underlay) echo "== bare QEMU (underlay: rbm-a and rbm-b on a bridge)"
        underlay_up || { underlay_down; return 1; }
        local rc=0
        "$bindir/migbench" -guest "$guest" -underlay rbm-a=10.238.0.1,rbm-b=10.238.0.2 "$@" || rc=$?
        underlay_down
        [ "$rc" -eq 0 ] || return "$rc" ;;
      *) echo "BARE_LINKS: unknown link $link (loopback, underlay)" >&2; return 2 ;;
    esac
  done
}
export -f bare underlay_up underlay_down
echo "== waiting for $lock"
if [ -z "${PLATFORM:-}" ]; then
  flock "$lock" bash -c 'bare "$@"' bench "$bindir" "$guest" "$links" "$@" 2>&1 | tee "$out"
  exit "${PIPESTATUS[0]}"
fi
go test -c -o "$bindir/e2e.test" ./test/e2e
export RAKHSH_GUEST_DIR="$guest" RAKHSH_BIN="$PWD/bin/rakhsh"
export RAKHSH_BENCH_MIGRATION="${PLATFORM_RUNS:-5}" RAKHSH_BENCH_MIGRATION_CASES="${PLATFORM_CASES:-idle}"
flock "$lock" bash -c '
  bare "$1" "$2" "$3" "${@:4}" || exit
  echo "== the platform (rakhsh vm migrate between two hosts of a test cluster)"
  cd test/e2e && "$1/e2e.test" -test.run "^TestLiveMigrationBenchmark$" -test.v -test.timeout 60m | grep -E "RESULT|run [0-9]+:|^(--- |ok|FAIL|PASS)"
' bench "$bindir" "$guest" "$links" "$@" 2>&1 | tee "$out"
exit "${PIPESTATUS[0]}"
