# mlproxy: multi-leader replication for MySQL and MariaDB.
GO       ?= go
BIN      := bin/mlproxy
PKGS     := ./...
# mariadbd lives in /usr/sbin on Debian; tests start their own servers.
export PATH := $(PATH):/usr/sbin

.PHONY: build test demo bench lint fuzz clean

build:
	$(GO) build -o $(BIN) ./cmd/mlproxy

# The whole suite: unit tests, real-server tests in every package, itest/.
test:
	$(GO) vet $(PKGS)
	$(GO) test -count=1 -timeout 25m -p 2 $(PKGS)

# Three local regions, concurrent conflicting writes, convergence shown.
demo: build
	$(GO) run ./itest/demo -bin $(BIN)

# Benchmarks (not tests): proxy vs direct with sysbench, replication apply
# rate vs source commit rate, and the Go micro-benchmarks in pairs.
bench: build
	$(GO) test -run '^$$' -bench . -benchtime 2s ./hlc/ ./proxy/ ./applier/
	$(GO) test -run '^$$' -bench TriggerWriteCost -benchtime 2000x ./schema/
	$(GO) run ./itest/bench -bin $(BIN)

lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || (gofmt -l $$(git ls-files '*.go'); exit 1)
	$(GO) vet $(PKGS)

# Short fuzzing of the proxy's packet paths (the seeds also run in `make test`).
fuzz:
	$(GO) test ./proxy/ -run '^$$' -fuzz FuzzHandshake -fuzztime 30s
	$(GO) test ./proxy/ -run '^$$' -fuzz FuzzStmtExecute -fuzztime 30s

clean:
	rm -rf bin
