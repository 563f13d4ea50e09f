#!/usr/bin/env python3
"""`make bundle`: writes the OLM bundle (bundle/manifests, bundle/metadata) from the project's one
source of truth — crds/ (the CRDs), config/rbac/role.yaml (permissions), config/manager/manager.yaml
(the operator Deployment), examples/ (alm-examples), src/profile/engines.yaml (related images) —
plus the catalog metadata below. Needs PyYAML (Debian: python3-yaml). Deterministic: no dates."""
import base64
import json
import os
import sys

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "oim-operator"
CHANNEL = "candidate"  # pre-1.0; OLM channel naming: candidate, fast, stable


def load(path, many=False):
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d] if many else yaml.safe_load(f)


def version():
    with open(os.path.join(ROOT, "Cargo.toml"), encoding="utf-8") as f:
        for line in f:
            if line.startswith("version ="):
                return line.split('"')[1]
    sys.exit("bundle.py: no version in Cargo.toml")


def rules(name):
    for doc in load("config/rbac/role.yaml", many=True):
        if doc["metadata"]["name"] == name:
            return doc["rules"]
    sys.exit(f"bundle.py: config/rbac/role.yaml has no role {name}")


def descriptors(prefix, paths):
    return [{"path": p, "displayName": d, "description": text, "x-descriptors": x} for p, d, text, x in paths]


OWNED = {
    "OIMService": {
        "displayName": "OIM Service",
        "description": "A model served with vLLM on the best launch profile for the accelerators the cluster has free.",
        "resources": [
            {"kind": "Deployment", "name": "", "version": "v1"}, {"kind": "Service", "name": "", "version": "v1"},
            {"kind": "ConfigMap", "name": "", "version": "v1"},
            {"kind": "HorizontalPodAutoscaler", "name": "", "version": "v2"},
            {"kind": "Ingress", "name": "", "version": "v1"},
        ],
        "spec": [
            ("model.name", "Model", "Hugging Face model id", ["urn:alm:descriptor:com.tectonic.ui:text"]),
            ("profile.kpi", "KPI", "latency, throughput or quantization",
             ["urn:alm:descriptor:com.tectonic.ui:select:latency", "urn:alm:descriptor:com.tectonic.ui:select:throughput",
              "urn:alm:descriptor:com.tectonic.ui:select:quantization"]),
            ("replicas", "Replicas", "vLLM replicas (without autoscaling)", ["urn:alm:descriptor:com.tectonic.ui:podCount"]),
            ("authSecret", "Hugging Face token Secret", "Secret holding HF_TOKEN",
             ["urn:alm:descriptor:io.kubernetes:Secret"]),
        ],
        "status": [
            ("state", "State", "Pending, NotReady, Ready or Failed", ["urn:alm:descriptor:io.kubernetes.phase"]),
            ("conditions", "Conditions", "Why the service is in its state", ["urn:alm:descriptor:io.kubernetes.conditions"]),
            ("accelerator", "Accelerator", "Accelerators per replica", ["urn:alm:descriptor:text"]),
            ("profile.name", "Profile", "The selected launch profile", ["urn:alm:descriptor:text"]),
            ("model.clusterEndpoint", "Endpoint", "In-cluster OpenAI-compatible endpoint",
             ["urn:alm:descriptor:org.w3:link"]),
        ],
    },
    "OIMCache": {
        "displayName": "OIM Cache",
        "description": "Model weights downloaded once into a PVC for the hardware present; retained by default.",
        "resources": [{"kind": "PersistentVolumeClaim", "name": "", "version": "v1"},
                      {"kind": "Job", "name": "", "version": "v1"}],
        "spec": [
            ("source.hf.model", "Model", "Hugging Face model id", ["urn:alm:descriptor:com.tectonic.ui:text"]),
            ("retentionPolicy", "Retention", "Retain (default) or Delete the PVC with the cache",
             ["urn:alm:descriptor:com.tectonic.ui:select:Retain", "urn:alm:descriptor:com.tectonic.ui:select:Delete"]),
        ],
        "status": [
            ("state", "State", "Pending, InProgress, Ready or Failed", ["urn:alm:descriptor:io.kubernetes.phase"]),
            ("conditions", "Conditions", "Download progress and failures", ["urn:alm:descriptor:io.kubernetes.conditions"]),
            ("pvc", "PVC", "The PVC holding the weights", ["urn:alm:descriptor:io.kubernetes:PersistentVolumeClaim"]),
            ("size", "Size", "Size of the PVC", ["urn:alm:descriptor:text"]),
        ],
    },
}

DESCRIPTION = """oim-operator serves any open model on whatever accelerators your cluster has — NVIDIA,
AMD Instinct, Intel Gaudi, Intel Data Center GPU or plain CPU — with vLLM, from one small resource.

It detects each node's hardware (a node agent it deploys), picks the best launch profile (engine image,
tensor parallelism, engine args, exact resources, measured performance) for the model, the KPI and the
accelerators that are free, and renders a correctly sized vLLM Deployment, Service and friends. Status
explains every choice, including why other profiles were rejected. An OIMCache downloads weights once
into a PVC that outlives it.

Pods run under restricted-v2; Gaudi and CPU model pods need SYS_NICE (an SCC granting it in their
namespace)."""


def icon():
    svg = ('<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 64 64"><rect width="64" height="64" rx="12" '
           'fill="#1f4e79"/><text x="32" y="41" font-family="sans-serif" font-size="22" font-weight="bold" '
           'fill="#fff" text-anchor="middle">OIM</text></svg>')
    return [{"base64data": base64.b64encode(svg.encode()).decode(), "mediatype": "image/svg+xml"}]


def csv(ver, crds):
    image = f"docker.io/opea/oim:{ver}"
    deployment = load("config/manager/manager.yaml", many=True)[0]
    spec = deployment["spec"]
    container = spec["template"]["spec"]["containers"][0]
    container["image"] = image
    # OLM names the target namespaces in this annotation ("" for AllNamespaces).
    container["env"].append({"name": "OLM_TARGET_NAMESPACES",
                             "valueFrom": {"fieldRef": {"fieldPath": "metadata.annotations['olm.targetNamespaces']"}}})
    container["args"] = container["args"] + ["--watch-namespaces=$(OLM_TARGET_NAMESPACES)"]
    examples = [d for f in ("llama31-8b-latency.yaml", "llama31-70b-cache.yaml")
                for d in load(f"examples/{f}", many=True)]
    engines = load("src/profile/engines.yaml")
    engine_images = sorted({e["image"] for e in (engines.values() if isinstance(engines, dict) else engines)
                            if isinstance(e, dict) and "image" in e})
    owned = []
    for crd in crds:
        kind = crd["spec"]["names"]["kind"]
        meta = OWNED[kind]
        owned.append({
            "name": crd["metadata"]["name"], "version": crd["spec"]["versions"][0]["name"], "kind": kind,
            "displayName": meta["displayName"], "description": meta["description"], "resources": meta["resources"],
            "specDescriptors": descriptors("spec", meta["spec"]),
            "statusDescriptors": descriptors("status", meta["status"]),
        })
    return {
        "apiVersion": "operators.coreos.com/v1alpha1",
        "kind": "ClusterServiceVersion",
        "metadata": {
            "name": f"{PACKAGE}.v{ver}",
            "namespace": "placeholder",
            "annotations": {
                "alm-examples": json.dumps(examples, indent=2),
                "capabilities": "Basic Install",
                "categories": "AI/Machine Learning",
                "containerImage": image,
                "description": "Serve open models with vLLM on NVIDIA, AMD, Intel Gaudi, Intel GPU or CPU nodes.",
                "repository": "https://github.com/opea-project/oim-operator",
                "support": "OPEA",
                "operatorframework.io/suggested-namespace": "oim-system",
                "features.operators.openshift.io/disconnected": "false",
                "features.operators.openshift.io/fips-compliant": "false",
                "features.operators.openshift.io/proxy-aware": "true",
                "features.operators.openshift.io/tls-profiles": "false",
                "features.operators.openshift.io/token-auth-aws": "false",
                "features.operators.openshift.io/token-auth-azure": "false",
                "features.operators.openshift.io/token-auth-gcp": "false",
            },
            "labels": {"operatorframework.io/arch.amd64": "supported", "operatorframework.io/os.linux": "supported"},
        },
        "spec": {
            "displayName": "OIM Operator",
            "description": DESCRIPTION,
            "version": ver,
            "minKubeVersion": "1.30.0",
            "maturity": "alpha",
            "provider": {"name": "OPEA"},
            "maintainers": [{"name": "OPEA oim-operator maintainers", "email": "oim-operator@opea.dev"}],
            "links": [{"name": "Source", "url": "https://github.com/opea-project/oim-operator"}],
            "keywords": ["llm", "vllm", "inference", "gpu", "accelerator", "model serving"],
            "icon": icon(),
            "installModes": [{"type": t, "supported": True}
                             for t in ("OwnNamespace", "SingleNamespace", "MultiNamespace", "AllNamespaces")],
            "customresourcedefinitions": {"owned": owned},
            "relatedImages": [{"name": "oim", "image": image}] + [
                {"name": f"engine-{i}", "image": img} for i, img in enumerate(engine_images)],
            "install": {
                "strategy": "deployment",
                "spec": {
                    # Namespaced rules: OLM grants them in every target namespace (cluster-wide for
                    # AllNamespaces); the cluster-scoped ones always.
                    "permissions": [{"serviceAccountName": "oim-operator",
                                     "rules": rules("oim-operator") + rules("oim-operator-agent")}],
                    "clusterPermissions": [{"serviceAccountName": "oim-operator", "rules": rules("oim-operator-cluster")}],
                    "deployments": [{"name": "oim-operator", "label": deployment["metadata"]["labels"], "spec": spec}],
                },
            },
        },
    }


def main():
    ver = version()
    crds = load("crds/oim.opea.dev.yaml", many=True)
    # An other output directory (tests compare it with the checked-in bundle/).
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "bundle")
    os.makedirs(os.path.join(out, "manifests"), exist_ok=True)
    os.makedirs(os.path.join(out, "metadata"), exist_ok=True)
    header = "# Generated by `make bundle` (hack/bundle.py); do not edit.\n"

    def write(path, doc):
        with open(os.path.join(out, path), "w", encoding="utf-8") as f:
            f.write(header + yaml.safe_dump(doc, sort_keys=False, width=120))

    for crd in crds:
        write(f"manifests/{crd['metadata']['name']}.yaml", crd)
    write(f"manifests/{PACKAGE}.clusterserviceversion.yaml", csv(ver, crds))
    annotations = {
        "operators.operatorframework.io.bundle.mediatype.v1": "registry+v1",
        "operators.operatorframework.io.bundle.manifests.v1": "manifests/",
        "operators.operatorframework.io.bundle.metadata.v1": "metadata/",
        "operators.operatorframework.io.bundle.package.v1": PACKAGE,
        "operators.operatorframework.io.bundle.channels.v1": CHANNEL,
        "operators.operatorframework.io.bundle.channel.default.v1": CHANNEL,
        "com.redhat.openshift.versions": "v4.16",
    }
    write("metadata/annotations.yaml", {"annotations": annotations})
    labels = "".join(f"LABEL {k}={v}\n" for k, v in annotations.items())
    with open(os.path.join(out, "..", "bundle.Dockerfile"), "w", encoding="utf-8") as f:
        f.write(header + "FROM scratch\n" + labels + "COPY bundle/manifests /manifests/\nCOPY bundle/metadata /metadata/\n")


if __name__ == "__main__":
    main()
