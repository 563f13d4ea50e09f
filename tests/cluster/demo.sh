#!/usr/bin/env bash
# `make demo`: a local control plane with simulated GPU nodes, the oim CRDs, the examples applied,
# and what the cluster now shows. The cluster keeps running; `make demo-down` stops it.
set -euo pipefail
cd "$(dirname "$0")/../.."
export OIM_CLUSTER_STATE=${OIM_CLUSTER_STATE:-/tmp/oim-demo}
bash tests/cluster/up.sh
# shellcheck disable=SC1091
source "$OIM_CLUSTER_STATE/env"
say() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }
run() { say "$*"; "$@"; }

run kubectl get nodes -L oim.opea.dev/accelerator.vendor,oim.opea.dev/accelerator.product,oim.opea.dev/accelerator.count,oim.opea.dev/accelerator.memory-gib
run kubectl apply --server-side -f crds/
run kubectl wait --for=condition=Established --timeout=60s -f crds/
run kubectl create namespace oim-demo
run kubectl apply -n oim-demo -f examples/llama31-8b-latency.yaml -f examples/llama31-70b-cache.yaml -f examples/llama31-70b-throughput.yaml
say kubectl apply -n oim-demo -f examples/invalid-port-in-args.yaml "   # refused by the CRD's CEL rule"
kubectl apply -n oim-demo -f examples/invalid-port-in-args.yaml || true
run kubectl get oim -n oim-demo
run kubectl explain oimservice.spec.profile.kpi
cat <<MSG

The API server validated and stored the examples. The operator (\`oim operator\`) is not
implemented yet; once it lands, this demo starts it and the services above become Ready on the
simulated GPU nodes, with \`kubectl describe oimsvc\` explaining the chosen profile.

Use the cluster:   source $OIM_CLUSTER_STATE/env
Stop it:           make demo-down
MSG
