# mlproxy: multi-leader replication for MySQL and MariaDB.
GO       ?= go
BIN      := bin/mlproxy
PKGS     := ./...
# mariadbd lives in /usr/sbin on Debian; tests start their own servers.
export PATH := $(PATH):/usr/sbin

.PHONY: build release test demo bench lint fuzz chaos clean

build:
	$(GO) build -o $(BIN) ./cmd/mlproxy

# A static release binary (no cgo, no libc: it runs on any Linux of the
# architecture), bin/mlproxy-$(GOOS)-$(GOARCH), with version, commit and
# build time stamped in for `mlproxy version`. Cross-build with
# `make release GOOS=linux GOARCH=arm64`; RELEASE_VERSION overrides the
# `git describe` version. The recipe prints `file` and `ldd` and fails
# unless a Linux binary is statically linked.
GOOS            ?= $(shell $(GO) env GOOS)
GOARCH          ?= $(shell $(GO) env GOARCH)
RELEASE_VERSION ?= $(shell git describe --tags --always --dirty)
RELEASE_COMMIT  ?= $(shell git rev-parse --short=12 HEAD)$(shell git diff --quiet HEAD -- 2>/dev/null || echo -dirty)
RELEASE_DATE    ?= $(shell date -u +%Y-%m-%dT%H:%M:%SZ)
RELEASE_BIN      = bin/mlproxy-$(GOOS)-$(GOARCH)
release:
	CGO_ENABLED=0 GOOS=$(GOOS) GOARCH=$(GOARCH) $(GO) build -trimpath \
	  -ldflags "-s -w -X main.version=$(RELEASE_VERSION) -X main.commit=$(RELEASE_COMMIT) -X main.date=$(RELEASE_DATE)" \
	  -o $(RELEASE_BIN) ./cmd/mlproxy
	@if command -v file >/dev/null 2>&1; then file $(RELEASE_BIN); fi
	@ldd $(RELEASE_BIN) 2>&1 || true
	@if [ "$(GOOS)" = linux ]; then \
	  if command -v file >/dev/null 2>&1; then \
	    file $(RELEASE_BIN) | grep -q 'statically linked' || { echo "$(RELEASE_BIN) is not statically linked" >&2; exit 1; }; \
	  elif ldd $(RELEASE_BIN) >/dev/null 2>&1; then \
	    echo "$(RELEASE_BIN) is dynamically linked" >&2; exit 1; \
	  fi; \
	  echo "$(RELEASE_BIN): static"; \
	fi
	@if [ "$(GOOS)/$(GOARCH)" = "$$($(GO) env GOHOSTOS)/$$($(GO) env GOHOSTARCH)" ]; then ./$(RELEASE_BIN) version; fi

# The whole suite: unit tests, real-server tests in every package, itest/.
test:
	@scripts/need.sh mariadb sysbench promtool chromium
	$(GO) vet $(PKGS)
	$(GO) test -count=1 -timeout 25m -p 2 $(PKGS)

# Three local regions, concurrent conflicting writes, convergence shown.
demo: build
	@scripts/need.sh mariadb
	$(GO) run ./itest/demo -bin $(BIN)

# Benchmarks (not tests): proxy vs direct with sysbench, replication apply
# rate vs source commit rate, and the Go micro-benchmarks in pairs.
bench: build
	@scripts/need.sh mariadb sysbench haproxy
	$(GO) test -run '^$$' -bench . -benchtime 2s ./hlc/ ./proxy/ ./applier/ ./replicator/
	$(GO) test -run '^$$' -bench TriggerWriteCost -benchtime 2000x ./schema/
	$(GO) run ./itest/bench -bin $(BIN) -plot bin/bench-proxy-ratios.svg

lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || (gofmt -l $$(git ls-files '*.go'); exit 1)
	$(GO) vet $(PKGS)

# Bounded fuzzing of the proxy: the handshake, every command packet,
# prepared-statement execution and statement classification (their seeds in
# proxy/testdata/fuzz also run in `make test`). FUZZTIME bounds each target.
FUZZTIME ?= 30s
FUZZ_TARGETS := FuzzHandshake FuzzCommand FuzzStmtExecute FuzzClassify FuzzExecParams
# A target that fails is run once more: an input that crashes is saved
# under proxy/testdata/fuzz and fails the second run too (seeds run first),
# while a worker lost to the shared machine's timing does not fail CI.
fuzz:
	@for t in $(FUZZ_TARGETS); do \
	  echo "fuzz $$t for $(FUZZTIME)"; \
	  $(GO) test ./proxy/ -run '^$$' -fuzz "^$$t$$" -fuzztime $(FUZZTIME) || \
	  { echo "fuzz $$t failed; running it again (saved crashers run first)"; \
	    $(GO) test ./proxy/ -run '^$$' -fuzz "^$$t$$" -fuzztime $(FUZZTIME) || exit 1; }; \
	done

# Fault injection: SCHEDULES seed-driven plans of DURATION each, three
# regions writing through their proxies while links get latency, bandwidth
# limits, resets, timeouts and partitions, and mlproxy and mariadbd are
# killed, frozen and restarted; then heal, converge, check every write.
# SEED=0 picks one from the time; a failure prints the seed to replay
# (make chaos SEED=... SCHEDULES=1). CHAOS_SUMMARY names a markdown file;
# CHAOS_ARGS passes more flags (-regions 5, -workers 4).
SCHEDULES ?= 3
SEED      ?= 0
DURATION  ?= 30s
CHAOS_SUMMARY ?=
CHAOS_TIMEOUT ?= 60m
CHAOS_ARGS    ?=
chaos:
	@scripts/need.sh mariadb
	$(GO) test ./itest/chaos/ -run '^TestChaos$$' -count=1 -v -timeout $(CHAOS_TIMEOUT) \
	  -args -schedules $(SCHEDULES) -seed $(SEED) -duration $(DURATION) \
	  $(if $(CHAOS_SUMMARY),-summary $(abspath $(CHAOS_SUMMARY))) $(CHAOS_ARGS)

clean:
	rm -rf bin
