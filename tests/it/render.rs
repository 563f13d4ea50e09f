//! `oim render` output on every simulated node type is accepted by the real API server, and each
//! vendor's pod passes the Pod Security level the README documents for it.

use std::process::Command;

use k8s_openapi::api::core::v1::Node;
use kube::Api;
use oim::hardware::inventory::{INVENTORY_ANNOTATION, Inventory};
use serde_json::Value;

use crate::cluster::{self, KwokNode, SCENARIO_LABEL, TestNs};

struct Case {
    scenario: &'static str,
    inventory: Inventory,
    model: &'static str,
    kpi: &'static str,
    resource: &'static str,
    /// The strictest Pod Security level the pod passes.
    level: &'static str,
}

fn cpu_inventory() -> Inventory {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/cluster/nodes/oim-cpu-spr-0.yaml"))
        .unwrap();
    let node: Node = serde_saphyr::from_str(&text).unwrap();
    Inventory::parse(&node.metadata.annotations.unwrap()[INVENTORY_ANNOTATION]).unwrap()
}

fn render(files: &[String], inventory: &str, platform: &str) -> (i32, String, String) {
    let mut args = vec!["render".to_string()];
    for f in files {
        args.extend(["-f".into(), f.clone()]);
    }
    args.extend([
        "--inventory".into(),
        inventory.into(),
        "--platform".into(),
        platform.into(),
        "--catalog".into(),
        concat!(env!("CARGO_MANIFEST_DIR"), "/profiles").into(),
    ]);
    let out = Command::new(env!("CARGO_BIN_EXE_oim")).args(&args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[tokio::test]
async fn rendered_objects_for_every_vendor_pass_server_side_dry_run_and_pod_security() {
    let client = cluster::client().await;
    let _serial = cluster::serial().await;
    let cases = [
        Case {
            scenario: "render-h100",
            inventory: cluster::inventory_of("h100-sxm-80gb", 8),
            model: "meta-llama/Llama-3.1-8B-Instruct",
            kpi: "latency",
            resource: "nvidia.com/gpu",
            level: "restricted",
        },
        Case {
            scenario: "render-l4",
            inventory: cluster::inventory_of("l4", 1),
            model: "meta-llama/Llama-3.1-8B-Instruct",
            kpi: "throughput",
            resource: "nvidia.com/gpu",
            level: "restricted",
        },
        Case {
            scenario: "render-mi300x",
            inventory: cluster::inventory_of("mi300x", 8),
            model: "meta-llama/Llama-3.1-8B-Instruct",
            kpi: "throughput",
            resource: "amd.com/gpu",
            level: "restricted",
        },
        Case {
            scenario: "render-max",
            inventory: cluster::inventory_of("max-1550", 4),
            model: "meta-llama/Llama-3.1-8B-Instruct",
            kpi: "latency",
            resource: "gpu.intel.com/i915",
            level: "restricted",
        },
        Case {
            scenario: "render-gaudi",
            inventory: cluster::inventory_of("gaudi2", 8),
            model: "meta-llama/Llama-3.1-8B-Instruct",
            kpi: "latency",
            resource: "habana.ai/gaudi",
            level: "privileged",
        },
        Case {
            scenario: "render-cpu",
            inventory: cpu_inventory(),
            model: "meta-llama/Llama-3.1-8B-Instruct",
            kpi: "throughput",
            resource: "",
            level: "privileged",
        },
    ];
    cluster::install_oim_crds();
    let dir = std::env::temp_dir().join(cluster::unique("render"));
    std::fs::create_dir_all(&dir).unwrap();
    for case in cases {
        let node = KwokNode::create(&client, case.scenario, &case.inventory, None).await;
        let ns = TestNs::new(&client, case.scenario, &[]).await;
        // The inventory as the operator sees it: the live Node object.
        let nodes: Api<Node> = Api::all(client.clone());
        let live = nodes.get(&node.name).await.unwrap();
        let inv_file = dir.join(format!("{}-nodes.json", case.scenario));
        std::fs::write(&inv_file, serde_json::json!({"apiVersion": "v1", "kind": "List", "items": [live]}).to_string())
            .unwrap();
        let svc = dir.join(format!("{}.yaml", case.scenario));
        std::fs::write(
            &svc,
            format!(
                "apiVersion: oim.opea.dev/v1alpha1\nkind: OIMService\nmetadata: {{name: {}, namespace: {}}}\nspec:\n  model: {{name: {}}}\n  profile: {{kpi: {}}}\n  nodeSelector: {{{SCENARIO_LABEL}: {}}}\n  expose: {{ingress: {{enabled: true}}}}\n",
                case.scenario, ns.name, case.model, case.kpi, case.scenario
            ),
        )
        .unwrap();
        let (code, yaml, err) = render(&[svc.display().to_string()], inv_file.to_str().unwrap(), "kubernetes");
        assert_eq!(code, 0, "{}: {err}", case.scenario);
        if !case.resource.is_empty() {
            assert!(yaml.contains(case.resource), "{}: requests {}", case.scenario, case.resource);
        }
        let (ok, out, err) = cluster::tool_stdin(
            "kubectl",
            &[
                "apply",
                "--dry-run=server",
                "--server-side",
                "--field-manager",
                "oim-operator",
                "-n",
                &ns.name,
                "-f",
                "-",
            ],
            &yaml,
        );
        assert!(ok, "{}: the API server refused the rendered objects: {err}", case.scenario);
        assert!(
            out.contains("deployment.apps/") && out.contains("service/") && out.contains("ingress.networking.k8s.io/"),
            "{out}"
        );

        // The pod template as a Pod, under each Pod Security level.
        let docs: Vec<Value> = serde_saphyr::from_multiple(&yaml).unwrap();
        let deployment = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
        let mut spec = deployment["spec"]["template"]["spec"].clone();
        // The dry-run created no ServiceAccount; Pod Security does not look at it.
        spec.as_object_mut().unwrap().remove("serviceAccountName");
        let pod = serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "probe", "labels": deployment["spec"]["template"]["metadata"]["labels"]},
            "spec": spec,
        });
        for level in ["restricted", "baseline", "privileged"] {
            let (ok, _, err) = admitted_under(&ns.name, level, &pod);
            let expected = case.level == "restricted" || level == "privileged";
            assert_eq!(ok, expected, "{} under {level}: {err}", case.scenario);
            if !ok {
                assert!(err.contains("SYS_NICE"), "{}: refused for the documented reason: {err}", case.scenario);
            }
        }
        ns.cleanup().await;
        node.delete(&client).await;
    }
}

fn admitted_under(ns: &str, level: &str, pod: &Value) -> (bool, String, String) {
    cluster::kubectl(&[
        "label",
        "namespace",
        ns,
        &format!("pod-security.kubernetes.io/enforce={level}"),
        "--overwrite",
    ]);
    let mut pod = pod.clone();
    pod["metadata"]["namespace"] = Value::String(ns.into());
    cluster::tool_stdin("kubectl", &["create", "--dry-run=server", "-f", "-"], &pod.to_string())
}

#[tokio::test]
async fn route_and_service_monitor_are_accepted_when_their_apis_exist() {
    let client = cluster::client().await;
    let _serial = cluster::serial().await;
    cluster::optional_apis(true);
    let node = KwokNode::create(&client, "render-optional", &cluster::inventory_of("h100-sxm-80gb", 8), None).await;
    let ns = TestNs::new(&client, "render-optional", &[]).await;
    let dir = std::env::temp_dir().join(cluster::unique("render-opt"));
    std::fs::create_dir_all(&dir).unwrap();
    let svc = dir.join("svc.yaml");
    std::fs::write(&svc, format!(
        "apiVersion: oim.opea.dev/v1alpha1\nkind: OIMService\nmetadata: {{name: llama, namespace: {}}}\nspec:\n  model: {{name: meta-llama/Llama-3.1-8B-Instruct}}\n  nodeSelector: {{{SCENARIO_LABEL}: render-optional}}\n  expose: {{route: {{enabled: true}}}}\n  metrics: {{enabled: true, serviceMonitor: {{interval: 30s}}}}\n",
        ns.name
    )).unwrap();
    let live = Api::<Node>::all(client.clone()).get(&node.name).await.unwrap();
    let inv_file = dir.join("nodes.json");
    std::fs::write(&inv_file, serde_json::json!({"apiVersion": "v1", "kind": "List", "items": [live]}).to_string())
        .unwrap();
    let (code, yaml, err) = render(&[svc.display().to_string()], inv_file.to_str().unwrap(), "openshift");
    assert_eq!(code, 0, "{err}");
    assert!(yaml.contains("kind: Route") && yaml.contains("kind: ServiceMonitor"));
    let (ok, out, err) = cluster::tool_stdin(
        "kubectl",
        &["apply", "--dry-run=server", "--server-side", "-n", &ns.name, "-f", "-"],
        &yaml,
    );
    assert!(ok, "{err}");
    assert!(
        out.contains("route.route.openshift.io/llama") && out.contains("servicemonitor.monitoring.coreos.com/llama"),
        "{out}"
    );
    cluster::optional_apis(false);
    ns.cleanup().await;
    node.delete(&client).await;
}

#[tokio::test]
async fn the_examples_rendered_offline_are_accepted_by_the_api_server() {
    for golden in ["llama31-8b-latency.yaml", "llama31-70b-throughput.yaml"] {
        let path = format!("{}/tests/fixtures/golden/{golden}", env!("CARGO_MANIFEST_DIR"));
        let (ok, out, err) = cluster::tool(
            "kubectl",
            &["apply", "--dry-run=server", "--server-side", "--field-manager", "oim-operator", "-f", &path],
        );
        assert!(ok, "{golden}: {err}");
        assert!(out.contains("deployment.apps/"), "{out}");
    }
}

/// `oim render` refuses offline what the API server refuses, naming the same field: each
/// document is rendered (exit 2 and the path) and created with a server-side dry-run (refused,
/// and the API server's message names the same path).
#[tokio::test]
async fn offline_render_refuses_what_the_api_server_refuses_with_the_same_field_paths() {
    let client = cluster::client().await;
    let ns = TestNs::new(&client, "render-schema", &[]).await;
    let dir = std::env::temp_dir().join(cluster::unique("render-schema"));
    std::fs::create_dir_all(&dir).unwrap();
    let long = "x".repeat(300);
    let cases = [
        ("replicas: -5", "spec.replicas"),
        ("expose: {service: {port: 70000}}", "spec.expose.service.port"),
        ("expose: {service: {type: Sideways}}", "spec.expose.service.type"),
        ("replicsa: 2", "spec.replicsa"),
        ("authSecret: x\n  args: [--a, 3]", "spec.args[1]"),
        (&format!("authSecret: {long}"), "spec.authSecret"),
        // The CEL rule reads flags as vLLM's parser does.
        ("args: ['--served_model_name', x]", "spec.args"),
        ("args: ['--por', '9000']", "spec.args"),
    ];
    let inventory = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/inventories/test-cluster.yaml");
    for (i, (extra, path)) in cases.iter().enumerate() {
        let file = dir.join(format!("case-{i}.yaml"));
        std::fs::write(&file, format!(
            "apiVersion: oim.opea.dev/v1alpha1\nkind: OIMService\nmetadata: {{name: bad, namespace: {}}}\nspec:\n  model: {{name: meta-llama/Llama-3.1-8B-Instruct}}\n  {extra}\n",
            ns.name
        )).unwrap();
        let (code, _, err) = render(&[file.display().to_string()], inventory, "kubernetes");
        assert_eq!(code, 2, "{extra}: oim render accepted it: {err}");
        assert!(err.contains(&format!("{path}:")), "{extra}: oim render does not name {path}: {err}");
        let (ok, _, server) = cluster::tool(
            "kubectl",
            &["create", "--dry-run=server", "--validate=strict", "-f", file.to_str().unwrap()],
        );
        assert!(!ok, "{extra}: the API server accepted it");
        assert!(server.contains(path), "{extra}: the API server names another field: {server}");
    }
    // Values the CRD takes but the API server refuses in the Deployment: refused at render time.
    for (extra, path) in [
        ("env: [{name: 'A=B', value: x}]", "spec.env[0].name"),
        ("storage: {pvc: {name: weights, subPath: '../../etc'}}", "spec.storage.pvc.subPath"),
        ("resources: {requests: {memory: '-1Gi'}}", "spec.resources.requests[memory]"),
        ("image: {repository: registry.local/vllm}", "spec.image.tag"),
    ] {
        let file = dir.join("late.yaml");
        std::fs::write(&file, format!(
            "apiVersion: oim.opea.dev/v1alpha1\nkind: OIMService\nmetadata: {{name: bad, namespace: {}}}\nspec:\n  model: {{name: meta-llama/Llama-3.1-8B-Instruct}}\n  {extra}\n",
            ns.name
        )).unwrap();
        let (code, _, err) = render(&[file.display().to_string()], inventory, "kubernetes");
        assert_eq!(code, 2, "{extra}: {err}");
        assert!(err.contains(path), "{extra}: {err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
    ns.cleanup().await;
}
