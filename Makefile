# trawl — see README.md. `make run` starts every role on this machine; `make test` runs the suite.
GO        ?= go
BIN       ?= bin/trawl
DATA_DIR  ?= ./data
# The quickstart scans this machine, so loopback is allowed; every other
# special-purpose range stays excluded.
RUN_FLAGS ?= --scan.allow 127.0.0.0/8
STATICCHECK_VERSION ?= v0.8.2

.PHONY: build run test test-short deps bench bench-scan nmapcmp lint clean

build:
	$(GO) build -o $(BIN) .

run: build
	$(BIN) all --data-dir $(DATA_DIR) $(RUN_FLAGS)

# Debian packages the tests run against (installed when root; see .ci/deps).
deps:
	bash .ci/deps

# The full suite, with the race detector (what CI runs).
test: deps
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout 18m ./...

test-short:
	$(GO) test -count=1 -short ./...

bench:
	$(GO) test -run '^$$' -bench . -benchmem -count=1 ./...

# trawl's SYN scanner side by side with masscan, zmap and nmap on the netns
# testbed (root). BENCH_SCAN_FLAGS=--quick runs a /20 at two rates (~3 min).
BENCH_SCAN_FLAGS ?=
bench-scan:
	bash bench/bench-scan.sh $(BENCH_SCAN_FLAGS)

# service detection side by side with nmap -sV on real servers (root; ~1 min)
nmapcmp: deps
	TRAWL_NMAPCMP=1 $(GO) test ./bench/nmapcmp -run TestCompare -v -count=1

lint:
	$(GO) vet ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) ./...

clean:
	rm -rf bin
