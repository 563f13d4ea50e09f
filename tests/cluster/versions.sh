# Pinned versions of the test toolchain; sourced by build.sh, up.sh and down.sh.
# Kubernetes 1.36 is the newest minor Go 1.26 builds; k8s-openapi 0.29 supports it.
K8S_VERSION=1.36.3
KWOK_VERSION=v0.8.0
ORAS_VERSION=v1.3.6
DOCKER_REGISTRY_DEB=docker-registry
# Optional APIs the renderer targets, from their Go modules' published CRD manifests.
OPENSHIFT_API_VERSION=v0.0.0-20260511191110-9b69e5fa27e9
PROMETHEUS_OPERATOR_VERSION=v0.85.0
# NIM's router and platform: Gateway API (standard channel HTTPRoute, Gateway), the Inference
# Extension's GA InferencePool (inference.networking.k8s.io/v1) and KServe's InferenceService.
GATEWAY_API_VERSION=v1.6.3
INFERENCE_EXTENSION_VERSION=v1.3.0
KSERVE_VERSION=v0.16.0
# LeaderWorkerSet: its CRD, and its controller run as a process (multi-node serving).
LWS_VERSION=v0.9.0
# Packaging tools (tests/cluster/build-packaging.sh): the chart, the image, the OLM bundle and catalog.
HELM_VERSION=v3.22.0
CRANE_VERSION=v0.22.1
# operator-framework/api (validator, OLM CRDs) is pinned by tests/olm/go.mod, opm by tests/olm/opm/go.mod.
