#!/usr/bin/env bash
# The whole test suite: vet, unit and conformance tests (bolt and a real etcd), end-to-end
# tests against a real `rakhsh serve`, and a short run of every fuzz target.
set -euo pipefail
cd "$(dirname "$0")/.."

export RAKHSH_BIN="$PWD/bin/rakhsh"
export RAKHSH_GUEST_DIR="$PWD/test/guest/out"
FUZZTIME="${FUZZTIME:-4s}"

echo "== go vet"
go vet ./...

echo "== go test"
go test -count=1 -timeout 45m ./... 2>&1 | tee /tmp/rakhsh-go-test.log

echo "== fuzz targets (${FUZZTIME} each)"
FUZZTIME="$FUZZTIME" ./scripts/fuzz.sh
