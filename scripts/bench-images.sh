#!/usr/bin/env bash
# Image benchmarks (docs/benchmarks.md, "Images"), side by side in one run against a real
# `rakhsh serve` (built into bin/rakhsh) on a fresh data dir:
#
#   1. HTTP import of a 2 GiB raw image (stored as qcow2) vs `curl URL -o FILE` followed by
#      `qemu-img convert -f raw -O qcow2` of the same file from the same server; rounds
#      alternate which goes first. Target: Rakhsh at >= 0.9x the speed of the pair.
#   2. Peak memory (VmHWM) of the `rakhsh serve` process across the first 2 GiB import, and
#      its idle RSS before.
#   3. Linked clones of a 1 GiB and of a 100 GiB virtual image: the disk controller's own time
#      (`took=` in the log) and API create -> Ready. Target: <= 50 ms for both.
#   4. Upload throughput of a 1 GiB-virtual qcow2 (stored as it is): `rakhsh image upload`
#      over the unix socket and `curl -T` over TLS, next to a plain `cp` of the same file.
#
#   scripts/bench-images.sh            # ~3 min; ROUNDS=3 by default
#
# Knobs: ROUNDS (3), BENCH_DIR (parent of the temp dir, default /var/tmp), KEEP=1 keeps the
# temp dir. Everything is served on 127.0.0.1; the HTTP server is python3's http.server.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${ROUNDS:-3}"
root=$PWD

echo "== machine"
echo "cpu:    $(nproc) x $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
echo "memory: $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
echo "kernel: $(uname -r)"
echo "qemu:   $(qemu-img --version | head -1)"
echo "go:     $(go version | awk '{print $3}')"
echo "load:   $(cut -d' ' -f1-3 /proc/loadavg) (1/5/15 min, before the run)"
echo

make build >/dev/null
work=$(mktemp -d "${BENCH_DIR:-/var/tmp}/rakhsh-imgbench.XXXXXX")
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  [ "${KEEP:-}" = 1 ] && { echo "kept $work"; return; }
  rm -rf "$work"
}
trap cleanup EXIT

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3f", b - a}'; }
mibs() { awk -v bytes="$1" -v s="$2" 'BEGIN {printf "%.0f", bytes / 1048576 / s}'; }

echo "== making the files"
files="$work/files"
mkdir -p "$files"
# 2 GiB raw disk: 768 MiB of random data, then zeros (sent over HTTP as real bytes).
head -c $((768 << 20)) /dev/urandom >"$files/big.raw"
truncate -s 2G "$files/big.raw"
size_big=$(stat -c %s "$files/big.raw")
qemu-img create -q -f qcow2 "$files/v1g.qcow2" 1G
qemu-img create -q -f qcow2 "$files/v100g.qcow2" 100G
head -c $((1 << 30)) "$files/big.raw" >"$work/up.raw"
qemu-img convert -q -f raw -O qcow2 "$work/up.raw" "$files/up.qcow2"
rm -f "$work/up.raw"
size_up=$(stat -c %s "$files/up.qcow2")

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
(cd "$files" && exec python3 -m http.server --bind 127.0.0.1 "$port" >/dev/null 2>&1) &
pids+=($!)
base="http://127.0.0.1:$port"

data="$work/data"
apiport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$root/bin/rakhsh" serve --data-dir "$data" --listen "127.0.0.1:$apiport" --log-level info --vm-networking user --allow-import-from 127.0.0.0/8 >"$work/serve.log" 2>&1 &
serve=$!
pids+=($serve)
export RAKHSH_SERVER="unix://$data/rakhsh.sock"
for _ in $(seq 100); do "$root/bin/rakhsh" get cvi >/dev/null 2>&1 && break; sleep 0.1; done
for _ in $(seq 50); do curl -sf "$base/v1g.qcow2" -o /dev/null && break; sleep 0.1; done
rk() { "$root/bin/rakhsh" "$@"; }
sleep 2
rss_idle=$(awk '/VmRSS/ {print $2}' "/proc/$serve/status")

import_rakhsh() { # name url -> seconds
  local t0 t1
  t0=$(now)
  printf 'apiVersion: virtualization.rakhsh.io/v1alpha1\nkind: ClusterVirtualImage\nmetadata: {name: %s}\nspec:\n  dataSource:\n    type: HTTP\n    http: {url: "%s"}\n' "$1" "$2" | rk apply -f - >/dev/null
  rk wait cvi "$1" --for phase=Ready --timeout 10m >/dev/null
  t1=$(now)
  elapsed "$t0" "$t1"
}
import_baseline() { # url -> seconds
  local t0 t1
  t0=$(now)
  curl -sS -o "$work/base.raw" "$1"
  qemu-img convert -q -f raw -O qcow2 "$work/base.raw" "$work/base.qcow2"
  sync -f "$work/base.qcow2"
  t1=$(now)
  rm -f "$work/base.raw" "$work/base.qcow2"
  elapsed "$t0" "$t1"
}

# Start from a quiet disk with the source file in the page cache for both sides.
sync
cat "$files/big.raw" >/dev/null
echo "== 1. HTTP import of a 2 GiB raw image vs curl + qemu-img convert ($ROUNDS rounds)"
printf '%-6s %-10s %12s %10s %12s %10s %8s\n' round first rakhsh_s MiB/s baseline_s MiB/s ratio
hwm_first=""
for r in $(seq "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then
    a=$(import_rakhsh "big$r" "$base/big.raw")
    [ -z "$hwm_first" ] && hwm_first=$(awk '/VmHWM/ {print $2}' "/proc/$serve/status")
    b=$(import_baseline "$base/big.raw")
    first=rakhsh
  else
    b=$(import_baseline "$base/big.raw")
    a=$(import_rakhsh "big$r" "$base/big.raw")
    first=baseline
  fi
  rk delete cvi "big$r" --wait --timeout 2m >/dev/null
  printf '%-6s %-10s %12s %10s %12s %10s %8s\n' "$r" "$first" "$a" "$(mibs "$size_big" "$a")" "$b" "$(mibs "$size_big" "$b")" \
    "$(awk -v a="$a" -v b="$b" 'BEGIN {printf "%.2f", b / a}')"
done
echo "(ratio = baseline time / rakhsh time: rakhsh speed relative to curl + qemu-img convert)"
echo
echo "== 2. memory of rakhsh serve"
echo "idle VmRSS before any import: $((rss_idle / 1024)) MiB"
echo "VmHWM (peak RSS) after the first 2 GiB import: $((hwm_first / 1024)) MiB"
echo

echo "== 3. linked clones"
import_rakhsh v1g "$base/v1g.qcow2" >/dev/null
import_rakhsh v100g "$base/v100g.qcow2" >/dev/null
printf '%-8s %-4s %14s %14s\n' image n controller_ms create_to_ready_ms
for img in v1g v100g; do
  for n in $(seq 5); do
    t0=$(now)
    printf 'apiVersion: virtualization.rakhsh.io/v1alpha1\nkind: VirtualDisk\nmetadata: {name: %s-%s}\nspec:\n  dataSource:\n    type: ObjectRef\n    objectRef: {kind: ClusterVirtualImage, name: %s}\n' "$img" "$n" "$img" | rk apply -f - >/dev/null
    rk wait vd "$img-$n" --for phase=Ready --timeout 1m >/dev/null
    t1=$(now)
    took=$(grep "disk ready" "$work/serve.log" | grep "disk=default/$img-$n " | sed -E 's/.*took=([0-9.]+)(ms|s).*/\1 \2/' | awk '{ if ($2 == "s") printf "%.0f", $1 * 1000; else printf "%s", $1 }')
    printf '%-8s %-4s %14s %14s\n' "$img" "$n" "$took" "$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.0f", (b - a) * 1000}')"
  done
done
echo

echo "== 4. upload of a $((size_up >> 20)) MiB qcow2 ($ROUNDS rounds)"
printf '%-6s %14s %10s %14s %10s %10s %10s\n' round cli_s MiB/s curl_s MiB/s cp_s MiB/s
for r in $(seq "$ROUNDS"); do
  printf 'apiVersion: virtualization.rakhsh.io/v1alpha1\nkind: ClusterVirtualImage\nmetadata: {name: upc%s}\nspec:\n  dataSource: {type: Upload}\n---\napiVersion: virtualization.rakhsh.io/v1alpha1\nkind: ClusterVirtualImage\nmetadata: {name: upk%s}\nspec:\n  dataSource: {type: Upload}\n' "$r" "$r" | rk apply -f - >/dev/null
  for _ in $(seq 100); do
    url=$(rk get cvi "upk$r" -o json | python3 -c 'import json,sys; print((json.load(sys.stdin).get("status",{}).get("imageUploadURLs") or {}).get("inCluster",""))')
    [ -n "$url" ] && break
    sleep 0.1
  done
  t0=$(now); rk image upload --no-progress "cvi/upc$r" "$files/up.qcow2" >/dev/null; t1=$(now)
  a=$(elapsed "$t0" "$t1")
  t0=$(now); curl -sS --fail-with-body --cacert "$data/tls.crt" -T "$files/up.qcow2" "$url" >/dev/null; t1=$(now)
  b=$(elapsed "$t0" "$t1")
  t0=$(now); cp "$files/up.qcow2" "$work/cp.qcow2"; sync -f "$work/cp.qcow2"; t1=$(now)
  c=$(elapsed "$t0" "$t1")
  rm -f "$work/cp.qcow2"
  rk delete cvi "upc$r" "upk$r" --wait --timeout 2m >/dev/null
  printf '%-6s %14s %10s %14s %10s %10s %10s\n' "$r" "$a" "$(mibs "$size_up" "$a")" "$b" "$(mibs "$size_up" "$b")" "$c" "$(mibs "$size_up" "$c")"
done
echo "load:   $(cut -d' ' -f1-3 /proc/loadavg) (1/5/15 min, after the run)"
