#!/usr/bin/env bash
# `make demo`: a local control plane with simulated GPU nodes, the oim CRDs, the operator, the
# examples applied, and what the cluster shows. The cluster keeps running; `make demo-down` stops
# it (and the operator, whose PID is recorded with the cluster's).
set -euo pipefail
cd "$(dirname "$0")/../.."
export OIM_CLUSTER_STATE=${OIM_CLUSTER_STATE:-/tmp/oim-demo}
cargo build --locked --quiet
bash tests/cluster/up.sh
# shellcheck disable=SC1091
source "$OIM_CLUSTER_STATE/env"
say() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }
run() { say "$*"; "$@"; }

run kubectl get nodes -L oim.opea.dev/accelerator.vendor,oim.opea.dev/accelerator.product,oim.opea.dev/accelerator.count,oim.opea.dev/accelerator.memory-gib
run kubectl apply --server-side -f crds/
run kubectl wait --for=condition=Established --timeout=60s -f crds/
say "oim operator --catalog profiles &"
./target/debug/oim operator --catalog profiles >"$OIM_CLUSTER_STATE/log/operator.log" 2>&1 &
echo "$! operator" >>"$OIM_CLUSTER_STATE/pids"
run kubectl create namespace oim-demo
run kubectl apply -n oim-demo -f examples/llama31-8b-latency.yaml -f examples/llama31-70b-cache.yaml -f examples/llama31-70b-throughput.yaml
say kubectl apply -n oim-demo -f examples/invalid-port-in-args.yaml "   # refused by the CRD's CEL rule"
kubectl apply -n oim-demo -f examples/invalid-port-in-args.yaml || true
say "kubectl wait --for=jsonpath='{.status.state}'=Ready oimsvc/llama31-8b-latency -n oim-demo"
kubectl wait --for=jsonpath='{.status.state}'=Ready oimsvc/llama31-8b-latency -n oim-demo --timeout=120s
say "kubectl wait --for=jsonpath='{.status.state}'=Ready oimcache/llama31-70b oimsvc/llama31-70b-throughput -n oim-demo"
kubectl wait --for=jsonpath='{.status.state}'=Ready oimcache/llama31-70b -n oim-demo --timeout=120s
kubectl wait --for=jsonpath='{.status.state}'=Ready oimsvc/llama31-70b-throughput -n oim-demo --timeout=120s
run kubectl get oim -n oim-demo
run kubectl describe oimsvc llama31-8b-latency -n oim-demo
run kubectl get oimcache llama31-70b -n oim-demo -o jsonpath='{.status.profiles}{"\n"}'
run kubectl get deploy,svc,pods,jobs,pvc -n oim-demo -o wide
run kubectl get daemonset -n oim-system
cat <<MSG

llama31-8b-latency is Ready on a simulated H100 node with the profile the operator chose. For each
kind of accelerator in the cluster, the llama31-70b OIMCache picked the throughput profile that
would run there and downloaded the weights it loads — each repository once — into its PVC (kwok
simulates the Job; the paths carry the commit the downloader reports). llama31-70b-throughput
serves one of them read-only from /models and is Degraded (RWOSharedAcrossNodes): its autoscaler
may add a replica that a ReadWriteOnce cache cannot follow to another node. The operator also
deployed the node agent into oim-system.

Use the cluster:   source $OIM_CLUSTER_STATE/env
Stop it:           make demo-down
MSG
