//! The test environment is real: scheduling on extended resources, storage, admission, CRDs with
//! CEL on the API server, and an OCI registry that `oras` talks to.

use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use oim::api::{OIMCache, OIMService};
use serde_json::json;

use crate::cluster::{self, KwokNode, SCENARIO_LABEL, TestNs};

fn gpu_pod(name: &str, scenario: &str, resource: &str, count: u32) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "nodeSelector": {SCENARIO_LABEL: scenario},
            "containers": [{
                "name": "engine", "image": "registry.invalid/vllm:test",
                "resources": {"limits": {resource: count.to_string()}},
            }],
        },
    }))
    .unwrap()
}

fn phase(p: &Pod) -> &str {
    p.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("")
}

#[tokio::test]
async fn a_pod_asking_for_one_gpu_runs_on_the_h100_node_and_one_asking_for_nine_stays_pending() {
    let client = cluster::client().await;
    let _serial = cluster::serial().await;
    let ns = TestNs::new(&client, "env-gpu", &[]).await;
    let node = KwokNode::create(&client, "env-h100", &cluster::inventory_of("h100-sxm-80gb", 8), None).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);

    pods.create(&PostParams::default(), &gpu_pod("one-gpu", "env-h100", "nvidia.com/gpu", 1)).await.unwrap();
    let running = cluster::wait_for(&pods, "one-gpu", Duration::from_secs(60), |p| phase(p) == "Running").await;
    assert_eq!(running.spec.unwrap().node_name.as_deref(), Some(node.name.as_str()));

    pods.create(&PostParams::default(), &gpu_pod("nine-gpus", "env-h100", "nvidia.com/gpu", 9)).await.unwrap();
    let pending = cluster::wait_for(&pods, "nine-gpus", Duration::from_secs(60), |p| {
        p.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|c| {
            c.iter().any(|c| {
                c.type_ == "PodScheduled" && c.status == "False" && c.reason.as_deref() == Some("Unschedulable")
            })
        })
    })
    .await;
    let message =
        pending.status.unwrap().conditions.unwrap().into_iter().find(|c| c.type_ == "PodScheduled").unwrap().message;
    assert!(message.unwrap_or_default().contains("Insufficient nvidia.com/gpu"), "scheduler should say why");
    assert_eq!(phase(&pods.get("nine-gpus").await.unwrap()), "Pending");

    ns.cleanup().await;
    node.delete(&client).await;
}

#[tokio::test]
async fn a_200gi_claim_binds_on_the_default_storage_class_and_a_pod_using_it_runs() {
    let client = cluster::client().await;
    let ns = TestNs::new(&client, "env-pvc", &[]).await;
    let node = KwokNode::create(&client, "env-pvc", &cluster::inventory_of("l4", 1), None).await;
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns.name);
    let claim: PersistentVolumeClaim = serde_json::from_value(json!({
        "metadata": {"name": "weights"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "200Gi"}}},
    }))
    .unwrap();
    pvcs.create(&PostParams::default(), &claim).await.unwrap();
    let bound = cluster::wait_for(&pvcs, "weights", Duration::from_secs(60), |c| {
        c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound")
    })
    .await;
    assert_eq!(bound.spec.unwrap().storage_class_name.as_deref(), Some("standard"), "default StorageClass applied");

    let mut pod = gpu_pod("uses-claim", "env-pvc", "nvidia.com/gpu", 1);
    let spec = pod.spec.as_mut().unwrap();
    spec.volumes = Some(vec![
        serde_json::from_value(json!({"name": "w", "persistentVolumeClaim": {"claimName": "weights"}})).unwrap(),
    ]);
    spec.containers[0].volume_mounts =
        Some(vec![serde_json::from_value(json!({"name": "w", "mountPath": "/models"})).unwrap()]);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    pods.create(&PostParams::default(), &pod).await.unwrap();
    cluster::wait_for(&pods, "uses-claim", Duration::from_secs(60), |p| phase(p) == "Running").await;

    ns.cleanup().await;
    node.delete(&client).await;
}

#[tokio::test]
async fn a_pod_violating_restricted_is_refused_where_the_namespace_enforces_it() {
    let client = cluster::client().await;
    let ns = TestNs::new(&client, "env-psa", &[("pod-security.kubernetes.io/enforce", "restricted")]).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let err = pods.create(&PostParams::default(), &gpu_pod("root", "none", "cpu", 1)).await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("violates PodSecurity \"restricted"), "PodSecurity admission should refuse it: {text}");

    let hardened: Pod = serde_json::from_value(json!({
        "metadata": {"name": "hardened"},
        "spec": {
            "securityContext": {"runAsNonRoot": true, "runAsUser": 2000, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "engine", "image": "registry.invalid/vllm:test",
                "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}},
            }],
        },
    }))
    .unwrap();
    pods.create(&PostParams { dry_run: true, ..Default::default() }, &hardened)
        .await
        .expect("restricted admits a hardened pod");
    ns.cleanup().await;
}

/// Server-side dry-run of `obj`; returns the API server's error text, or None when admitted.
async fn dry_run_create<K>(api: &Api<K>, obj: &K) -> Option<String>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    api.create(&PostParams { dry_run: true, field_manager: Some("oim-tests".into()) }, obj)
        .await
        .err()
        .map(|e| e.to_string())
}

#[tokio::test]
async fn the_api_server_enforces_every_cel_rule_with_the_message_that_says_the_fix() {
    let client = cluster::client().await;
    cluster::install_oim_crds();
    let ns = TestNs::new(&client, "env-cel", &[]).await;
    let svcs: Api<OIMService> = Api::namespaced(client.clone(), &ns.name);
    let caches: Api<OIMCache> = Api::namespaced(client.clone(), &ns.name);
    let svc = |name: &str, spec: serde_json::Value| -> OIMService {
        let mut spec = spec;
        spec["model"] = json!({"name": "meta-llama/Llama-3.1-8B-Instruct"});
        serde_json::from_value(json!({"apiVersion": "oim.opea.dev/v1alpha1", "kind": "OIMService", "metadata": {"name": name}, "spec": spec})).unwrap()
    };
    let good = svc("llama31-8b-latency", json!({"profile": {"kpi": "latency"}}));
    assert_eq!(dry_run_create(&svcs, &good).await, None);

    let cases = [
        (svc(&"a".repeat(53), json!({})), "at most 52 characters"),
        (
            svc("two-stores", json!({"storage": {"oimCache": {"name": "c"}, "emptyDir": {}}})),
            "at most one of oimCache, pvc or emptyDir",
        ),
        (svc("both", json!({"replicas": 2, "scale": {"enabled": true, "hpa": {"maxReplicas": 3}}})), "exclusive"),
        (
            svc("minmax", json!({"scale": {"enabled": true, "hpa": {"minReplicas": 4, "maxReplicas": 2}}})),
            "minReplicas must be <= maxReplicas",
        ),
        (svc("port", json!({"args": ["--port", "9000"]})), "must not contain --port"),
        (svc("positional", json!({"args": ["some/model", "--enforce-eager"]})), "must start with a flag"),
        (svc("engine", json!({"profile": {"engine": "tgi"}})), "only 'vllm' is supported"),
        (svc("size", json!({"storage": {"pvc": {"create": true, "size": "lots"}}})), "must be a quantity"),
        (
            svc(
                "router-both",
                json!({"expose": {"router": {"hostDomainName": "example.com", "ingress": {"ingressClass": "nginx"}, "gateway": {"namespace": "gw", "name": "g"}}}}),
            ),
            "set either ingress or gateway, not both",
        ),
        (
            svc("router-host", json!({"expose": {"router": {"gateway": {"namespace": "gw", "name": "g"}}}})),
            "hostDomainName is required",
        ),
        (
            svc(
                "router-pool",
                json!({"inferencePlatform": "kserve", "expose": {"router": {"hostDomainName": "example.com", "gateway": {"namespace": "gw", "name": "g"}, "inferencePool": {"endpointPickerRef": {"name": "epp"}}}}}),
            ),
            "needs spec.inferencePlatform: standalone",
        ),
        (
            svc(
                "dra-two-kinds",
                json!({"draResources": [{"resourceClaimName": "gpus", "resourceClaimTemplateName": "gpu-template"}]}),
            ),
            "set exactly one of resourceClaimName",
        ),
        (
            svc("dra-shared", json!({"replicas": 2, "draResources": [{"resourceClaimName": "gpus"}]})),
            "every pod would share it; use claimCreationSpec or resourceClaimTemplateName",
        ),
        (
            svc(
                "dra-count",
                json!({"draResources": [{"claimCreationSpec": {"devices": [{"name": "gpus", "count": 0}]}}]}),
            ),
            "count must be between 1 and 64",
        ),
    ];
    for (obj, message) in cases {
        let err = dry_run_create(&svcs, &obj).await.unwrap_or_else(|| panic!("{:?} was admitted", obj.metadata.name));
        assert!(err.contains(message), "{:?}: {err}", obj.metadata.name);
    }
    // Enums are enforced by the schema (serde would refuse to build the typed object, so send JSON).
    let mut raw = serde_json::to_value(svc("kpi", json!({}))).unwrap();
    raw["spec"]["profile"] = json!({"kpi": "fastest"});
    let (ok, _, stderr) =
        cluster::tool_stdin("kubectl", &["create", "--dry-run=server", "-n", &ns.name, "-f", "-"], &raw.to_string());
    assert!(!ok && stderr.contains("Unsupported value: \"fastest\""), "enum not enforced: {stderr}");

    // Transition rules: create for real, then dry-run updates.
    let pvc_svc =
        svc("weights", json!({"storage": {"pvc": {"create": true, "size": "100Gi", "storageClass": "standard"}}}));
    svcs.create(&PostParams::default(), &pvc_svc).await.unwrap();
    let patch = |p: serde_json::Value| {
        let svcs = svcs.clone();
        async move {
            let params = PatchParams { dry_run: true, ..Default::default() };
            svcs.patch("weights", &params, &Patch::Merge(p)).await.err().map(|e| e.to_string())
        }
    };
    assert_eq!(patch(json!({"spec": {"storage": {"pvc": {"size": "200Gi"}}}})).await, None, "growing is allowed");
    assert!(patch(json!({"spec": {"storage": {"pvc": {"size": "50Gi"}}}})).await.unwrap().contains("can only grow"));
    assert!(
        patch(json!({"spec": {"storage": {"pvc": {"storageClass": "fast"}}}}))
            .await
            .unwrap()
            .contains("storageClass is immutable")
    );

    let cache: OIMCache = serde_saphyr::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/llama31-70b-cache.yaml")).unwrap(),
    )
    .unwrap();
    caches.create(&PostParams::default(), &cache).await.unwrap();
    let err = caches
        .patch(
            "llama31-70b",
            &PatchParams { dry_run: true, ..Default::default() },
            &Patch::Merge(json!({"spec": {"source": {"hf": {"revision": "main"}}}})),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("spec.source is immutable"), "{err}");
    let mut split = cache.clone();
    split.metadata.name = Some("split".into());
    split.spec.source.hf.namespace = Some("meta-llama".into());
    split.spec.source.hf.model_name = "Llama-3.1-70B-Instruct".into();
    assert_eq!(dry_run_create(&caches, &split).await, None, "namespace + bare name is accepted");
    split.spec.source.hf.namespace = None;
    assert!(dry_run_create(&caches, &split).await.unwrap().contains("give org/name"));

    // The example that the README calls invalid is refused by kubectl apply.
    let (ok, _, stderr) = cluster::tool(
        "kubectl",
        &[
            "apply",
            "--dry-run=server",
            "-n",
            &ns.name,
            "-f",
            concat!(env!("CARGO_MANIFEST_DIR"), "/examples/invalid-port-in-args.yaml"),
        ],
    );
    assert!(!ok && stderr.contains("must not contain --port"), "{stderr}");
    ns.cleanup().await;
}

#[tokio::test]
async fn crds_install_server_side_are_established_and_structural() {
    cluster::install_oim_crds();
    for crd in ["oimservices.oim.opea.dev", "oimcaches.oim.opea.dev"] {
        let conditions = cluster::kubectl(&[
            "get",
            "crd",
            crd,
            "-o",
            "jsonpath={range .status.conditions[*]}{.type}={.status};{end}",
        ]);
        assert!(conditions.contains("Established=True"), "{crd}: {conditions}");
        assert!(!conditions.contains("NonStructuralSchema"), "{crd}: {conditions}");
    }
    let out = cluster::kubectl(&["api-resources", "--api-group", "oim.opea.dev", "-o", "wide"]);
    assert!(out.contains("oimsvc") && out.contains("oimcache") && out.contains("oim"), "{out}");
    // The optional APIs install and uninstall cleanly, so tests can run with and without them.
    let _serial = cluster::serial().await;
    cluster::optional_apis(true);
    assert!(cluster::kubectl(&["api-resources", "--api-group", "route.openshift.io"]).contains("routes"));
    assert!(cluster::kubectl(&["api-resources", "--api-group", "monitoring.coreos.com"]).contains("servicemonitors"));
    cluster::optional_apis(false);
    let (_, out, _) = cluster::tool("kubectl", &["get", "crd", "routes.route.openshift.io"]);
    assert!(out.is_empty(), "Route CRD should be gone");
}

#[tokio::test]
async fn an_artifact_pushed_with_oras_is_listed_and_pulled_back() {
    let env = cluster::env();
    let dir = tempdir("oras");
    let file = dir.join("hello.yaml");
    std::fs::write(&file, "schema: test\n").unwrap();
    let repo = format!("{}/{}", env.registry, cluster::unique("oim-test/oras"));
    let reference = format!("{repo}:v1");
    let (ok, _, err) = run_in(
        &dir,
        "oras",
        &["push", "--plain-http", "--artifact-type", "application/vnd.oim.test", &reference, "hello.yaml"],
    );
    assert!(ok, "oras push: {err}");
    let (ok, tags, err) = cluster::tool("oras", &["repo", "tags", "--plain-http", &repo]);
    assert!(ok && tags.lines().any(|t| t == "v1"), "oras repo tags: {tags} {err}");
    let out = dir.join("out");
    std::fs::create_dir_all(&out).unwrap();
    let (ok, _, err) = run_in(&out, "oras", &["pull", "--plain-http", &reference]);
    assert!(ok, "oras pull: {err}");
    assert_eq!(std::fs::read_to_string(out.join("hello.yaml")).unwrap(), "schema: test\n");

    // The basic-auth registry refuses anonymous pushes and accepts its user.
    let auth_ref = format!("{}/oim-test/auth:v1", env.auth_registry);
    let (ok, _, _) = run_in(&dir, "oras", &["push", "--plain-http", &auth_ref, "hello.yaml"]);
    assert!(!ok, "anonymous push to the auth registry must fail");
    let (ok, _, err) = run_in(
        &dir,
        "oras",
        &["push", "--plain-http", "-u", &env.auth_user, "-p", &env.auth_password, &auth_ref, "hello.yaml"],
    );
    assert!(ok, "authenticated push: {err}");
}

fn tempdir(prefix: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(cluster::unique(prefix));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn run_in(dir: &std::path::Path, tool: &str, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(cluster::env().bin.join(tool)).args(args).current_dir(dir).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}
