#!/usr/bin/env bash
# Pushes the bundle image (bundle.Dockerfile's layout, built daemonless with crane) to REGISTRY
# and renders an OLM file-based catalog for it with opm into OUT/oim-operator/catalog.yaml:
# package, channel and the bundle opm read from the image; then `opm validate`s it.
#   hack/catalog.sh REGISTRY OUT      e.g. hack/catalog.sh 127.0.0.1:5000 catalog
# Needs crane and opm on PATH (tests/cluster/build-packaging.sh); plain HTTP for 127.0.0.1.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REGISTRY=${1:?usage: hack/catalog.sh REGISTRY OUT}
OUT=${2:?usage: hack/catalog.sh REGISTRY OUT}
for t in crane opm; do command -v "$t" >/dev/null || { echo "catalog.sh: $t not found; run tests/cluster/build-packaging.sh and put its bin directory on PATH" >&2; exit 1; }; done
PACKAGE=oim-operator
CHANNEL=$(sed -n 's/.*bundle.channel.default.v1: *//p' "$ROOT/bundle/metadata/annotations.yaml")
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/Cargo.toml" | head -1)
REF="$REGISTRY/opea/$PACKAGE-bundle:v$VERSION"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/root"
cp -r "$ROOT/bundle/manifests" "$ROOT/bundle/metadata" "$work/root/"
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$work/root" -cf "$work/layer.tar" manifests metadata
labels=()
while read -r k v; do labels+=(--label "${k%:}=$v"); done < <(sed -n 's/^  \(operators\.operatorframework\.io\.[^ ]*\) \(.*\)/\1 \2/p; s/^  \(com\.redhat\.[^ ]*\) \(.*\)/\1 \2/p' "$ROOT/bundle/metadata/annotations.yaml")
crane append --insecure --oci-empty-base -f "$work/layer.tar" -t "$REF" >/dev/null
crane mutate --insecure "$REF" -t "$REF" --set-platform linux/amd64 "${labels[@]}" >/dev/null

# opm pulls through containers/image, which wants a signature policy: accept the image we just
# pushed (a policy in a private HOME for this run, not the machine's).
mkdir -p "$work/home/.config/containers"
echo '{"default": [{"type": "insecureAcceptAnything"}]}' >"$work/home/.config/containers/policy.json"
mkdir -p "$OUT/$PACKAGE"
{
  printf -- '---\nschema: olm.package\nname: %s\ndefaultChannel: %s\n' "$PACKAGE" "$CHANNEL"
  printf -- '---\nschema: olm.channel\npackage: %s\nname: %s\nentries:\n  - name: %s.v%s\n' "$PACKAGE" "$CHANNEL" "$PACKAGE" "$VERSION"
  HOME="$work/home" opm render "$REF" --use-http -o yaml
} >"$OUT/$PACKAGE/catalog.yaml"
opm validate "$OUT"
echo "$OUT/$PACKAGE/catalog.yaml"
