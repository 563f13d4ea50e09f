#!/usr/bin/env bash
# Builds the packaging tools the install tests use, from the Go module proxy, into a cache outside
# the repo keyed by a stamp (like build.sh): helm (chart lint/template/install/upgrade), crane
# (daemonless image build and push, `make image`), opm (file-based catalog), bundle-validate
# (operator-framework/api's validators, tests/olm/) and the OLM CRDs from the same module.
# Prints the bin directory. Cold: ~10 min on 2 cores (opm is the largest).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$HERE/versions.sh"
export GOTOOLCHAIN=local GOFLAGS=-modcacherw
OLM_MOD="$HERE/../olm"
BIN=${OIM_PACKAGING_BIN:-${XDG_CACHE_HOME:-$HOME/.cache}/oim-testcluster/packaging/bin}
command -v go >/dev/null || { echo "build-packaging.sh: Go 1.26 is needed to build helm, crane, opm and the bundle validator" >&2; exit 1; }
STAMP=$( { cat "$OLM_MOD/go.sum" "$OLM_MOD/validate.go" "$OLM_MOD/opm/go.sum"; echo "$HELM_VERSION $CRANE_VERSION $K8S_VERSION $(go env GOVERSION)"; } | sha256sum | cut -d' ' -f1)
NEEDED=(helm crane opm bundle-validate)

have_all() {
  [[ -f "$BIN/.stamp" && "$(cat "$BIN/.stamp")" == "$STAMP" ]] || return 1
  for b in "${NEEDED[@]}"; do [[ -x "$BIN/$b" ]] || return 1; done
  [[ -f "$BIN/../olm-crds/operators.coreos.com_clusterserviceversions.yaml" ]]
}
if have_all; then echo "$BIN"; exit 0; fi

mkdir -p "$BIN"
start=$(date +%s)
minor=${K8S_VERSION#1.}; minor=${minor%%.*}
echo ">> building helm $HELM_VERSION, crane $CRANE_VERSION, the bundle validator and opm into $BIN" >&2
# Helm's own Makefile sets these; without them `helm template` assumes Kubernetes v1.20.
hl="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
hl="$hl -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$minor"
hl="$hl -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$minor"
CGO_ENABLED=0 GOBIN="$BIN" go install -trimpath -ldflags="$hl" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" >&2
CGO_ENABLED=0 GOBIN="$BIN" go install -trimpath -ldflags="-s -w" "github.com/google/go-containerregistry/cmd/crane@$CRANE_VERSION" >&2
CGO_ENABLED=0 go build -C "$OLM_MOD" -trimpath -ldflags="-s -w" -o "$BIN/bundle-validate" . >&2
API_DIR=$(go list -C "$OLM_MOD" -m -f '{{.Dir}}' github.com/operator-framework/api)
rm -rf "$BIN/../olm-crds" && mkdir -p "$BIN/../olm-crds"
cp "$API_DIR"/crds/operators.coreos.com_*.yaml "$BIN/../olm-crds/" && chmod u+w "$BIN/../olm-crds/"*
# opm needs cgo (sqlite); the openpgp tag avoids gpgme, as upstream's Makefile does. Built from the
# tool module tests/olm/opm (pinned there): `go install opm@version` fails because the Go proxy
# does not list operator-registry's versions.
CGO_ENABLED=1 go build -C "$OLM_MOD/opm" -trimpath -tags=json1,containers_image_openpgp -ldflags="-s -w" \
  -o "$BIN/opm" github.com/operator-framework/operator-registry/cmd/opm >&2
echo "$STAMP" >"$BIN/.stamp"
echo ">> packaging tools built in $(( $(date +%s) - start ))s" >&2
echo "$BIN"
