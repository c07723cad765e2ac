# livegate: `make run` serves the test stream at https://localhost:8443/, `make test` runs every test.
CARGO ?= cargo
ARGS ?=

.PHONY: run build test test-unit test-integration test-web test-k8s test-e2e bench deps deps-test fmt

run: deps
	$(CARGO) run --release -- $(ARGS)

build: deps
	$(CARGO) build --release

deps:
	@scripts/install-deps run

deps-test:
	@scripts/install-deps test

test: deps-test test-unit test-integration test-web test-k8s test-e2e

test-unit:
	$(CARGO) fmt --all -- --check
	$(CARGO) test --lib

# WebRTC peers need a non-loopback interface: run inside a private network namespace.
test-integration:
	$(CARGO) test --tests --no-run
	scripts/netns-run $(CARGO) test --offline --tests

test-web:
	node web/strip.test.mjs

test-k8s:
	$(CARGO) build
	LIVEGATE_BIN=target/debug/livegate tests/k8s/run.sh

test-e2e:
	@echo "browser tests: see tests/e2e (issue 3)"

bench:
	@echo "benchmarks: see issue 4"

fmt:
	$(CARGO) fmt --all
