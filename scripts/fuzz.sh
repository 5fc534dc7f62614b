#!/usr/bin/env bash
# Runs every fuzz target of the module for FUZZTIME each (default 30s; the test suite uses 4s),
# one after the other, and fails if any finds a crasher (written to its testdata/fuzz).
#   FUZZTIME=2m scripts/fuzz.sh
set -euo pipefail
cd "$(dirname "$0")/.."
FUZZTIME="${FUZZTIME:-30s}"
fuzz_pass=0
fuzz_fail=0
while IFS= read -r line; do
  file=${line%%:*}
  name=$(sed -E 's/.*func (Fuzz[A-Za-z0-9_]*).*/\1/' <<<"$line")
  pkg="./$(dirname "$file")"
  # A fuzz run on a loaded machine can end with "context deadline exceeded" while its
  # workers shut down; that is retried. A crasher (a failing input written to testdata) never is.
  ok=0
  for attempt in 1 2 3; do
    if go test -run '^$' -fuzz "^${name}\$" -fuzztime "$FUZZTIME" -parallel 1 "$pkg" >/tmp/rakhsh-fuzz.log 2>&1; then
      ok=1
      break
    fi
    if grep -q "Failing input written to" /tmp/rakhsh-fuzz.log; then
      break
    fi
    echo "fuzz target $name: attempt $attempt ended without a crasher ($(grep -m1 -E 'deadline|FAIL' /tmp/rakhsh-fuzz.log)); retrying"
  done
  if [ "$ok" -eq 1 ]; then
    fuzz_pass=$((fuzz_pass + 1))
  else
    fuzz_fail=$((fuzz_fail + 1))
    echo "fuzz target $name in $pkg failed:"
    tail -n 30 /tmp/rakhsh-fuzz.log
  fi
done < <(grep -rn --include='*_test.go' -E '^func Fuzz[A-Za-z0-9_]*\(' . | grep -v '/test/guest/out/')
echo "fuzz: ${fuzz_pass} passed, ${fuzz_fail} failed"
[ "$fuzz_fail" -eq 0 ]
