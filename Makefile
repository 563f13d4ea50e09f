# oim-operator developer entry points. `make test` is the README's test command; CI runs `make lint test`.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: all build test unit cluster-up cluster-down lint crds demo demo-down bench golden

all: build

build:
	$(CARGO) build --locked

## Unit and integration tests against a fresh local control plane (torn down afterwards).
test:
	bash tests/run.sh

## Unit tests only; no cluster.
unit:
	$(CARGO) test --locked --lib

cluster-up:
	bash tests/cluster/up.sh

cluster-down:
	bash tests/cluster/down.sh

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --locked --all-targets -- -D warnings
	@# One rustls crypto provider: ring. aws-lc-rs next to it makes the kube client panic at start.
	@if $(CARGO) tree --locked -i aws-lc-rs >/dev/null 2>&1; then echo "aws-lc-rs is in the dependency tree: keep ring as the only crypto provider" >&2; exit 1; fi

## Regenerate the checked-in CRDs from the Rust types.
crds:
	$(CARGO) run --locked --quiet -- crds > crds/oim.opea.dev.yaml

## A local control plane with simulated GPU nodes, the CRDs and the examples; keeps running.
demo:
	bash tests/cluster/demo.sh

demo-down:
	OIM_CLUSTER_STATE=/tmp/oim-demo bash tests/cluster/down.sh

## Benchmarks that print figures (release build): detection time, agent memory, registry requests,
## the estimator beside NVIDIA's aiconfigurator (installed by tests/aiconfigurator.sh into ~/.cache).
bench:
	bash tests/bench.sh

## Rewrite the golden renders of the examples (review the diff before committing).
golden:
	$(CARGO) build --locked --quiet
	./target/debug/oim render -f examples/llama31-8b-latency.yaml --inventory examples/inventories/test-cluster.yaml --catalog profiles > tests/fixtures/golden/llama31-8b-latency.yaml
	./target/debug/oim render -f examples/llama31-8b-latency.yaml --inventory examples/inventories/test-cluster.yaml --catalog profiles --platform openshift > tests/fixtures/golden/llama31-8b-latency-openshift.yaml
	./target/debug/oim render -f examples/llama31-70b-throughput.yaml -f examples/llama31-70b-cache.yaml --inventory examples/inventories/test-cluster.yaml --catalog profiles > tests/fixtures/golden/llama31-70b-throughput.yaml
