#!/usr/bin/env bash
# LeaderWorkerSet on the local control plane (multi-node serving): `start` installs its CRDs and
# runs its controller as a process against the test API server, with its webhooks (they label a
# group's pods and give workers LWS_LEADER_ADDRESS) served on 127.0.0.1 with the cluster's own
# serving certificate; `stop` stops it and removes its webhooks and CRDs again, so the cluster
# is as it was (other tests see no LeaderWorkerSet API).
#
#   OIM_CLUSTER_STATE  the cluster's state directory (default /tmp/oim-cluster)
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$HERE/versions.sh"
S=${OIM_CLUSTER_STATE:-/tmp/oim-cluster}
[[ -f "$S/env" ]] || { echo "lws.sh: no cluster in $S; start one with tests/cluster/up.sh" >&2; exit 1; }
. "$S/env"
LWS="$OIM_CLUSTER_BIN/../lws/$LWS_VERSION"
K() { "$OIM_CLUSTER_BIN/kubectl" "$@"; }
D="$S/lws"

stop() {
  if [[ -s "$D/pid" ]]; then
    pid=$(cat "$D/pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 60); do [[ -r /proc/$pid/stat ]] || break; sleep 0.25; done
    rm -f "$D/pid"
    # No longer down.sh's to stop: its pid may be reused.
    sed -i "/^$pid lws-controller\$/d" "$S/pids"
  fi
  K delete --ignore-not-found mutatingwebhookconfiguration oim-test-lws >/dev/null
  K delete --ignore-not-found validatingwebhookconfiguration oim-test-lws >/dev/null
  K delete --ignore-not-found --wait -f "$LWS/leaderworkerset.x-k8s.io_leaderworkersets.yaml" \
    -f "$LWS/disaggregatedset.x-k8s.io_disaggregatedsets.yaml" >/dev/null
}

# LeaderWorkerSet's webhooks (the paths of its config/webhook/manifests.yaml), pointed at
# 127.0.0.1 with our CA; the pod webhooks only for pods of a LeaderWorkerSet (the upstream
# chart does the same), so no other pod ever waits on this process.
webhooks() { # port
  local base="https://127.0.0.1:$1" ca pods lws
  ca=$(base64 -w0 "$S/pki/ca.crt")
  lws='"rules":[{"apiGroups":["leaderworkerset.x-k8s.io"],"apiVersions":["v1"],"operations":["CREATE","UPDATE"],"resources":["leaderworkersets"]}]'
  pods='"objectSelector":{"matchExpressions":[{"key":"leaderworkerset.sigs.k8s.io/name","operator":"Exists"}]}'
  hook() { # name, path, rules..., kind-specific fields
    echo "{\"name\":\"$1\",\"admissionReviewVersions\":[\"v1\"],\"sideEffects\":\"None\",\"failurePolicy\":\"Fail\",\"timeoutSeconds\":5,\"clientConfig\":{\"url\":\"$base$2\",\"caBundle\":\"$ca\"},$3}"
  }
  local pod_create='"rules":[{"apiGroups":[""],"apiVersions":["v1"],"operations":["CREATE"],"resources":["pods"]}]'
  local pod_write='"rules":[{"apiGroups":[""],"apiVersions":["v1"],"operations":["CREATE","UPDATE"],"resources":["pods"]}]'
  cat <<JSON
{"apiVersion":"v1","kind":"List","items":[
 {"apiVersion":"admissionregistration.k8s.io/v1","kind":"MutatingWebhookConfiguration","metadata":{"name":"oim-test-lws"},"webhooks":[
  $(hook mleaderworkerset.kb.io /mutate-leaderworkerset-x-k8s-io-v1-leaderworkerset "$lws"),
  $(hook mpod.kb.io /mutate--v1-pod "$pod_create,$pods")]},
 {"apiVersion":"admissionregistration.k8s.io/v1","kind":"ValidatingWebhookConfiguration","metadata":{"name":"oim-test-lws"},"webhooks":[
  $(hook vleaderworkerset.kb.io /validate-leaderworkerset-x-k8s-io-v1-leaderworkerset "$lws"),
  $(hook vpod.kb.io /validate--v1-pod "$pod_write,$pods")]}
]}
JSON
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

start() {
  [[ -x "$LWS/lws-controller" ]] || bash "$HERE/build.sh" >/dev/null
  [[ -x "$LWS/lws-controller" ]] || { echo "lws.sh: no LeaderWorkerSet controller in $LWS; run tests/cluster/build.sh and read why it was not built" >&2; exit 1; }
  stop
  mkdir -p "$D/certs"
  cp "$S/pki/apiserver.crt" "$D/certs/tls.crt"
  cp "$S/pki/apiserver.key" "$D/certs/tls.key"
  local port health
  port=$(free_port)
  health=$(free_port)
  cat >"$D/config.yaml" <<CFG
apiVersion: config.lws.x-k8s.io/v1alpha1
kind: Configuration
leaderElection: {leaderElect: false}
internalCertManagement: {enable: false}
webhook: {port: $port, host: 127.0.0.1, certDir: $D/certs}
metrics: {bindAddress: "0"}
health: {healthProbeBindAddress: "127.0.0.1:$health"}
CFG
  K apply --server-side -f "$LWS/leaderworkerset.x-k8s.io_leaderworkersets.yaml" -f "$LWS/disaggregatedset.x-k8s.io_disaggregatedsets.yaml" >/dev/null
  K wait --for=condition=Established --timeout=60s crd/leaderworkersets.leaderworkerset.x-k8s.io crd/disaggregatedsets.disaggregatedset.x-k8s.io >/dev/null
  "$LWS/lws-controller" --config "$D/config.yaml" --kubeconfig "$KUBECONFIG" --zap-devel=false >"$S/log/lws-controller.log" 2>&1 &
  echo $! >"$D/pid"
  echo "$! lws-controller" >>"$S/pids"
  for _ in $(seq 1 240); do
    if curl -fs "http://127.0.0.1:$health/readyz" >/dev/null && (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      webhooks "$port" | K apply --server-side -f - >/dev/null
      echo "LeaderWorkerSet $LWS_VERSION controller running (pid $(cat "$D/pid")), webhooks on 127.0.0.1:$port" >&2
      return 0
    fi
    kill -0 "$(cat "$D/pid")" 2>/dev/null || break
    sleep 0.25
  done
  echo "lws.sh: the LeaderWorkerSet controller did not become ready; last lines of its log:" >&2
  tail -n 20 "$S/log/lws-controller.log" >&2
  stop
  exit 1
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: lws.sh start|stop" >&2; exit 2 ;;
esac
