#!/usr/bin/env bash
# API and store benchmarks (design.md section 9): runs BenchmarkAPI (bolt and a real etcd, the
# API server served in-process on a unix socket, 10,000 VirtualMachines preloaded) and
# BenchmarkFsync, then prints a bolt-vs-etcd table with the design targets.
#
#   scripts/bench.sh                 # everything
#   RAKHSH_BENCH_STORES=bolt scripts/bench.sh
#
# Knobs (environment, all optional): RAKHSH_BENCH_STORES (bolt,etcd), RAKHSH_BENCH_OBJECTS
# (10000), RAKHSH_BENCH_OPS (2000), RAKHSH_BENCH_WATCHERS (100), RAKHSH_BENCH_WATCH_UPDATES
# (100), RAKHSH_BENCH_LIST_RUNS (10), RAKHSH_BENCH_PRELOAD_WORKERS (8), RAKHSH_BENCH_DIR
# (where the bolt file and etcd data go; default the system temp dir), BENCH_COUNT (runs of
# the whole benchmark, default 1; with more the table shows median [min-max]), BENCH_OUT (raw
# `go test` output file; default /tmp/rakhsh-bench.txt).
set -euo pipefail
cd "$(dirname "$0")/.."

out="${BENCH_OUT:-/tmp/rakhsh-bench.txt}"
count="${BENCH_COUNT:-1}" # repetitions of the whole benchmark; the table shows the median [min-max]

echo "== machine"
echo "cpu:    $(nproc) x $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
echo "memory: $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
echo "kernel: $(uname -r)"
echo "go:     $(go version | awk '{print $3}')"
if command -v etcd >/dev/null 2>&1; then
  echo "etcd:   $(etcd --version 2>/dev/null | awk '/etcd Version/ {print $3}')"
fi
echo "disk:   $(df -T "${RAKHSH_BENCH_DIR:-${TMPDIR:-/tmp}}" | awk 'NR==2 {print $1, $2}')"
echo "load:   $(cut -d' ' -f1-3 /proc/loadavg) (1/5/15 min, before the run)"
echo

echo "== go test -bench, $count run(s) (raw output in $out)"
# One `go test` per run: -count would repeat only the sub-benchmarks on the same preloaded
# server, not the preload.
: >"$out"
bindir=$(mktemp -d)
trap 'rm -rf "$bindir"' EXIT
go test -c -o "$bindir/apiserver.test" ./internal/apiserver/
for run in $(seq 1 "$count"); do
  [ "$count" -gt 1 ] && echo "-- run $run of $count (load $(cut -d' ' -f1-3 /proc/loadavg))" | tee -a "$out"
  (cd internal/apiserver && "$bindir/apiserver.test" -test.run '^$' \
    -test.bench '^(BenchmarkAPI|BenchmarkFsync)$' -test.benchtime 1x -test.timeout 60m) 2>&1 | tee -a "$out"
  [ "${PIPESTATUS[0]}" -eq 0 ] || { echo "benchmark run $run failed" >&2; exit 1; }
done
echo

awk -v count="$count" '
/^Benchmark/ {
  name = $1
  sub(/-[0-9]+$/, "", name)
  for (i = 3; i + 1 <= NF; i += 2) {
    k = name SUBSEP $(i + 1)
    n[k]++
    val[k, n[k]] = $i + 0
  }
}
# median of the runs of one figure ("" when absent); lo and hi get the range.
function med(k,   c, i, j, t, a) {
  c = n[k]
  if (c == 0) return ""
  for (i = 1; i <= c; i++) a[i] = val[k, i]
  for (i = 2; i <= c; i++) for (j = i; j > 1 && a[j - 1] > a[j]; j--) { t = a[j]; a[j] = a[j - 1]; a[j - 1] = t }
  lo = a[1]; hi = a[c]
  return (c % 2) ? a[(c + 1) / 2] : (a[c / 2] + a[c / 2 + 1]) / 2
}
function num(x, unit) {
  if (unit ~ /B\/VM/ && unit != "B/VM-json") return sprintf("%.1f KiB", x / 1024)
  if (x >= 100) return sprintf("%.0f", x)
  if (x >= 10) return sprintf("%.1f", x)
  return sprintf("%.2f", x)
}
function cell(store, bench, unit, limit,   k, m, s) {
  k = ((bench == "Fsync") ? "BenchmarkFsync" : "BenchmarkAPI/" store "/" bench) SUBSEP unit
  m = med(k)
  if (m == "") return "n/a"
  s = num(m, unit)
  if (n[k] > 1) s = s " [" num(lo, unit) "-" num(hi, unit) "]"
  if (limit != "") s = s ((m <= limit + 0) ? " pass" : " MISS")
  return s
}
function row(label, bench, unit, lb, le, target) {
  printf "| %-44s | %-30s | %-30s | %-13s |\n", label, cell("bolt", bench, unit, lb), cell("etcd", bench, unit, le), target
}
END {
  if (count > 1) print "median of " count " runs [min-max]; pass/MISS judges the median"
  printf "| %-44s | %-30s | %-30s | %-13s |\n", "figure", "bolt", "etcd", "target"
  printf "|%s|%s|%s|%s|\n", "----------------------------------------------", "--------------------------------", "--------------------------------", "---------------"
  row("create p50 (ms)", "Create", "p50-ms")
  row("create p99 (ms)", "Create", "p99-ms", 20, 50, "20 / 50")
  row("create mean (ms)", "Create", "mean-ms")
  row("get p50 (ms)", "Get", "p50-ms")
  row("get p99 (ms)", "Get", "p99-ms")
  row("get mean (ms)", "Get", "mean-ms")
  row("update p50 (ms)", "Update", "p50-ms")
  row("update p99 (ms)", "Update", "p99-ms", 20, 50, "20 / 50")
  row("update mean (ms)", "Update", "mean-ms")
  row("list all, client decode, p50 (ms)", "List", "p50-ms", 250, 250, "250")
  row("list all, client decode, CPU/call (ms)", "List", "cpu-ms")
  row("list all, raw HTTP, p50 (ms)", "ListRaw", "p50-ms")
  row("list all, raw HTTP, CPU/call (ms)", "ListRaw", "cpu-ms")
  row("list all, store only, p50 (ms)", "ListStore", "p50-ms")
  row("list all, etcd server CPU/call (ms)", "ListStore", "etcdcpu-ms")
  row("list response size (MiB)", "ListRaw", "MiB")
  row("watch fan-out to all, p50 (ms)", "WatchFanout", "p50-ms")
  row("watch fan-out to all, p99 (ms)", "WatchFanout", "p99-ms")
  row("watch fan-out after PUT returned, p50 (ms)", "WatchFanout", "afterput-p50-ms")
  row("server Go heap per VM after preload", "Memory", "heap-B/VM", 10240, 10240, "10 KiB")
  row("server RSS per VM after preload", "Memory", "rss-B/VM", 10240, 10240, "10 KiB")
  row("server anon RSS per VM after preload", "Memory", "rssanon-B/VM")
  row("server Go heap per VM at the end", "MemoryEnd", "heap-B/VM", 10240, 10240, "10 KiB")
  row("server RSS per VM at the end", "MemoryEnd", "rss-B/VM")
  row("bolt file per VM", "Memory", "boltfile-B/VM")
  row("etcd process RSS per VM after preload", "Memory", "etcdrss-B/VM")
  row("etcd process RSS per VM at the end", "MemoryEnd", "etcdrss-B/VM")
  row("etcd db size per VM", "Memory", "etcddb-B/VM")
  row("stored VM JSON (B)", "Preload", "B/VM-json")
  row("preload through the API (s)", "Preload", "total-s")
  row("preload rate (VMs/s)", "Preload", "VMs/s")
  row("raw 4 KiB write+fdatasync p50 (ms)", "Fsync", "p50-ms")
  row("raw 4 KiB write+fdatasync p99 (ms)", "Fsync", "p99-ms")
  row("load average (1 min) at the list runs", "List", "load1")
}
' "$out"
