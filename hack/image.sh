#!/usr/bin/env bash
# `make image`: builds the runtime image the Dockerfile describes, daemonless, from a locally built
# binary, and pushes it to a registry — no container runtime or base-image pull needed. The
# layout matches the Dockerfile's runtime stage (distroless cc, nonroot): /usr/bin/oim, the seed
# catalog in /usr/share/oim/profiles, CA certificates, glibc and libgcc_s, /etc/passwd with
# nonroot (65532), a 1777 /tmp; USER 65532:65532; OCI and OpenShift labels.
#
#   hack/image.sh REF [BINARY]     REF e.g. 127.0.0.1:5000/opea/oim:0.1.0; BINARY default target/release/oim
# Needs crane (tests/cluster/build-packaging.sh builds it); plain HTTP for 127.0.0.1 registries.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REF=${1:?usage: hack/image.sh REF [BINARY]}
BINARY=${2:-$ROOT/target/release/oim}
CRANE=${CRANE:-crane}
command -v "$CRANE" >/dev/null || { echo "image.sh: crane not found; run tests/cluster/build-packaging.sh and put its bin directory on PATH" >&2; exit 1; }
[[ -x "$BINARY" ]] || { echo "image.sh: $BINARY is not an executable; build it (cargo build --release --locked)" >&2; exit 1; }
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/Cargo.toml" | head -1)
REVISION=$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root="$work/root"
mkdir -p "$root"/{usr/bin,usr/share/oim,etc/ssl/certs,tmp,licenses}
install -m 0755 "$BINARY" "$root/usr/bin/oim"
cp -r "$ROOT/profiles" "$root/usr/share/oim/profiles"
rm -f "$root/usr/share/oim/profiles/"*.py
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
# The C runtime the binary links (what distroless/cc carries), at the paths the loader expects.
for lib in $(ldd "$BINARY" | grep -o '/[^ ]*' | sort -u); do
  mkdir -p "$root$(dirname "$lib")" && cp -L "$lib" "$root$lib"
done
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$root/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$root/etc/group"
mkdir -p "$root/home/nonroot"
printf "SPDX-License-Identifier: Apache-2.0\n" >"$root/licenses/LICENSE"
chmod 1777 "$root/tmp"
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$root" -cf "$work/layer.tar" .
# OCI annotations-as-labels and the labels OpenShift certification checks (name, vendor, version,
# release, summary, description).
labels=(
  "org.opencontainers.image.title=oim"
  "org.opencontainers.image.description=oim-operator: the operator, the node agent and the weights downloader"
  "org.opencontainers.image.version=$VERSION"
  "org.opencontainers.image.revision=$REVISION"
  "org.opencontainers.image.source=https://github.com/opea-project/oim-operator"
  "org.opencontainers.image.licenses=Apache-2.0"
  "org.opencontainers.image.vendor=OPEA"
  "name=oim" "vendor=OPEA" "version=$VERSION" "release=1" "maintainer=OPEA oim-operator maintainers"
  "summary=Serve open models with vLLM on any accelerator"
  "description=oim-operator: the operator, the node agent and the weights downloader in one image"
  "io.k8s.display-name=OIM Operator" "io.k8s.description=Serve open models with vLLM on any accelerator"
)
label_args=()
for l in "${labels[@]}"; do label_args+=(--label "$l"); done
"$CRANE" append --insecure --oci-empty-base -f "$work/layer.tar" -t "$REF" >/dev/null
"$CRANE" mutate --insecure "$REF" -t "$REF" --set-platform linux/amd64 --user 65532:65532 --workdir / --entrypoint /usr/bin/oim \
  --env PATH=/usr/bin:/bin --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt "${label_args[@]}" >/dev/null
echo "$REF"
