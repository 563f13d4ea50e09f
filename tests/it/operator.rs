//! The OIMService controller on the local control plane: from "model + KPI" to a Ready vLLM
//! service, with a status that explains. Each test runs its own operator on its own namespace.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use oim::api::{OIMService, ServiceState};

use crate::cluster::{self, KwokNode, SCENARIO_LABEL, TestNs};

/// An operator process; stopped on drop. Unless a test asks, it neither deploys the node agent
/// (tests share the cluster) nor listens for metrics.
pub(crate) struct Operator(Child);

impl Operator {
    pub(crate) fn start(namespace: &str) -> Operator {
        Operator::with_catalog(namespace, concat!(env!("CARGO_MANIFEST_DIR"), "/profiles"))
    }

    pub(crate) fn with_catalog(namespace: &str, catalog: &str) -> Operator {
        Operator::with_args(&["--catalog", catalog, "--watch-namespaces", namespace])
    }

    pub(crate) fn with_args(args: &[&str]) -> Operator {
        // The rights the chart installs, never the admin's: a missing rule fails the test.
        Operator::with_kubeconfig(cluster::operator_kubeconfig(), args)
    }

    /// An operator authenticating with `kubeconfig` (e.g. a ServiceAccount token's).
    pub(crate) fn with_kubeconfig(kubeconfig: &str, args: &[&str]) -> Operator {
        Operator::spawn(kubeconfig, args, &[])
    }

    /// An operator with extra environment (e.g. its POD_NAME).
    pub(crate) fn spawn(kubeconfig: &str, args: &[&str], env: &[(&str, &str)]) -> Operator {
        let mut defaults = vec![];
        if !args.contains(&"--metrics-bind") {
            defaults.extend(["--metrics-bind", "off"]);
        }
        if !args.contains(&"--agent-namespace") {
            defaults.push("--no-agent");
        }
        // OIM_TEST_OPERATOR_LOGS=DIR keeps each operator's log there, for a failing test.
        let log = match std::env::var_os("OIM_TEST_OPERATOR_LOGS") {
            Some(dir) => {
                let path = std::path::Path::new(&dir).join(format!("{}.log", cluster::unique("operator")));
                Stdio::from(std::fs::File::create(path).expect("operator log file"))
            }
            None => Stdio::null(),
        };
        let child = Command::new(env!("CARGO_BIN_EXE_oim"))
            .arg("operator")
            .args(args)
            .args(defaults)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info,kube=warn")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start oim operator");
        Operator(child)
    }

    /// Its process id.
    pub(crate) fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Whether the process is still running (it has not exited or crashed).
    pub(crate) fn running(&mut self) -> bool {
        self.0.try_wait().expect("operator process status").is_none()
    }

    /// SIGKILL: no shutdown, whatever it was doing is cut off.
    pub(crate) fn kill(&mut self) {
        self.0.kill().expect("SIGKILL the operator");
        let _ = self.0.wait();
    }
}

impl Operator {
    /// Sends `signal` (e.g. `-STOP`).
    pub(crate) fn signal(&self, signal: &str) {
        let _ = Command::new("kill").args([signal, &self.0.id().to_string()]).status();
    }

    /// Its exit code once it has ended, else None.
    pub(crate) fn exited(&mut self) -> Option<Option<i32>> {
        self.0.try_wait().ok().flatten().map(|s| s.code())
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        if !matches!(self.0.try_wait(), Ok(None)) {
            return; // reaped already: its pid may belong to another process now
        }
        let _ = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
        let _ = self.0.wait();
    }
}

pub(crate) fn service(name: &str, model: &str, kpi: &str, scenario: &str) -> OIMService {
    serde_saphyr::from_str(&format!(
        "apiVersion: oim.opea.dev/v1alpha1\nkind: OIMService\nmetadata: {{name: {name}}}\nspec:\n  model: {{name: {model}}}\n  profile: {{kpi: {kpi}}}\n  nodeSelector: {{{SCENARIO_LABEL}: {scenario}}}\n"
    ))
    .unwrap()
}

/// Whether the service's state is Ready.
pub(crate) fn ready(s: &OIMService) -> bool {
    s.status.as_ref().and_then(|s| s.state) == Some(ServiceState::Ready)
}

/// The image of a Deployment's first container.
pub(crate) fn image(d: &Deployment) -> String {
    d.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0].image.clone().unwrap_or_default()
}

/// A namespace and an 8xH100 node for `scenario`, an operator on it, and the Llama 3.1 8B latency
/// service `llm` Ready there.
pub(crate) struct Serving {
    pub(crate) ns: TestNs,
    pub(crate) node: KwokNode,
    pub(crate) svcs: Api<OIMService>,
    pub(crate) _operator: Operator,
}

pub(crate) async fn serving_8b(client: &kube::Client, scenario: &str) -> Serving {
    cluster::install_oim_crds();
    let ns = TestNs::new(client, scenario, &[]).await;
    let node = KwokNode::create(client, scenario, &cluster::inventory_of("h100-sxm-80gb", 8), None).await;
    let operator = Operator::start(&ns.name);
    let svcs: Api<OIMService> = Api::namespaced(client.clone(), &ns.name);
    svcs.create(&PostParams::default(), &service("llm", "meta-llama/Llama-3.1-8B-Instruct", "latency", scenario))
        .await
        .unwrap();
    cluster::wait_for(&svcs, "llm", Duration::from_secs(90), ready).await;
    Serving { ns, node, svcs, _operator: operator }
}

pub(crate) fn condition<'a>(
    svc: &'a OIMService,
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    svc.status.as_ref()?.conditions.iter().find(|c| c.type_ == type_)
}

fn operator_write_time(d: &Deployment) -> Option<String> {
    d.metadata
        .managed_fields
        .as_ref()?
        .iter()
        .find(|m| m.manager.as_deref() == Some("oim-operator") && m.operation.as_deref() == Some("Apply"))
        .and_then(|m| m.time.as_ref())
        .map(|t| t.0.to_string())
}

#[tokio::test]
async fn llama_8b_latency_on_an_h100_node_becomes_ready_and_a_resync_writes_nothing() {
    let client = cluster::client().await;
    cluster::install_oim_crds();
    let ns = TestNs::new(&client, "op-h100", &[]).await;
    let node = KwokNode::create(&client, "op-h100", &cluster::inventory_of("h100-sxm-80gb", 8), None).await;
    let _operator = Operator::start(&ns.name);
    let svcs: Api<OIMService> = Api::namespaced(client.clone(), &ns.name);
    svcs.create(
        &PostParams::default(),
        &service("llama31-8b-latency", "meta-llama/Llama-3.1-8B-Instruct", "latency", "op-h100"),
    )
    .await
    .unwrap();

    let ready = cluster::wait_for(&svcs, "llama31-8b-latency", Duration::from_secs(90), |s| {
        s.status.as_ref().and_then(|s| s.state) == Some(ServiceState::Ready)
    })
    .await;
    let status = ready.status.clone().unwrap();
    assert_eq!(status.accelerator.as_deref(), Some("1x h100-sxm-80gb"));
    assert_eq!(status.available_replicas, Some(1));
    assert!(status.model.unwrap().cluster_endpoint.unwrap().starts_with("http://llama31-8b-latency."));
    let profile = status.profile.unwrap();
    assert_eq!(profile.name, "vllm-nvidia-h100-sxm-80gb-x1-latency-bf16");
    assert!(profile.reason.unwrap().contains("latency"));
    assert_eq!(condition(&ready, "CacheReady").unwrap().reason, "NotUsed");

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let d = deployments.get("llama31-8b-latency").await.unwrap();
    let c = &d.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0];
    assert_eq!(c.resources.as_ref().unwrap().limits.as_ref().unwrap()["nvidia.com/gpu"].0, "1");
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let pod = pods
        .list(&ListParams::default().labels("app.kubernetes.io/instance=llama31-8b-latency"))
        .await
        .unwrap()
        .items
        .remove(0);
    assert_eq!(pod.spec.unwrap().node_name.as_deref(), Some(node.name.as_str()), "it lands on the H100 node");

    // A forced resync of an unchanged service writes nothing.
    let before = operator_write_time(&d).expect("the operator applied the Deployment");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let touch = serde_json::json!({"metadata": {"annotations": {"oim.test/resync": "1"}}});
    svcs.patch("llama31-8b-latency", &PatchParams::default(), &Patch::Merge(&touch)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = deployments.get("llama31-8b-latency").await.unwrap();
    assert_eq!(operator_write_time(&after), Some(before), "the Deployment was rewritten although nothing changed");

    ns.cleanup().await;
    node.delete(&client).await;
}

#[tokio::test]
async fn llama_70b_on_l4_nodes_waits_with_reasons_and_becomes_ready_when_an_h100_node_joins() {
    let client = cluster::client().await;
    let _serial = cluster::serial().await;
    cluster::install_oim_crds();
    let ns = TestNs::new(&client, "op-70b", &[]).await;
    let l4 = KwokNode::create(&client, "op-70b", &cluster::inventory_of("l4", 1), None).await;
    let _operator = Operator::start(&ns.name);
    let svcs: Api<OIMService> = Api::namespaced(client.clone(), &ns.name);
    let mut svc = service("llama70b", "meta-llama/Llama-3.1-70B-Instruct", "latency", "op-70b");
    svc.spec.profile.as_mut().unwrap().precision = Some(oim::api::Precision::Bf16);
    svcs.create(&PostParams::default(), &svc).await.unwrap();
    let pending = cluster::wait_for(&svcs, "llama70b", Duration::from_secs(60), |s| {
        condition(s, "ProfileSelected").is_some_and(|c| c.status == "False")
    })
    .await;
    let c = condition(&pending, "ProfileSelected").unwrap();
    assert_eq!(c.reason, "NoFeasibleProfile");
    assert!(c.message.contains("largest schedulable group offers 1x nvidia l4"), "{}", c.message);
    assert_eq!(pending.status.as_ref().unwrap().state, Some(ServiceState::Pending));
    let rejected = &pending.status.as_ref().unwrap().profile.as_ref().unwrap().rejected;
    assert!(!rejected.is_empty() && rejected.len() <= 10);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    assert!(deployments.get_opt("llama70b").await.unwrap().is_none(), "no Deployment while nothing fits");

    // An H100 node joins: Ready without user action.
    let h100 = KwokNode::create(&client, "op-70b", &cluster::inventory_of("h100-sxm-80gb", 8), None).await;
    let ready = cluster::wait_for(&svcs, "llama70b", Duration::from_secs(90), |s| {
        s.status.as_ref().and_then(|s| s.state) == Some(ServiceState::Ready)
    })
    .await;
    assert_eq!(ready.status.unwrap().accelerator.as_deref(), Some("2x h100-sxm-80gb"));
    ns.cleanup().await;
    l4.delete(&client).await;
    h100.delete(&client).await;
}

fn cpu_inventory() -> oim::hardware::inventory::Inventory {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/cluster/nodes/oim-cpu-spr-0.yaml"))
        .unwrap();
    let node: k8s_openapi::api::core::v1::Node = serde_saphyr::from_str(&text).unwrap();
    oim::hardware::inventory::Inventory::parse(&node.metadata.annotations.unwrap()["oim.opea.dev/inventory"]).unwrap()
}

/// The same service on a cluster with only one kind of hardware.
async fn same_service_on(scenario: &str, inventory: oim::hardware::inventory::Inventory) -> (Deployment, OIMService) {
    let client = cluster::client().await;
    cluster::install_oim_crds();
    let ns = TestNs::new(&client, scenario, &[]).await;
    let node = KwokNode::create(&client, scenario, &inventory, None).await;
    let _operator = Operator::start(&ns.name);
    let svcs: Api<OIMService> = Api::namespaced(client.clone(), &ns.name);
    svcs.create(&PostParams::default(), &service("llama", "meta-llama/Llama-3.1-8B-Instruct", "throughput", scenario))
        .await
        .unwrap();
    let ready = cluster::wait_for(&svcs, "llama", Duration::from_secs(90), |s| {
        s.status.as_ref().and_then(|s| s.state) == Some(ServiceState::Ready)
    })
    .await;
    let d = Api::<Deployment>::namespaced(client.clone(), &ns.name).get("llama").await.unwrap();
    ns.cleanup().await;
    node.delete(&client).await;
    (d, ready)
}

fn container(d: &Deployment) -> k8s_openapi::api::core::v1::Container {
    d.spec.clone().unwrap().template.spec.unwrap().containers.remove(0)
}

#[tokio::test]
async fn on_mi300x_only_the_service_requests_amd_gpus_with_the_rocm_engine() {
    let (d, svc) = same_service_on("op-mi300x", cluster::inventory_of("mi300x", 8)).await;
    let c = container(&d);
    assert_eq!(c.resources.unwrap().limits.unwrap()["amd.com/gpu"].0, "1");
    assert!(c.image.unwrap().starts_with("rocm/vllm:"));
    assert!(c.env.unwrap().iter().any(|e| e.name == "VLLM_ROCM_USE_AITER"));
    assert_eq!(svc.status.unwrap().profile.unwrap().accelerator.unwrap().product, "mi300x");
}

#[tokio::test]
async fn on_gaudi2_only_the_service_requests_gaudi_cards_with_hugepages_and_sys_nice() {
    let (d, _) = same_service_on("op-gaudi2", cluster::inventory_of("gaudi2", 8)).await;
    let c = container(&d);
    let limits = c.resources.unwrap().limits.unwrap();
    assert_eq!(limits["habana.ai/gaudi"].0, "1");
    assert!(limits.contains_key("hugepages-2Mi"));
    assert!(c.image.unwrap().contains("gaudi-docker"));
    assert!(c.env.unwrap().iter().any(|e| e.name == "PT_HPU_ENABLE_LAZY_COLLECTIVES"));
    assert_eq!(c.security_context.unwrap().capabilities.unwrap().add, Some(vec!["SYS_NICE".to_string()]));
}

#[tokio::test]
async fn on_cpu_only_nodes_the_service_requests_no_accelerator() {
    let (d, svc) = same_service_on("op-cpu", cpu_inventory()).await;
    let c = container(&d);
    let limits = c.resources.unwrap().limits.unwrap();
    assert!(!limits.keys().any(|k| k.contains("gpu") || k.contains("gaudi")), "{limits:?}");
    assert_eq!(limits.get("cpu"), c_requests_cpu(&d).as_ref(), "Guaranteed CPU");
    assert!(c.image.unwrap().starts_with("vllm/vllm-openai-cpu:"));
    assert_eq!(svc.status.unwrap().accelerator.as_deref(), Some("1x cpu"));
}

fn c_requests_cpu(d: &Deployment) -> Option<k8s_openapi::apimachinery::pkg::api::resource::Quantity> {
    container(d).resources?.requests?.get("cpu").cloned()
}

#[tokio::test]
async fn kpi_changes_roll_env_edits_keep_the_profile_scale_keeps_replicas_and_deletion_keeps_a_retained_pvc() {
    let client = cluster::client().await;
    cluster::install_oim_crds();
    let ns = TestNs::new(&client, "op-life", &[]).await;
    let node = KwokNode::create(&client, "op-life", &cluster::inventory_of("h100-sxm-80gb", 8), None).await;
    let _operator = Operator::start(&ns.name);
    let svcs: Api<OIMService> = Api::namespaced(client.clone(), &ns.name);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let mut svc = service("life", "meta-llama/Llama-3.1-8B-Instruct", "latency", "op-life");
    svc.spec.replicas = Some(3);
    svc.spec.storage =
        Some(serde_json::from_value(serde_json::json!({"pvc": {"create": true, "size": "10Gi"}})).unwrap());
    svcs.create(&PostParams::default(), &svc).await.unwrap();
    let ready = |s: &OIMService| s.status.as_ref().and_then(|s| s.state) == Some(ServiceState::Ready);
    cluster::wait_for(&svcs, "life", Duration::from_secs(90), |s| {
        ready(s) && s.status.as_ref().unwrap().available_replicas == Some(3)
    })
    .await;
    let stored_digest = || async {
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
        deployments.get("life").await.unwrap().metadata.annotations.unwrap()["oim.opea.dev/profile-digest"].clone()
    };
    let first_digest = stored_digest().await;

    // Editing env updates the Deployment but does not re-resolve the profile.
    let env = serde_json::json!({"spec": {"env": [{"name": "VLLM_LOGGING_LEVEL", "value": "DEBUG"}]}});
    svcs.patch("life", &PatchParams::default(), &Patch::Merge(&env)).await.unwrap();
    cluster::wait_for(&deployments, "life", Duration::from_secs(30), |d| {
        container(d).env.unwrap_or_default().iter().any(|e| e.name == "VLLM_LOGGING_LEVEL")
    })
    .await;
    assert_eq!(stored_digest().await, first_digest);

    // Changing the KPI re-selects and rolls the Deployment.
    let kpi = serde_json::json!({"spec": {"profile": {"kpi": "throughput"}}});
    svcs.patch("life", &PatchParams::default(), &Patch::Merge(&kpi)).await.unwrap();
    let rolled = cluster::wait_for(&svcs, "life", Duration::from_secs(60), |s| {
        s.status
            .as_ref()
            .and_then(|s| s.profile.as_ref())
            .is_some_and(|p| p.name == "vllm-nvidia-h100-sxm-80gb-x1-throughput-fp8")
    })
    .await;
    assert!(rolled.status.unwrap().profile.unwrap().reason.unwrap().contains("throughput"));
    let d = deployments.get("life").await.unwrap();
    assert_eq!(container(&d).args.unwrap()[0], "neuralmagic/Meta-Llama-3.1-8B-Instruct-FP8");

    // Enabling autoscaling on 3 replicas never drops below 3.
    let scale = serde_json::json!({"spec": {"replicas": null, "scale": {"enabled": true, "hpa": {"minReplicas": 1, "maxReplicas": 5}}}});
    svcs.patch("life", &PatchParams::default(), &Patch::Merge(&scale)).await.unwrap();
    cluster::wait_for(&deployments, "life", Duration::from_secs(30), |d| {
        d.metadata
            .managed_fields
            .iter()
            .flatten()
            .any(|m| m.manager.as_deref() == Some("oim-operator-replicas-handoff"))
    })
    .await;
    for _ in 0..8 {
        let d = deployments.get("life").await.unwrap();
        assert!(d.spec.unwrap().replicas.unwrap_or(0) >= 3, "replicas dropped while handing them to the HPA");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Deleting the service removes its children but keeps the Retain PVC with the weights.
    svcs.delete("life", &Default::default()).await.unwrap();
    let gone = async {
        for _ in 0..120 {
            if deployments.get_opt("life").await.unwrap().is_none() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        false
    };
    assert!(gone.await, "the Deployment is garbage-collected with its OIMService");
    let pvcs: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns.name);
    assert!(pvcs.get_opt("life-weights").await.unwrap().is_some(), "the weights PVC survives its service");
    ns.cleanup().await;
    node.delete(&client).await;
}

#[tokio::test]
async fn with_six_of_eight_h100s_taken_a_two_gpu_profile_wins_and_own_pods_never_cause_a_reselect() {
    let client = cluster::client().await;
    let _serial = cluster::serial().await;
    cluster::install_oim_crds();
    let ns = TestNs::new(&client, "op-busy", &[]).await;
    let node = KwokNode::create(&client, "op-busy", &cluster::inventory_of("h100-sxm-80gb", 8), None).await;
    // Someone else's pods hold 6 of the 8 GPUs.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    for i in 0..3 {
        let p: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("trainer-{i}")},
            "spec": {"nodeName": node.name, "containers": [{"name": "t", "image": "registry.invalid/train:1", "resources": {"limits": {"nvidia.com/gpu": "2"}}}]},
        }))
        .unwrap();
        pods.create(&PostParams::default(), &p).await.unwrap();
    }
    let _operator =
        Operator::with_catalog(&ns.name, concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/profiles-70b"));
    let svcs: Api<OIMService> = Api::namespaced(client.clone(), &ns.name);
    svcs.create(
        &PostParams::default(),
        &service("llama70b", "meta-llama/Llama-3.1-70B-Instruct", "latency", "op-busy"),
    )
    .await
    .unwrap();
    let ready = cluster::wait_for(&svcs, "llama70b", Duration::from_secs(90), |s| {
        s.status.as_ref().and_then(|s| s.state) == Some(ServiceState::Ready)
    })
    .await;
    let profile = ready.status.as_ref().unwrap().profile.clone().unwrap();
    assert_eq!(profile.name, "vllm-nvidia-h100-sxm-80gb-x2-latency-bf16");
    let x4 = profile.rejected.iter().find(|r| r.name.contains("x4")).expect("the 4-GPU profile is listed as rejected");
    assert!(x4.reason.contains("InsufficientFreeAccelerators") && x4.reason.contains("free: 2 on"), "{}", x4.reason);

    // Now the service's own pod holds the last 2 GPUs; a resync must keep its choice.
    let touch = serde_json::json!({"metadata": {"annotations": {"oim.test/resync": "1"}}});
    svcs.patch("llama70b", &PatchParams::default(), &Patch::Merge(&touch)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = svcs.get("llama70b").await.unwrap();
    assert_eq!(after.status.as_ref().unwrap().state, Some(ServiceState::Ready));
    assert_eq!(after.status.unwrap().profile.unwrap().name, "vllm-nvidia-h100-sxm-80gb-x2-latency-bf16");
    ns.cleanup().await;
    node.delete(&client).await;
}

#[tokio::test]
async fn what_oim_render_prints_is_what_the_operator_applied() {
    let client = cluster::client().await;
    cluster::install_oim_crds();
    let ns = TestNs::new(&client, "op-render", &[]).await;
    let node = KwokNode::create(&client, "op-render", &cluster::inventory_of("l4", 1), None).await;
    let _operator = Operator::start(&ns.name);
    let svcs: Api<OIMService> = Api::namespaced(client.clone(), &ns.name);
    let mut svc = service("llama", "meta-llama/Llama-3.1-8B-Instruct", "throughput", "op-render");
    svc.metadata.namespace = Some(ns.name.clone());
    svcs.create(&PostParams::default(), &svc).await.unwrap();
    cluster::wait_for(&svcs, "llama", Duration::from_secs(90), |s| {
        s.status.as_ref().and_then(|s| s.state) == Some(ServiceState::Ready)
    })
    .await;

    let dir = std::env::temp_dir().join(cluster::unique("op-render"));
    std::fs::create_dir_all(&dir).unwrap();
    let svc_file = dir.join("svc.yaml");
    std::fs::write(&svc_file, serde_saphyr::to_string(&svc).unwrap()).unwrap();
    let nodes_file = dir.join("nodes.json");
    let live_node = Api::<k8s_openapi::api::core::v1::Node>::all(client.clone()).get(&node.name).await.unwrap();
    std::fs::write(
        &nodes_file,
        serde_json::json!({"kind": "List", "apiVersion": "v1", "items": [live_node]}).to_string(),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_oim"))
        .args([
            "render",
            "-f",
            svc_file.to_str().unwrap(),
            "--inventory",
            nodes_file.to_str().unwrap(),
            "--catalog",
            concat!(env!("CARGO_MANIFEST_DIR"), "/profiles"),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&String::from_utf8_lossy(&out.stdout)).unwrap();
    let rendered = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let live =
        serde_json::to_value(Api::<Deployment>::namespaced(client.clone(), &ns.name).get("llama").await.unwrap())
            .unwrap();
    let pod = |d: &serde_json::Value| d["spec"]["template"]["spec"].clone();
    let (r, l) = (pod(rendered), pod(&live));
    for field in ["nodeSelector", "tolerations", "securityContext", "enableServiceLinks", "volumes"] {
        assert_eq!(r[field], l[field], "pod spec field {field}");
    }
    for field in ["image", "command", "args", "env", "resources", "volumeMounts", "securityContext"] {
        let (rc, lc) = (&r["containers"][0][field], &l["containers"][0][field]);
        assert_eq!(rc, lc, "container field {field}");
    }
    ns.cleanup().await;
    node.delete(&client).await;
}

#[tokio::test]
async fn an_unreachable_registry_is_reported_as_degraded_registry_unavailable() {
    let client = cluster::client().await;
    cluster::install_oim_crds();
    let ns = TestNs::new(&client, "op-noreg", &[]).await;
    let node = KwokNode::create(&client, "op-noreg", &cluster::inventory_of("h100-sxm-80gb", 8), None).await;
    // Port 9 on loopback: nothing listens there.
    let _operator = Operator::with_args(&["--profile-registry", "127.0.0.1:9/oim", "--watch-namespaces", &ns.name]);
    let svcs: Api<OIMService> = Api::namespaced(client.clone(), &ns.name);
    svcs.create(&PostParams::default(), &service("llama", "meta-llama/Llama-3.1-8B-Instruct", "latency", "op-noreg"))
        .await
        .unwrap();
    let degraded = cluster::wait_for(&svcs, "llama", Duration::from_secs(60), |s| {
        condition(s, "Degraded").is_some_and(|c| c.status == "True")
    })
    .await;
    let c = condition(&degraded, "Degraded").unwrap();
    assert_eq!(c.reason, "RegistryUnavailable");
    assert!(c.message.contains("registry 127.0.0.1:9 is unreachable"), "{}", c.message);
    assert_eq!(degraded.status.unwrap().state, Some(ServiceState::Pending));
    ns.cleanup().await;
    node.delete(&client).await;
}

#[tokio::test]
async fn an_operator_killed_mid_reconcile_is_replaced_and_every_service_converges_once() {
    let client = cluster::client().await;
    cluster::install_oim_crds();
    let ns = TestNs::new(&client, "op-kill", &[]).await;
    let node = KwokNode::create(&client, "op-kill", &cluster::inventory_of("h100-sxm-80gb", 8), None).await;
    let mut first = Operator::start(&ns.name);
    let svcs: Api<OIMService> = Api::namespaced(client.clone(), &ns.name);
    let names: Vec<String> = (0..6).map(|i| format!("llm-{i}")).collect();
    for n in &names {
        svcs.create(&PostParams::default(), &service(n, "meta-llama/Llama-3.1-8B-Instruct", "latency", "op-kill"))
            .await
            .unwrap();
    }
    // SIGKILL as soon as the first Deployment exists: some services are half applied.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    cluster::wait_until("a first Deployment", Duration::from_secs(60), || async {
        deployments.list(&ListParams::default()).await.ok().filter(|l| !l.items.is_empty()).map(|_| ())
    })
    .await;
    first.kill();
    let _second = Operator::start(&ns.name);
    for n in &names {
        cluster::wait_for(&svcs, n, Duration::from_secs(90), |s| {
            s.status.as_ref().and_then(|s| s.state) == Some(ServiceState::Ready)
        })
        .await;
    }
    let all = deployments.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(all.len(), names.len(), "one Deployment per service, none duplicated or lost");
    for d in &all {
        let gpus = &d.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0].resources.as_ref().unwrap();
        assert_eq!(gpus.limits.as_ref().unwrap()["nvidia.com/gpu"].0, "1");
    }
    ns.cleanup().await;
    node.delete(&client).await;
}

#[tokio::test]
async fn a_node_whose_inventory_does_not_parse_is_named_as_unparseable_where_nothing_fits() {
    let client = cluster::client().await;
    cluster::install_oim_crds();
    let ns = TestNs::new(&client, "op-unparseable", &[]).await;
    let node = KwokNode::create(&client, "op-unparseable", &cluster::inventory_of("h100-sxm-80gb", 8), None).await;
    // A foreign or broken writer: the annotation is not an inventory.
    let broken = serde_json::json!({"metadata": {"annotations": {oim::hardware::inventory::INVENTORY_ANNOTATION: "{\"accelerators\": 8"}}});
    Api::<k8s_openapi::api::core::v1::Node>::all(client.clone())
        .patch(&node.name, &PatchParams::default(), &Patch::Merge(&broken))
        .await
        .unwrap();
    let _operator = Operator::start(&ns.name);
    let svcs: Api<OIMService> = Api::namespaced(client.clone(), &ns.name);
    svcs.create(
        &PostParams::default(),
        &service("llm", "meta-llama/Llama-3.1-8B-Instruct", "latency", "op-unparseable"),
    )
    .await
    .unwrap();
    let pending = cluster::wait_for(&svcs, "llm", Duration::from_secs(60), |s| {
        condition(s, "ProfileSelected").is_some_and(|c| c.status == "False")
    })
    .await;
    let c = condition(&pending, "ProfileSelected").unwrap();
    assert_eq!(c.reason, "NoFeasibleProfile");
    assert!(c.message.contains(&format!("node {} has an unparseable", node.name)), "{}", c.message);
    ns.cleanup().await;
    node.delete(&client).await;
}
