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

/// An operator process watching one namespace; stopped on drop.
struct Operator(Child);

impl Operator {
    fn start(namespace: &str) -> Operator {
        let child = Command::new(env!("CARGO_BIN_EXE_oim"))
            .args([
                "operator",
                "--catalog",
                concat!(env!("CARGO_MANIFEST_DIR"), "/profiles"),
                "--watch-namespaces",
                namespace,
            ])
            .env("KUBECONFIG", &cluster::env().kubeconfig)
            .env("RUST_LOG", "info,kube=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start oim operator");
        Operator(child)
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
        let _ = self.0.wait();
    }
}

fn service(name: &str, model: &str, kpi: &str, scenario: &str) -> OIMService {
    serde_saphyr::from_str(&format!(
        "apiVersion: oim.opea.dev/v1alpha1\nkind: OIMService\nmetadata: {{name: {name}}}\nspec:\n  model: {{name: {model}}}\n  profile: {{kpi: {kpi}}}\n  nodeSelector: {{{SCENARIO_LABEL}: {scenario}}}\n"
    ))
    .unwrap()
}

fn condition<'a>(
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
