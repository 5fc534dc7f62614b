#!/usr/bin/env bash
# VM benchmarks (docs/benchmarks.md, "Virtual machines"): builds bin/rakhsh and runs
# BenchmarkVM (test/bench/vmbench) against a real `rakhsh serve` booting the test guest:
#
#   - one VM at a time, RAKHSH_VMBENCH_RUNS rounds alternating a bare QEMU started by hand with
#     the agent's own command line and a VM created through the API: time to the guest running
#     (QMP cont) and to its `RAKHSH-GUEST: ready` marker, and Rakhsh's overhead;
#   - RAKHSH_VMBENCH_VMS VMs created at once: time until all Running / all ready, and the RSS
#     of the `rakhsh serve` process (which hosts the node agent) per running VM.
#
#   scripts/bench-vm.sh
#   RAKHSH_VMBENCH_RUNS=3 RAKHSH_VMBENCH_VMS=0 scripts/bench-vm.sh     # quick, no mass run
#   RAKHSH_VMBENCH_HEAP=/tmp/heap.pb scripts/bench-vm.sh  # also the heap profile when all are ready
#
# Knobs (environment, all optional): RAKHSH_VMBENCH_RUNS (5), RAKHSH_VMBENCH_VMS (20; 0 skips
# the mass run), RAKHSH_VMBENCH_MEMORY (256Mi, one-at-a-time VMs), RAKHSH_VMBENCH_MASS_MEMORY
# (128Mi), RAKHSH_VMBENCH_DIR (parent of the data dir; keep it short: QEMU's unix sockets live
# there), RAKHSH_VMBENCH_KEEP (keep the data dir and serve.log), RAKHSH_GUEST_DIR (default
# test/guest/out), BENCH_OUT (raw output; default /tmp/rakhsh-bench-vm.txt).
set -euo pipefail
cd "$(dirname "$0")/.."

out="${BENCH_OUT:-/tmp/rakhsh-bench-vm.txt}"
guest="${RAKHSH_GUEST_DIR:-$PWD/test/guest/out}"
if [ ! -f "$guest/guest.qcow2" ]; then
  echo "== building the test guest into $guest"
  test/guest/build.sh "$guest"
fi

echo "== machine"
echo "cpu:    $(nproc) x $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
echo "memory: $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
echo "kernel: $(uname -r)"
echo "qemu:   $(qemu-system-x86_64 --version | head -1) (the accelerator the agent's probe chose is printed by the run)"
echo "go:     $(go version | awk '{print $3}')"
echo "load:   $(cut -d' ' -f1-3 /proc/loadavg) (1/5/15 min, before the run)"
echo

make build >/dev/null
bindir=$(mktemp -d)
trap 'rm -rf "$bindir"' EXIT
go test -c -o "$bindir/vmbench.test" ./test/bench/vmbench/
echo "== BenchmarkVM (raw output in $out)"
root=$PWD
(cd test/bench/vmbench && RAKHSH_BIN="$root/bin/rakhsh" RAKHSH_GUEST_DIR="$guest" \
  "$bindir/vmbench.test" -test.run '^$' -test.bench '^BenchmarkVM$' -test.benchtime 1x \
  -test.timeout 90m -test.v) 2>&1 | tee "$out"
status=${PIPESTATUS[0]}
echo "load:   $(cut -d' ' -f1-3 /proc/loadavg) (1/5/15 min, after the run)"
exit "$status"
