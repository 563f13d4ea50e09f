# One image: the operator, the node agent and the OIMCache download Job (`oim` subcommands).
# `make image` builds the same runtime layout without a container runtime (hack/image.sh).
FROM docker.io/library/rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin oim && strip target/release/oim

# distroless/cc: glibc, libgcc_s, CA certificates, /etc/passwd with nonroot (65532); no shell.
FROM gcr.io/distroless/cc-debian12:nonroot
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="oim" \
      org.opencontainers.image.description="oim-operator: the operator, the node agent and the weights downloader" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="https://github.com/opea-project/oim-operator" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="OPEA" \
      name="oim" vendor="OPEA" version="${VERSION}" release="1" \
      maintainer="OPEA oim-operator maintainers" \
      summary="Serve open models with vLLM on any accelerator" \
      description="oim-operator: the operator, the node agent and the weights downloader in one image" \
      io.k8s.display-name="OIM Operator" \
      io.k8s.description="Serve open models with vLLM on any accelerator"
COPY --from=build /src/target/release/oim /usr/bin/oim
COPY profiles/ /usr/share/oim/profiles/
# OpenShift assigns an arbitrary UID (group 0): HOME on /tmp, which the Deployment mounts writable.
ENV HOME=/tmp
USER 65532:65532
ENTRYPOINT ["/usr/bin/oim"]
