# Pinned versions of the test toolchain; sourced by build.sh, up.sh and down.sh.
# Kubernetes 1.36 is the newest minor Go 1.26 builds; k8s-openapi 0.29 supports it.
K8S_VERSION=1.36.3
KWOK_VERSION=v0.8.0
ORAS_VERSION=v1.3.6
DOCKER_REGISTRY_DEB=docker-registry
