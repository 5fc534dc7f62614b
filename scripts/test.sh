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
# -json, turned back into plain `go test` output (failed tests' output and each package's
# result) followed by the slowest tests; the whole event stream is kept in
# /tmp/rakhsh-go-test.json.
go build -o bin/testreport ./scripts/testreport
go test -count=1 -timeout 80m -json ./... 2>&1 | tee /tmp/rakhsh-go-test.json | ./bin/testreport -slowest 40

echo "== fuzz targets (${FUZZTIME} each)"
FUZZTIME="$FUZZTIME" ./scripts/fuzz.sh
