#!/usr/bin/env bash
# `make bench`: benchmarks that print figures, with the local registry they need.
set -euo pipefail
cd "$(dirname "$0")/.."
export OIM_CLUSTER_STATE=${OIM_CLUSTER_STATE:-/tmp/oim-cluster-bench-$$}
cargo bench --locked --no-run
# The estimator beside NVIDIA's aiconfigurator: no cluster needed.
OIM_AICONFIGURATOR=$(bash tests/aiconfigurator.sh) cargo bench --locked --bench estimate
trap 'bash tests/cluster/down.sh' EXIT
OIM_CLUSTER_NODES=0 bash tests/cluster/up.sh
# shellcheck disable=SC1091
source "$OIM_CLUSTER_STATE/env"
cargo bench --locked --bench detect
cargo bench --locked --bench loadgen
cargo bench --locked --bench catalog
cargo bench --locked --bench select
"$OIM_CLUSTER_BIN/kubectl" apply --server-side -f crds/oim.opea.dev.yaml >/dev/null
cargo bench --locked --bench operator
