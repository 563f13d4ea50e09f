//! The node agent against the real API server: it publishes what the fixture tree holds, follows
//! hardware changes, writes nothing when nothing changed, and the admission policy confines it.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use kube::api::PostParams;
use oim::hardware::inventory::{INVENTORY_ANNOTATION, Inventory};
use serde_json::json;

use crate::cluster::{self, KwokNode};

fn fixture(case: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sysfs").join(case)
}

/// A running agent process; killed on drop if the test fails before stopping it.
struct Agent(Option<Child>);

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn start_agent(node: &str, case: &str) -> Agent {
    let child = Command::new(env!("CARGO_BIN_EXE_oim"))
        .args(["node-agent", "--node-name", node, "--interval", "1", "--root"])
        .arg(fixture(case))
        .env("KUBECONFIG", &cluster::env().kubeconfig)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start oim node-agent");
    Agent(Some(child))
}

/// SIGTERM, then the exit status and everything it logged.
fn stop_agent(mut agent: Agent) -> (bool, String) {
    let child = agent.0.take().expect("agent running");
    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let out = child.wait_with_output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn label<'a>(node: &'a Node, key: &str) -> Option<&'a str> {
    node.metadata.labels.as_ref()?.get(key).map(String::as_str)
}

fn agent_write_time(node: &Node) -> Option<String> {
    node.metadata
        .managed_fields
        .as_ref()?
        .iter()
        .find(|m| m.manager.as_deref() == Some(oim::agent::FIELD_MANAGER))
        .and_then(|m| m.time.as_ref())
        .map(|t| t.0.to_string())
}

#[tokio::test]
async fn the_agent_publishes_its_nodes_hardware_follows_changes_and_rewrites_nothing_after_a_restart() {
    let client = cluster::client().await;
    let bare = Inventory::default();
    let node = KwokNode::create(&client, "agent-swap", &bare, None).await;
    let nodes: Api<Node> = Api::all(client.clone());
    assert_eq!(label(&nodes.get(&node.name).await.unwrap(), "oim.opea.dev/accelerator.product"), None);

    let agent = start_agent(&node.name, "h100-sxm-8x");
    let published = cluster::wait_for(&nodes, &node.name, Duration::from_secs(30), |n| {
        label(n, "oim.opea.dev/accelerator.product") == Some("h100-sxm-80gb")
    })
    .await;
    assert_eq!(label(&published, "oim.opea.dev/accelerator.vendor"), Some("nvidia"));
    assert_eq!(label(&published, "oim.opea.dev/accelerator.count"), Some("8"));
    assert_eq!(label(&published, "oim.opea.dev/accelerator.memory-gib"), Some("79"));
    assert_eq!(label(&published, "oim.opea.dev/cpu.amx"), Some("true"));
    let inv = Inventory::parse(&published.metadata.annotations.as_ref().unwrap()[INVENTORY_ANNOTATION]).unwrap();
    assert_eq!((inv.node.as_str(), inv.accelerators[0].count), (node.name.as_str(), 8));
    let (clean, _) = stop_agent(agent);
    assert!(clean, "SIGTERM stops the agent cleanly");

    // The hardware changes (swap the tree): labels follow, and the AMX label of the old CPU goes.
    let agent = start_agent(&node.name, "mi300x-8x");
    let swapped = cluster::wait_for(&nodes, &node.name, Duration::from_secs(30), |n| {
        label(n, "oim.opea.dev/accelerator.product") == Some("mi300x")
    })
    .await;
    assert_eq!(label(&swapped, "oim.opea.dev/accelerator.vendor"), Some("amd"));
    assert_eq!(label(&swapped, "oim.opea.dev/cpu.amx"), None, "labels for hardware that is gone are removed");
    assert_eq!(label(&swapped, "oim.opea.dev/cpu.avx512"), Some("true"));
    let (clean, _) = stop_agent(agent);
    assert!(clean);

    // A restart on unchanged hardware writes nothing, interval after interval.
    let before = agent_write_time(&nodes.get(&node.name).await.unwrap()).expect("the agent's managedFields entry");
    tokio::time::sleep(Duration::from_millis(1100)).await; // managedFields time has second resolution
    let agent = start_agent(&node.name, "mi300x-8x");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (clean, log) = stop_agent(agent);
    assert!(clean);
    assert!(!log.contains("published the node inventory"), "the agent wrote although nothing changed:\n{log}");
    assert_eq!(agent_write_time(&nodes.get(&node.name).await.unwrap()), Some(before));
    node.delete(&client).await;
}

#[tokio::test]
async fn oim_detect_works_from_inside_a_container_without_host_mounts() {
    // This machine is itself a container: its /sys and /proc are what a pod without hostPath sees.
    let out = Command::new(env!("CARGO_BIN_EXE_oim")).args(["detect", "--root", "/"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let inv = Inventory::parse(&String::from_utf8_lossy(&out.stdout)).unwrap();
    let cpu = inv.cpu.expect("the host CPU is visible");
    assert!(cpu.threads >= 1 && inv.memory_mib > 0);
}

fn agent_manifests(files: &[&str]) -> Vec<String> {
    files.iter().map(|f| format!("{}/config/agent/{f}", env!("CARGO_MANIFEST_DIR"))).collect()
}

#[tokio::test]
async fn the_daemonset_needs_no_host_path_and_passes_restricted_pod_security() {
    let text = std::fs::read_to_string(format!("{}/config/agent/daemonset.yaml", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let ds: k8s_openapi::api::apps::v1::DaemonSet = serde_saphyr::from_str(&text).unwrap();
    let pod = ds.spec.unwrap().template.spec.unwrap();
    assert!(pod.volumes.unwrap_or_default().iter().all(|v| v.host_path.is_none()), "no hostPath");
    assert!(pod.tolerations.unwrap().iter().any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none()));
    let c = &pod.containers[0];
    assert!(c.args.as_ref().unwrap().windows(2).any(|w| w == ["--root", "/"]));
    let limits = c.resources.as_ref().unwrap().limits.as_ref().unwrap();
    assert_eq!(limits["memory"].0, "32Mi", "tiny footprint");

    let _serial = cluster::serial().await;
    for f in agent_manifests(&["namespace.yaml", "serviceaccount.yaml", "rbac.yaml"]) {
        cluster::kubectl(&["apply", "--server-side", "--field-manager", "oim-tests", "-f", &f]);
    }
    // oim-system enforces `restricted`; a server-side dry-run runs PodSecurity admission on the pods.
    let manifest = agent_manifests(&["daemonset.yaml"]).remove(0);
    cluster::kubectl(&["apply", "--server-side", "--dry-run=server", "-f", &manifest]);
    let pod_json = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "agent-probe", "namespace": "oim-system"}, "spec": pod_spec_json(&text)});
    let (ok, _, err) =
        cluster::tool_stdin("kubectl", &["create", "--dry-run=server", "-f", "-"], &pod_json.to_string());
    assert!(ok, "restricted refused the agent pod: {err}");
}

fn pod_spec_json(daemonset_yaml: &str) -> serde_json::Value {
    let ds: serde_json::Value = serde_saphyr::from_str(daemonset_yaml).unwrap();
    let mut spec = ds["spec"]["template"]["spec"].clone();
    spec["containers"][0]["env"] = json!([{"name": "NODE_NAME", "value": "n"}]);
    spec
}

#[tokio::test]
async fn the_admission_policy_confines_the_agent_to_oim_keys_on_its_own_node() {
    let client = cluster::client().await;
    let _serial = cluster::serial().await;
    for f in agent_manifests(&["namespace.yaml", "serviceaccount.yaml", "rbac.yaml", "admission-policy.yaml"]) {
        cluster::kubectl(&["apply", "--server-side", "--field-manager", "oim-tests", "-f", &f]);
    }
    let own = KwokNode::create(&client, "agent-vap", &Inventory::default(), None).await;
    let other = KwokNode::create(&client, "agent-vap", &Inventory::default(), None).await;

    // A pod of the agent's ServiceAccount on `own`; a token bound to it names that node.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "oim-system");
    let pod_name = cluster::unique("agent");
    let text = std::fs::read_to_string(format!("{}/config/agent/daemonset.yaml", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let mut spec = pod_spec_json(&text);
    spec["nodeName"] = json!(own.name);
    let pod: Pod = serde_json::from_value(json!({"metadata": {"name": pod_name}, "spec": spec})).unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let token = cluster::kubectl(&[
        "create",
        "token",
        "oim-node-agent",
        "-n",
        "oim-system",
        "--bound-object-kind",
        "Pod",
        "--bound-object-name",
        &pod_name,
    ]);
    let env = cluster::env();
    let as_agent = |args: &[&str]| {
        let mut full = vec![
            "--kubeconfig",
            "/dev/null",
            "--server",
            &env.server,
            "--certificate-authority",
            &env.ca,
            "--token",
            token.trim(),
        ];
        full.extend_from_slice(args);
        let out = Command::new(env.bin.join("kubectl")).args(&full).output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };

    let (ok, err) = as_agent(&["label", "node", &own.name, "oim.opea.dev/accelerator.vendor=nvidia", "--overwrite"]);
    assert!(ok, "the agent may set oim labels on its own node: {err}");
    let (ok, err) = as_agent(&["annotate", "node", &own.name, "oim.opea.dev/inventory={}", "--overwrite"]);
    assert!(ok, "the agent may set the inventory annotation: {err}");
    // The API server loads a new policy and binding asynchronously: wait until it enforces them.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (ok, err) = loop {
        let (ok, err) = as_agent(&["label", "node", &own.name, "team=ml", "--overwrite"]);
        if !ok || Instant::now() > deadline {
            break (ok, err);
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    assert!(!ok && err.contains("may only change oim.opea.dev/* labels"), "{err}");
    let (ok, err) = as_agent(&["annotate", "node", &own.name, "note=x", "--overwrite"]);
    assert!(!ok && err.contains("may only change the oim.opea.dev/inventory annotation"), "{err}");
    let (ok, err) = as_agent(&["label", "node", &other.name, "oim.opea.dev/accelerator.vendor=amd", "--overwrite"]);
    assert!(!ok && err.contains("may only change the Node its pod runs on"), "{err}");
    // (kubectl cordon reports the refusal but may still exit 0, so read what the server said.)
    let (_, err) = as_agent(&["cordon", &own.name]);
    assert!(err.contains("may not change a Node's spec"), "the agent may not cordon: {err}");
    let spec = Api::<Node>::all(client.clone()).get(&own.name).await.unwrap().spec.unwrap();
    assert_ne!(spec.unschedulable, Some(true));
    // Nor hold its Node back from deletion, or hand it to an owner the garbage collector follows.
    let finalizer = r#"{"metadata":{"finalizers":["example.com/hold"]}}"#;
    let (ok, err) = as_agent(&["patch", "node", &own.name, "--type", "merge", "-p", finalizer]);
    assert!(!ok && err.contains("may not change a Node's finalizers"), "{err}");
    let owner = r#"{"metadata":{"ownerReferences":[{"apiVersion":"v1","kind":"Namespace","name":"x","uid":"00000000-0000-0000-0000-000000000001"}]}}"#;
    let (ok, err) = as_agent(&["patch", "node", &own.name, "--type", "merge", "-p", owner]);
    assert!(!ok && err.contains("may not change a Node's ownerReferences"), "{err}");

    let _ = pods.delete(&pod_name, &Default::default()).await;
    cluster::kubectl(&["delete", "--ignore-not-found", "-f", &agent_manifests(&["admission-policy.yaml"])[0]]);
    own.delete(&client).await;
    other.delete(&client).await;
}

#[tokio::test]
async fn where_sysfs_shows_no_accelerator_the_agent_uses_gpu_feature_discovery_labels() {
    let client = cluster::client().await;
    let node = KwokNode::create(&client, "agent-gfd", &Inventory::default(), None).await;
    cluster::kubectl(&[
        "label",
        "node",
        &node.name,
        "nvidia.com/gpu.product=NVIDIA-L4",
        "nvidia.com/gpu.count=1",
        "nvidia.com/gpu.memory=23034",
    ]);
    let agent = start_agent(&node.name, "bmc-and-nics-only");
    let nodes: Api<Node> = Api::all(client.clone());
    let published = cluster::wait_for(&nodes, &node.name, Duration::from_secs(30), |n| {
        label(n, "oim.opea.dev/accelerator.product") == Some("l4")
    })
    .await;
    assert_eq!(label(&published, "oim.opea.dev/accelerator.count"), Some("1"));
    let (clean, log) = stop_agent(agent);
    assert!(clean && log.contains("using vendor labels"), "{log}");
    node.delete(&client).await;
}
