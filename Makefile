# oim-operator developer entry points. `make test` is the README's test command; CI runs `make lint test`.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: all build test test-faults unit cluster-up cluster-down lint crds manifests bundle catalog image packaging-tools demo demo-down bench golden crosscheck

all: build

build:
	$(CARGO) build --locked

## Unit and integration tests against a fresh local control plane (torn down afterwards).
test:
	bash tests/run.sh

## Only the fault tests (API server, operator, registry and object faults; tests/it/faults.rs) on a fresh local control plane. `make test` runs them too.
test-faults:
	OIM_FAULTS_ONLY=1 bash tests/run.sh

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

## Regenerate the checked-in CRDs from the Rust types (and their copies in config/, the chart, the bundle).
crds:
	$(CARGO) run --locked --quiet --bin oim -- crds > crds/oim.opea.dev.yaml
	$(MAKE) manifests

## Copy the sources of truth (crds/, config/rbac/role.yaml) into kustomize and the chart; regenerate the bundle.
manifests:
	cp crds/oim.opea.dev.yaml config/crd/oim.opea.dev.yaml
	cp crds/oim.opea.dev.yaml charts/oim-operator/files/crds.yaml
	cp config/rbac/role.yaml charts/oim-operator/files/role.yaml
	$(MAKE) bundle

## The OLM bundle (bundle/, bundle.Dockerfile) from crds/, config/ and examples/ (needs python3-yaml).
bundle:
	@python3 -c 'import yaml' 2>/dev/null || { echo "make bundle needs PyYAML: apt-get install python3-yaml" >&2; exit 1; }
	python3 hack/bundle.py

## helm, crane, opm and the bundle validator, built once from the Go module proxy into ~/.cache.
packaging-tools:
	bash tests/cluster/build-packaging.sh

## The runtime image, built without a container runtime from the release binary, pushed to IMAGE.
IMAGE ?= $(or $(OIM_REGISTRY),127.0.0.1:5000)/opea/oim:$(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
image:
	$(CARGO) build --release --locked --bin oim
	CRANE=$$(bash tests/cluster/build-packaging.sh)/crane bash hack/image.sh $(IMAGE)

## Push the bundle image to REGISTRY and render a file-based catalog for it into catalog/ with opm.
REGISTRY ?= $(or $(OIM_REGISTRY),127.0.0.1:5000)
catalog: bundle
	PATH=$$(bash tests/cluster/build-packaging.sh):$$PATH bash hack/catalog.sh $(REGISTRY) catalog

## A local control plane with simulated GPU nodes, the CRDs and the examples; keeps running.
demo:
	bash tests/cluster/demo.sh

demo-down:
	OIM_CLUSTER_STATE=/tmp/oim-demo bash tests/cluster/down.sh

## Benchmarks that print figures (release build): detection time, agent memory, registry requests,
## the estimator beside NVIDIA's aiconfigurator (installed by tests/aiconfigurator.sh into ~/.cache).
bench:
	bash tests/bench.sh

## Only the cross-check `make test` runs too: `oim bench` and inference-perf (installed once into
## ~/.cache) on the same simulator at the same time; fails over 10% apart.
crosscheck:
	OIM_INFERENCE_PERF=$$(bash tests/crosscheck/install.sh) $(CARGO) test --locked --test it crosscheck -- --nocapture

## Rewrite the golden renders of the examples (review the diff before committing).
golden:
	$(CARGO) build --locked --quiet
	./target/debug/oim render -f examples/llama31-8b-latency.yaml --inventory examples/inventories/test-cluster.yaml --catalog profiles > tests/fixtures/golden/llama31-8b-latency.yaml
	./target/debug/oim render -f examples/llama31-8b-latency.yaml --inventory examples/inventories/test-cluster.yaml --catalog profiles --platform openshift > tests/fixtures/golden/llama31-8b-latency-openshift.yaml
	./target/debug/oim render -f examples/llama31-70b-throughput.yaml -f examples/llama31-70b-cache.yaml --inventory examples/inventories/test-cluster.yaml --catalog profiles > tests/fixtures/golden/llama31-70b-throughput.yaml
