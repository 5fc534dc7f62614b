# Rakhsh build and test entry points. `make run` and `make test` are the README's two commands.
GO      ?= go
BIN     := bin/rakhsh
DATADIR ?= /var/lib/rakhsh
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/rakhsh/rakhsh/internal/apiserver.Version=$(VERSION) -X github.com/rakhsh/rakhsh/internal/cli.Version=$(VERSION)

.PHONY: build deps run test test-unit test-e2e fuzz bench guest clean

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/rakhsh

# Installs the host packages Rakhsh and its tests use (Debian 12).
deps:
	./scripts/install-deps.sh

# Sets up a fresh Debian 12 machine and runs the all-in-one server in the foreground.
run: deps build
	./$(BIN) serve --data-dir $(DATADIR)

# The whole test suite: unit, conformance (bolt and a real etcd), fuzz seeds, end-to-end.
test: deps build guest
	./scripts/test.sh

guest:
	./test/guest/build.sh test/guest/out
	./test/guest/build-secureboot.sh test/guest/out

fuzz: build
	./scripts/fuzz.sh

bench: build
	./scripts/bench.sh

clean:
	rm -rf bin test/guest/out

# Rebuilds the web UI bundle (internal/ui/dist, committed and embedded) from web/: npm ci
# installs the packages pinned with their sha512 in web/package-lock.json, esbuild's Go API
# bundles them (see docs/ui.md).
.PHONY: ui
ui:
	cd web && npm ci --ignore-scripts --no-audit --no-fund
	$(GO) run ./web/build
