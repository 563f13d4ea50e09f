#!/usr/bin/env bash
# `make test`: builds the tests, starts the local control plane (building it on first use), runs
# unit and integration tests against it, then the RBAC audit check, then the fault tests alone
# (they stop the API server), and tears the cluster down even on failure.
# `make test-faults` (OIM_FAULTS_ONLY=1) runs only the fault tests on a cluster of their own.
set -euo pipefail
cd "$(dirname "$0")/.."
export OIM_CLUSTER_STATE=${OIM_CLUSTER_STATE:-/tmp/oim-cluster-test-$$}
cargo test --locked --no-run
# helm, crane, opm and the bundle validator for the install tests (cached after the first run).
OIM_PACKAGING_BIN=$(bash tests/cluster/build-packaging.sh)
export OIM_PACKAGING_BIN
# inference-perf, the external load generator `oim bench` is cross-checked with (cached after the
# first run: about 2 minutes and 800 MB in ~/.cache/oim-crosscheck).
OIM_INFERENCE_PERF=$(bash tests/crosscheck/install.sh)
export OIM_INFERENCE_PERF
trap 'bash tests/cluster/down.sh' EXIT
bash tests/cluster/up.sh
# shellcheck disable=SC1091
source "$OIM_CLUSTER_STATE/env"
if [[ -z "${OIM_FAULTS_ONLY:-}" ]]; then
  cargo test --locked "$@"
  # After everything else: the operator account's audit trail against config/rbac. Before the
  # fault tests: a restarted API server refuses requests for a moment, until its RBAC cache syncs.
  cargo test --locked --test it rbac -- --ignored
fi
# Fault tests break the shared cluster (API server, registry): alone, one at a time, last.
cargo test --locked --test it faults:: -- --ignored --test-threads=1
