#!/usr/bin/env bash
# Builds the test control plane (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl), kwok and oras from the Go module proxy, and unpacks
# Debian's docker-registry. Output goes to a cache outside the repo, keyed by a
# stamp, so a machine pays the cold build once.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$HERE/versions.sh"
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-modcacherw

BIN=${OIM_TOOLS_BIN:-${XDG_CACHE_HOME:-$HOME/.cache}/oim-testcluster/$K8S_VERSION/bin}
command -v go >/dev/null || { echo "build.sh: Go is needed to build the test control plane (apt-get install golang is too old; use the machine's Go 1.26)" >&2; exit 1; }
GO_VERSION=$(go env GOVERSION)
need=$(sed -n 's/^go \([0-9.]*\)$/\1/p' "$HERE/tools/go.mod")
if [[ "$(printf '%s\n%s\n' "go$need" "$GO_VERSION" | sort -V | head -1)" != "go$need" ]]; then
  echo "build.sh: $GO_VERSION is older than go$need, which Kubernetes v$K8S_VERSION needs" >&2
  exit 1
fi
STAMP=$( { cat "$HERE/tools/go.sum"; echo "$K8S_VERSION $KWOK_VERSION $ORAS_VERSION $OPENSHIFT_API_VERSION $PROMETHEUS_OPERATOR_VERSION $GO_VERSION"; } | sha256sum | cut -d' ' -f1)
NEEDED=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok oras registry)

have_all() {
  [[ -f "$BIN/.stamp" && "$(cat "$BIN/.stamp")" == "$STAMP" ]] || return 1
  for b in "${NEEDED[@]}"; do [[ -x "$BIN/$b" ]] || return 1; done
  [[ -f "$BIN/../optional-crds/routes.route.openshift.io.yaml" && -f "$BIN/../optional-crds/servicemonitors.monitoring.coreos.com.yaml" ]]
}

# kwok's PortForward CRD (so a test can port-forward to a simulated pod): copied from kwok's
# module beside the tools. Not part of the stamp, so a cache built before it was added gets it
# without a rebuild.
kwok_crds() {
  local dir="$BIN/../kwok-crds" src
  [[ -s "$dir/kwok.x-k8s.io_portforwards.yaml" ]] && return 0
  src=$(go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  mkdir -p "$dir"
  cp "$src/kustomize/crd/bases/kwok.x-k8s.io_portforwards.yaml" "$dir/"
  chmod u+w "$dir/"*
}

# The Gateway API, Inference Extension and KServe CRDs (NIM's router and platform): copied from
# their modules beside the tools, keyed by their own versions and outside the stamp, so a cache
# built before they were added gets them without rebuilding the control plane.
platform_crds() {
  local dir="$BIN/../platform-crds" key="$GATEWAY_API_VERSION $INFERENCE_EXTENSION_VERSION $KSERVE_VERSION" gw gie ks
  [[ -f "$dir/.versions" && "$(cat "$dir/.versions")" == "$key" ]] && return 0
  mod() { go mod download -json "$1" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p'; }
  gw=$(mod "sigs.k8s.io/gateway-api@$GATEWAY_API_VERSION")
  gie=$(mod "sigs.k8s.io/gateway-api-inference-extension@$INFERENCE_EXTENSION_VERSION")
  ks=$(mod "github.com/kserve/kserve@$KSERVE_VERSION")
  rm -rf "$dir" && mkdir -p "$dir"
  cp "$gw/config/crd/standard/gateway.networking.k8s.io_gateways.yaml" \
    "$gw/config/crd/standard/gateway.networking.k8s.io_httproutes.yaml" \
    "$gie/config/crd/bases/inference.networking.k8s.io_inferencepools.yaml" \
    "$ks/config/crd/full/serving.kserve.io_inferenceservices.yaml" "$dir/"
  chmod u+w "$dir/"*
  echo "$key" >"$dir/.versions"
}

# LeaderWorkerSet (multi-node serving): its CRDs and its controller, built from its Go module
# into a directory keyed by its version. Outside the stamp (tools/lws.mod and lws.sum are not in
# it), so adding or moving it never rebuilds the control plane.
lws() {
  local dir="$BIN/../lws/$LWS_VERSION" src
  [[ -s "$dir/leaderworkerset.x-k8s.io_leaderworkersets.yaml" && -x "$dir/lws-controller" ]] && return 0
  echo ">> building the LeaderWorkerSet controller $LWS_VERSION" >&2
  src=$(go mod download -json "sigs.k8s.io/lws@$LWS_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p') || return 1
  [[ -d "$src" ]] || return 1
  mkdir -p "$dir" || return 1
  # Built in the tools module with tools/lws.mod (its go.mod plus LeaderWorkerSet), so it shares
  # the control plane's k8s.io module versions and their compiled packages in Go's build cache.
  go build -C "$HERE/tools" -modfile=lws.mod -trimpath -ldflags="-s -w" -o "$dir/lws-controller.new" \
    sigs.k8s.io/lws/cmd >&2 || return 1
  cp "$src/config/crd/bases/leaderworkerset.x-k8s.io_leaderworkersets.yaml" \
    "$src/config/crd/bases/disaggregatedset.x-k8s.io_disaggregatedsets.yaml" "$dir/" || return 1
  chmod u+w "$dir/"* && mv "$dir/lws-controller.new" "$dir/lws-controller"
}
# Only the multi-node test needs LeaderWorkerSet: a failed build fails that test, not the cluster.
lws_or_warn() {
  lws >&2 || echo "build.sh: could not build LeaderWorkerSet $LWS_VERSION; tests/cluster/lws.sh (the multi-node test) will fail" >&2
}

if have_all; then
  kwok_crds >&2
  platform_crds >&2
  lws_or_warn
  echo "$BIN"
  exit 0
fi

mkdir -p "$BIN"
start=$(date +%s)
minor=${K8S_VERSION#1.}; minor=${minor%%.*}
ldf="-s -w"
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldf="$ldf -X $p.gitVersion=v$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
  ldf="$ldf -X $p.gitCommit=unknown -X $p.buildDate=1970-01-01T00:00:00Z"
done

echo ">> building Kubernetes v$K8S_VERSION control plane into $BIN (cold build: ~30 min on 2 cores)" >&2
go build -C "$HERE/tools" -trimpath -tags=selinux,notest -ldflags="$ldf" -o "$BIN/" \
  k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl >&2
go build -C "$HERE/tools" -trimpath -ldflags="-s -w" -o "$BIN/etcd" go.etcd.io/etcd/server/v3 >&2

echo ">> building kwok $KWOK_VERSION and oras $ORAS_VERSION" >&2
GOBIN="$BIN" go install -trimpath -ldflags="-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION" >&2
GOBIN="$BIN" go install -trimpath -ldflags="-s -w" "oras.land/oras/cmd/oras@$ORAS_VERSION" >&2
# kwok's stage definitions (pod/node lifecycles) ship in its module source.
KWOK_SRC=$(go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
rm -rf "$BIN/../kwok-stages" && mkdir -p "$BIN/../kwok-stages"
st="$KWOK_SRC/kustomize/stage"
cp "$st/node/fast/node-initialize.yaml" "$st/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml" \
  "$st/pod/fast/pod-ready.yaml" "$st/pod/fast/pod-complete.yaml" "$st/pod/fast/pod-delete.yaml" "$BIN/../kwok-stages/"
chmod u+w "$BIN/../kwok-stages/"*

echo ">> fetching the Route and ServiceMonitor CRDs from their Go modules" >&2
mod_dir() { go mod download -json "$1" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p'; }
OS_API=$(mod_dir "github.com/openshift/api@$OPENSHIFT_API_VERSION")
PROM=$(mod_dir "github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION")
mkdir -p "$BIN/../optional-crds"
cp "$OS_API/route/v1/zz_generated.crd-manifests/routes.crd.yaml" "$BIN/../optional-crds/routes.route.openshift.io.yaml"
cp "$PROM/example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml" \
  "$BIN/../optional-crds/servicemonitors.monitoring.coreos.com.yaml"
chmod u+w "$BIN/../optional-crds/"*

echo ">> unpacking Debian's $DOCKER_REGISTRY_DEB (not installed as a service)" >&2
tmp=$(mktemp -d)
( cd "$tmp" && { apt-get download "$DOCKER_REGISTRY_DEB" >&2 || { apt-get update >&2 && apt-get download "$DOCKER_REGISTRY_DEB" >&2; }; } )
dpkg-deb -x "$tmp"/*.deb "$tmp/x"
cp "$tmp/x/usr/bin/docker-registry" "$BIN/registry"
rm -rf "$tmp"

kwok_crds >&2
platform_crds >&2
lws_or_warn
echo "$STAMP" >"$BIN/.stamp"
echo ">> tools built in $(( $(date +%s) - start ))s" >&2
echo "$BIN"
