# livegate: `make run` serves the test stream at https://localhost:8443/, `make test` runs every test.
CARGO ?= cargo
ARGS ?=
# Tests run the release build: one build serves `make run`, the tests and the benchmarks, and
# WebRTC's per-packet work in a debug build is too slow for several browser viewers on 2 cores.
RELEASE := --release
BIN := target/release/livegate

.PHONY: run build test test-unit test-integration test-web test-k8s test-e2e test-image fuzz bench bench-quick deps deps-test fmt

run: deps
	$(CARGO) run $(RELEASE) -- $(ARGS)

build: deps
	$(CARGO) build $(RELEASE) --bins --examples

deps:
	@scripts/install-deps run

deps-test:
	@scripts/install-deps test

test: deps-test test-unit test-integration test-web test-k8s test-e2e test-image

test-unit:
	$(CARGO) fmt --all -- --check
	$(CARGO) test $(RELEASE) --lib

# WebRTC peers need a non-loopback interface: run inside a private network namespace.
test-integration:
	$(CARGO) test $(RELEASE) --tests --no-run
	scripts/netns-run $(CARGO) test $(RELEASE) --offline --tests

test-web:
	node web/strip.test.mjs

test-k8s:
	$(CARGO) build $(RELEASE) --bin livegate
	LIVEGATE_BIN=$(BIN) tests/k8s/run.sh

test-e2e:
	$(CARGO) build $(RELEASE) --bin livegate
	LIVEGATE_BIN=$(BIN) tests/e2e/run.sh

# The Dockerfile's runtime stage built with buildah around this release binary, on a debootstrapped
# debian:bookworm-slim (cached in target/image-cache), then run as k8s/base runs it (podman, read-only,
# uid 10001): HLS and WebRTC from the container. Needs root. docs/TESTING.md, The image.
test-image:
	$(CARGO) build $(RELEASE) --bin livegate --example load_viewers
	LIVEGATE_BIN=$(BIN) tests/image/run.sh

# The fuzz targets of tests/fuzz.rs (make test runs 100 000 inputs each) with many more inputs.
FUZZ_CASES ?= 2000000
fuzz:
	LIVEGATE_FUZZ_CASES=$(FUZZ_CASES) $(CARGO) test $(RELEASE) --test fuzz

# Benchmarks (docs/BENCHMARKS.md): `make bench` (full, rewrites docs/BENCHMARKS.md) or `make bench QUICK=1`.
QUICK ?=
bench:
	$(CARGO) build $(RELEASE) --bin livegate --example load_viewers
	LIVEGATE_BIN=$(BIN) bench/run.sh $(if $(filter-out 0,$(QUICK)),--quick)

bench-quick:
	$(MAKE) bench QUICK=1

fmt:
	$(CARGO) fmt --all
