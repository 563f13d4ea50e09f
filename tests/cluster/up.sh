#!/usr/bin/env bash
# Starts a real local Kubernetes control plane for tests and the demo, all on 127.0.0.1:
# etcd, kube-apiserver (RBAC, default admission plugins incl. PodSecurity), kube-controller-manager
# (host-path provisioner), kube-scheduler, kwok (simulated nodes, their port-forwards), two OCI
# registries (anonymous and htpasswd). Writes $STATE/admin.kubeconfig and $STATE/env. On failure prints log tails and cleans up.
#
#   OIM_CLUSTER_STATE  state directory (default /tmp/oim-cluster); one cluster per directory
#   OIM_CLUSTER_PORT_BASE  first of 10 consecutive ports (default: first free block from 16000)
#   OIM_CLUSTER_NODES  0 to skip the standard simulated nodes in tests/cluster/nodes/
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$HERE/versions.sh"
S=${OIM_CLUSTER_STATE:-/tmp/oim-cluster}
t0=$(date +%s)

if [[ -s "$S/pids" ]]; then
  while read -r pid _; do
    if kill -0 "$pid" 2>/dev/null; then
      echo "a cluster is already running from $S (pid $pid); run tests/cluster/down.sh first or set OIM_CLUSTER_STATE" >&2
      exit 1
    fi
  done <"$S/pids"
fi

BIN=$(bash "$HERE/build.sh")
STAGES="$BIN/../kwok-stages"
rm -rf "$S" && mkdir -p "$S"/{pki,log,etcd,registry,registry-auth}
: >"$S/pids"

fail() {
  echo "up.sh: $*" >&2
  for f in "$S"/log/*.log; do
    [[ -f "$f" && "$f" != */pki.log ]] || continue
    echo "---- last lines of $f" >&2
    tail -n 12 "$f" | cut -c1-400 >&2
  done
  bash "$HERE/down.sh" >&2 || true
  exit 1
}
trap 'fail "unexpected error on line $LINENO"' ERR

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
pick_ports() {
  local base=${OIM_CLUSTER_PORT_BASE:-}
  if [[ -n "$base" ]]; then echo "$base"; return; fi
  for base in $(seq 16000 20 17980); do
    local ok=1
    for i in $(seq 0 9); do port_free $((base + i)) || { ok=0; break; }; done
    if ((ok)); then echo "$base"; return; fi
  done
  return 1
}
BASE=$(pick_ports) || fail "no free block of 10 ports between 16000 and 18000"
ETCD_PORT=$BASE ETCD_PEER_PORT=$((BASE + 1)) API_PORT=$((BASE + 2)) KCM_PORT=$((BASE + 3))
SCHED_PORT=$((BASE + 4)) KWOK_PORT=$((BASE + 5)) REG_PORT=$((BASE + 6)) REG_AUTH_PORT=$((BASE + 7))

start() { # name, command...
  local name=$1; shift
  "$@" >"$S/log/$name.log" 2>&1 &
  echo "$! $name" >>"$S/pids"
}
wait_for() { # what, seconds, command...
  local what=$1 secs=$2; shift 2
  for _ in $(seq 1 $((secs * 4))); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.25
  done
  fail "$what did not become healthy within ${secs}s"
}

# --- PKI: a CA, the serving cert (IP SAN: rustls checks SANs only), an admin client, SA keys.
pki() {
  cd "$S/pki"
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -keyout ca.key -out ca.crt -subj /CN=oim-test-ca \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
  openssl req -newkey rsa:2048 -nodes -keyout apiserver.key -out apiserver.csr -subj /CN=kube-apiserver
  openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 -out apiserver.crt \
    -extfile <(printf 'subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc,IP:10.96.0.1\nextendedKeyUsage=serverAuth\n')
  openssl req -newkey rsa:2048 -nodes -keyout admin.key -out admin.csr -subj '/O=system:masters/CN=admin'
  openssl x509 -req -in admin.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 -out admin.crt \
    -extfile <(printf 'extendedKeyUsage=clientAuth\n')
  openssl genrsa -out sa.key 2048 && openssl rsa -in sa.key -pubout -out sa.pub
}
(pki) >"$S/log/pki.log" 2>&1 || fail "could not create certificates"

KUBECONFIG_FILE="$S/admin.kubeconfig"
cat >"$KUBECONFIG_FILE" <<KC
apiVersion: v1
kind: Config
clusters:
- name: oim-test
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority-data: $(base64 -w0 "$S/pki/ca.crt")
users:
- name: admin
  user:
    client-certificate-data: $(base64 -w0 "$S/pki/admin.crt")
    client-key-data: $(base64 -w0 "$S/pki/admin.key")
contexts:
- name: oim-test
  context: {cluster: oim-test, user: admin}
current-context: oim-test
KC

# --- etcd (tmpfs-friendly; fsync off: test data only).
start etcd "$BIN/etcd" --name oim-test --data-dir "$S/etcd" --unsafe-no-fsync \
  --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster "oim-test=http://127.0.0.1:$ETCD_PEER_PORT" --listen-metrics-urls "" 
wait_for etcd 30 curl -fs "http://127.0.0.1:$ETCD_PORT/readyz"

# --- kube-apiserver: RBAC and the default admission plugins (PodSecurity, ServiceAccount, ...).
# The audit log records what the tests' least-privilege operator account does (and is refused),
# so a test can compare it with config/rbac.
cat >"$S/audit-policy.yaml" <<'AUDIT'
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived, ResponseStarted]
rules:
  - level: Metadata
    users: ["system:serviceaccount:oim-operator-tests:oim-operator"]
  - level: None
AUDIT
start kube-apiserver "$BIN/kube-apiserver" --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
  --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$API_PORT" --cert-dir "$S/pki" \
  --tls-cert-file "$S/pki/apiserver.crt" --tls-private-key-file "$S/pki/apiserver.key" \
  --client-ca-file "$S/pki/ca.crt" \
  --service-account-issuer "https://127.0.0.1:$API_PORT" \
  --service-account-key-file "$S/pki/sa.pub" --service-account-signing-key-file "$S/pki/sa.key" \
  --service-cluster-ip-range 10.96.0.0/16 --authorization-mode Node,RBAC --allow-privileged=true \
  --endpoint-reconciler-type none --kubelet-preferred-address-types InternalIP --storage-media-type application/vnd.kubernetes.protobuf \
  --audit-policy-file "$S/audit-policy.yaml" --audit-log-path "$S/log/audit.log" --audit-log-maxsize 500
wait_for kube-apiserver 120 curl -fs --cacert "$S/pki/ca.crt" "https://127.0.0.1:$API_PORT/readyz"

# --- kube-controller-manager: GC, namespaces, Deployments, Jobs, node lifecycle, host-path PVs.
start kube-controller-manager "$BIN/kube-controller-manager" --kubeconfig "$KUBECONFIG_FILE" \
  --authentication-kubeconfig "$KUBECONFIG_FILE" --authorization-kubeconfig "$KUBECONFIG_FILE" \
  --bind-address 127.0.0.1 --secure-port "$KCM_PORT" --leader-elect=false \
  --service-account-private-key-file "$S/pki/sa.key" --root-ca-file "$S/pki/ca.crt" \
  --cluster-signing-cert-file "$S/pki/ca.crt" --cluster-signing-key-file "$S/pki/ca.key" \
  --use-service-account-credentials=true --enable-hostpath-provisioner=true \
  --controllers '*,-cloud-node-lifecycle-controller,-service-lb-controller,-node-route-controller'
wait_for kube-controller-manager 60 curl -fsk "https://127.0.0.1:$KCM_PORT/healthz"

cat >"$S/scheduler.yaml" <<SC
apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
clientConnection: {kubeconfig: $KUBECONFIG_FILE}
leaderElection: {leaderElect: false}
SC
start kube-scheduler "$BIN/kube-scheduler" --config "$S/scheduler.yaml" \
  --authentication-kubeconfig "$KUBECONFIG_FILE" --authorization-kubeconfig "$KUBECONFIG_FILE" \
  --bind-address 127.0.0.1 --secure-port "$SCHED_PORT"
wait_for kube-scheduler 60 curl -fsk "https://127.0.0.1:$SCHED_PORT/healthz"

# --- kwok: makes every Node Ready and every bound Pod Running; Jobs complete at once, except
# the ones our own stages (tests/cluster/kwok) make fail on purpose.
# kwok also stands in for the kubelet's streaming API at 127.0.0.1:$KWOK_PORT (every node's
# InternalIP and kubelet port): a pod port-forward through the API server reaches what a
# kwok.x-k8s.io PortForward object names, e.g. a simulator a test started on 127.0.0.1.
"$BIN/kubectl" --kubeconfig "$KUBECONFIG_FILE" apply --server-side -f "$BIN/../kwok-crds" >"$S/log/kwok-crds.log" 2>&1 \
  || fail "could not install kwok's PortForward CRD"
"$BIN/kubectl" --kubeconfig "$KUBECONFIG_FILE" wait --for=condition=Established --timeout=60s -f "$BIN/../kwok-crds" \
  >>"$S/log/kwok-crds.log" 2>&1 || fail "kwok's PortForward CRD was not established"
kwok_cfg=()
for f in "$STAGES"/*.yaml "$HERE"/kwok/*.yaml; do kwok_cfg+=(--config "$f"); done
start kwok env HOME="$S" "$BIN/kwok" --kubeconfig "$KUBECONFIG_FILE" --manage-all-nodes=true \
  "${kwok_cfg[@]}" --cidr 10.244.0.0/16 --node-lease-duration-seconds 40 --server-address "127.0.0.1:$KWOK_PORT" \
  --node-ip 127.0.0.1 --node-port "$KWOK_PORT" --enable-crds PortForward
wait_for kwok 60 curl -fs "http://127.0.0.1:$KWOK_PORT/healthz"

# --- OCI registries (Debian's docker-registry, run by hand): anonymous and basic auth.
REG_USER=oim-test
REG_PASSWORD=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
hash=$(python3 -W ignore -c 'import crypt,sys; print(crypt.crypt(sys.argv[1], crypt.mksalt(crypt.METHOD_BLOWFISH)).replace("$2b$","$2y$",1))' "$REG_PASSWORD")
echo "$REG_USER:$hash" >"$S/htpasswd"
registry_config() { # port, storage dir, extra yaml
  cat <<RC
version: 0.1
log: {level: info, accesslog: {disabled: true}}
storage:
  filesystem: {rootdirectory: $2}
  delete: {enabled: true}
http:
  addr: 127.0.0.1:$1
  secret: $(head -c 12 /dev/urandom | base64)
$3
RC
}
registry_config "$REG_PORT" "$S/registry" "" >"$S/registry.yaml"
registry_config "$REG_AUTH_PORT" "$S/registry-auth" "auth: {htpasswd: {realm: oim-test, path: $S/htpasswd}}" >"$S/registry-auth.yaml"
start registry "$BIN/registry" serve "$S/registry.yaml"
start registry-auth "$BIN/registry" serve "$S/registry-auth.yaml"
wait_for registry 30 curl -fs "http://127.0.0.1:$REG_PORT/v2/"
wait_for registry-auth 30 curl -fs -u "$REG_USER:$REG_PASSWORD" "http://127.0.0.1:$REG_AUTH_PORT/v2/"

cat >"$S/env" <<ENV
export KUBECONFIG=$KUBECONFIG_FILE
export OIM_CLUSTER_STATE=$S
export OIM_CLUSTER_BIN=$BIN
export OIM_KUBE_VERSION=$K8S_VERSION
export OIM_KUBE_SERVER=https://127.0.0.1:$API_PORT
export OIM_KUBE_CA=$S/pki/ca.crt
export OIM_REGISTRY=127.0.0.1:$REG_PORT
export OIM_AUTH_REGISTRY=127.0.0.1:$REG_AUTH_PORT
export OIM_AUTH_REGISTRY_USER=$REG_USER
export OIM_AUTH_REGISTRY_PASSWORD=$REG_PASSWORD
export PATH=$BIN:\$PATH
ENV
chmod 600 "$S/env"
K() { "$BIN/kubectl" --kubeconfig "$KUBECONFIG_FILE" "$@"; }

# --- cluster-wide fixtures: the default StorageClass, the simulated nodes.
K apply -f "$HERE/storageclass.yaml" >"$S/log/fixtures.log" 2>&1 || fail "could not create the StorageClass"
if [[ "${OIM_CLUSTER_NODES:-1}" != 0 ]]; then
  K apply -f "$HERE/nodes/" >>"$S/log/fixtures.log" 2>&1 || fail "could not create the simulated nodes"
  K wait --for=condition=Ready node --all --timeout=60s >>"$S/log/fixtures.log" 2>&1 || fail "simulated nodes did not become Ready"
fi
wait_for "the service-account controller (default/default)" 60 K get serviceaccount default -n default

trap - ERR
echo "cluster ready in $(( $(date +%s) - t0 ))s: kube-apiserver https://127.0.0.1:$API_PORT, registries 127.0.0.1:$REG_PORT and 127.0.0.1:$REG_AUTH_PORT (basic auth)" >&2
echo "use it with: source $S/env" >&2
