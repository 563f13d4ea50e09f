#!/usr/bin/env bash
# Regenerates go.mod/go.sum for K8S_VERSION (tests/cluster/versions.sh): requires k8s.io/kubernetes
# and replaces every staging module, read from k/k's own published go.mod, with its v0.X.Y tag.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$HERE/../versions.sh"
export GOTOOLCHAIN=local GOFLAGS=-modcacherw
cd "$HERE"
staging_tag=v0.${K8S_VERSION#1.}
kk_mod=$(go mod download -json "k8s.io/kubernetes@v$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
cat >go.mod <<MOD
// Build-only module: pins the Kubernetes control plane used by tests/cluster/up.sh.
// No Go code lives here; \`tool\` directives name the binaries. Regenerate with tests/cluster/tools/regen.sh.
module oim-operator.invalid/testcluster/tools

go 1.26.0

godebug default=go1.26
MOD
for m in $(sed -n 's#^[[:space:]]*\(k8s\.io/[A-Za-z0-9._-]*\) => \./staging/.*#\1#p' "$kk_mod"); do
  go mod edit -replace="$m=$m@$staging_tag"
done
go mod edit -require="k8s.io/kubernetes@v$K8S_VERSION" \
  -tool=k8s.io/kubernetes/cmd/kube-apiserver -tool=k8s.io/kubernetes/cmd/kube-controller-manager \
  -tool=k8s.io/kubernetes/cmd/kube-scheduler -tool=k8s.io/kubernetes/cmd/kubectl -tool=go.etcd.io/etcd/server/v3
go mod tidy
# LeaderWorkerSet's controller builds with the same module versions (tests/cluster/build.sh):
# tools/lws.mod is go.mod plus sigs.k8s.io/lws.
cp go.mod lws.mod
cp go.sum lws.sum
go get -modfile=lws.mod "sigs.k8s.io/lws/cmd@$LWS_VERSION"
