#!/usr/bin/env bash
# Runs every fuzz target of the module for FUZZTIME each (default 30s; the test suite uses 4s),
# FUZZJOBS targets at a time (default: the number of cores, at most 4), each target with one
# fuzzing worker, and fails if any finds a crasher (written to its testdata/fuzz).
#   FUZZTIME=2m scripts/fuzz.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export FUZZTIME="${FUZZTIME:-30s}"
jobs="${FUZZJOBS:-$(nproc)}"
[ "$jobs" -gt 4 ] && jobs=4

# fuzz_target DIR FILE:LINE:TEXT runs the fuzz target declared there and writes to DIR/NAME what
# is worth reading of its run, then a line "fuzz-result pass|fail NAME".
fuzz_target() {
  local dir=$1 line=$2 file name pkg log out="" ok=0 attempt
  file=${line%%:*}
  name=$(sed -E 's/.*func (Fuzz[A-Za-z0-9_]*).*/\1/' <<<"$line")
  pkg=$(dirname "$file") # ./dir: grep -rn . names files from ./
  log=$(mktemp /tmp/rakhsh-fuzz.XXXXXX)
  # A fuzz run on a loaded machine can end with "context deadline exceeded" while its
  # workers shut down; that is retried. A crasher (a failing input written to testdata) never is.
  for attempt in 1 2 3; do
    if go test -run '^$' -fuzz "^${name}\$" -fuzztime "$FUZZTIME" -parallel 1 "$pkg" >"$log" 2>&1; then
      ok=1
      break
    fi
    if grep -q "Failing input written to" "$log"; then
      break
    fi
    out+="fuzz target $name: attempt $attempt ended without a crasher ($(grep -m1 -E 'deadline|FAIL' "$log")); retrying"$'\n'
  done
  if [ "$ok" -eq 1 ]; then
    out+="fuzz-result pass $name"$'\n'
  else
    out+="fuzz target $name in $pkg failed:"$'\n'"$(tail -n 30 "$log")"$'\n'"fuzz-result fail $name"$'\n'
  fi
  rm -f "$log"
  printf '%s' "$out" >"$dir/$(tr / _ <<<"${pkg#./}").$name"
}
export -f fuzz_target

dir=$(mktemp -d /tmp/rakhsh-fuzz.XXXXXX)
trap 'rm -rf "$dir"' EXIT
grep -rn --include='*_test.go' -E '^func Fuzz[A-Za-z0-9_]*\(' . | grep -v '/test/guest/out/' |
  xargs -d '\n' -P "$jobs" -I{} bash -c 'fuzz_target "$1" "$2"' _ "$dir" {}
cat "$dir"/* | grep -v '^fuzz-result pass ' || true
fuzz_pass=$(cat "$dir"/* | grep -c '^fuzz-result pass ' || true)
fuzz_fail=$(cat "$dir"/* | grep -c '^fuzz-result fail ' || true)
echo "fuzz: ${fuzz_pass} passed, ${fuzz_fail} failed (${jobs} at a time)"
[ "$fuzz_fail" -eq 0 ] && [ "$fuzz_pass" -gt 0 ]
