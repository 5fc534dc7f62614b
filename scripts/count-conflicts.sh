#!/usr/bin/env bash
# Counts the requests `rakhsh serve` refuses with 409 Conflict while N VMs (diskless, 64 MiB,
# user-mode networking) are created one after another and each waited for until Running;
# prints the total and the count by path and by component (User-Agent), from serve's debug
# log. Used for docs/benchmarks.md ("Status writers and 409s").
#
#   scripts/count-conflicts.sh [BIN [N]]      # BIN default bin/rakhsh, N default 6
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-bin/rakhsh}
n=${2:-6}
[ -x "$bin" ] || make build >/dev/null
dir=$(mktemp -d /tmp/rk-conflicts.XXXXXX)
"$bin" serve --data-dir "$dir" --vm-networking user --accelerator tcg --log-level debug >"$dir/serve.log" 2>&1 &
serve=$!
cleanup() {
  "$bin" --server "unix://$dir/rakhsh.sock" delete vm --all >/dev/null 2>&1 || true
  sleep 3
  kill "$serve" 2>/dev/null || true
  wait "$serve" 2>/dev/null || true
  for f in "$dir"/run/vms/*/qemu.pid; do [ -f "$f" ] && kill -9 "$(cat "$f")" 2>/dev/null; done
  rm -rf "$dir"
}
trap cleanup EXIT
for _ in $(seq 100); do [ -S "$dir/rakhsh.sock" ] && break; sleep 0.1; done
node=$(hostname | tr "[:upper:]" "[:lower:]")
for _ in $(seq 300); do
  "$bin" --server "unix://$dir/rakhsh.sock" wait node "$node" --for condition=Ready --timeout 0 >/dev/null 2>&1 && break
  sleep 0.1
done
for i in $(seq "$n"); do
  "$bin" --server "unix://$dir/rakhsh.sock" apply -f - >/dev/null <<YAML
apiVersion: virtualization.rakhsh.io/v1alpha1
kind: VirtualMachine
metadata: {name: c$i}
spec: {runPolicy: AlwaysOnUnlessStoppedManually, cpu: {cores: 1}, memory: {size: 64Mi}, terminationGracePeriodSeconds: 0}
YAML
  "$bin" --server "unix://$dir/rakhsh.sock" wait vm "c$i" --for phase=Running --timeout 60s >/dev/null
done
sleep 1
refused=$(grep 'msg="request refused"' "$dir/serve.log" | grep 'code=409' || true)
echo "$n VMs created, each to Running: $(printf '%s' "$refused" | grep -c . || true) requests refused with 409"
printf '%s\n' "$refused" | grep . | sed -E 's/.* method=([A-Z]+) path=([^ ]+) .*/\1 \2/; s#/c[0-9]+(/|$)#/NAME\1#; s#(leases)/[^ ]+#\1/NAME#' | sort | uniq -c | sort -rn || true
printf '%s\n' "$refused" | grep -o 'userAgent=[^ ]*' | sort | uniq -c | sort -rn || true
