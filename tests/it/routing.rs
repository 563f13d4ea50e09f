//! NIM's router and platform on the local control plane, with the Gateway API, Inference
//! Extension and KServe CRDs installed from their modules (no controller of theirs runs): an
//! HTTPRoute and an InferencePool accepted and owned, the routed host in the status; a KServe
//! InferenceService accepted, the status following the conditions the test writes for KServe;
//! and a clear reason when KServe is not installed.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use oim::api::OIMService;
use serde_json::json;

use crate::cluster::{self, KwokNode, TestNs};
use crate::operator::{Operator, condition, ready, service};

fn api(client: &kube::Client, ns: &str, group: &str, version: &str, kind: &str, plural: &str) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural);
    Api::namespaced_with(client.clone(), ns, &ar)
}

async fn gone(api: &Api<DynamicObject>, name: &str, what: &str) {
    cluster::wait_until(what, Duration::from_secs(60), || async {
        api.get_opt(name).await.ok().filter(|o| o.is_none()).map(|_| ())
    })
    .await;
}

#[tokio::test]
async fn router_gateway_gets_an_http_route_and_an_inference_pool_and_the_status_shows_the_routed_host() {
    let client = cluster::client().await;
    let _serial = cluster::serial().await;
    cluster::install_oim_crds();
    cluster::platform_apis(true);
    let ns = TestNs::new(&client, "route-gw", &[]).await;
    let node = KwokNode::create(&client, "route-gw", &cluster::inventory_of("h100-sxm-80gb", 8), None).await;
    // The parent Gateway terminates TLS: the endpoint in the status is https.
    let gateways = api(&client, &ns.name, "gateway.networking.k8s.io", "v1", "Gateway", "gateways");
    let gateway: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": "inference"},
        "spec": {"gatewayClassName": "example", "listeners": [{
            "name": "https", "protocol": "HTTPS", "port": 443,
            "tls": {"certificateRefs": [{"name": "wildcard-tls"}]},
        }]},
    }))
    .unwrap();
    gateways.create(&PostParams::default(), &gateway).await.unwrap();
    let _operator = Operator::start(&ns.name);
    let svcs: Api<OIMService> = Api::namespaced(client.clone(), &ns.name);
    let mut svc = service("llm", "meta-llama/Llama-3.1-8B-Instruct", "latency", "route-gw");
    svc.spec.expose = Some(
        serde_json::from_value(json!({"router": {
            "hostDomainName": "example.com",
            "gateway": {"namespace": ns.name, "name": "inference"},
            "inferencePool": {"endpointPickerRef": {"name": "vllm-epp"}},
        }}))
        .unwrap(),
    );
    svcs.create(&PostParams::default(), &svc).await.unwrap();
    let routes = api(&client, &ns.name, "gateway.networking.k8s.io", "v1", "HTTPRoute", "httproutes");
    let pools = api(&client, &ns.name, "inference.networking.k8s.io", "v1", "InferencePool", "inferencepools");
    let route = cluster::wait_for(&routes, "llm", Duration::from_secs(90), |_| true).await;
    let pool = cluster::wait_for(&pools, "llm", Duration::from_secs(30), |_| true).await;
    let host = format!("llm.{}.example.com", ns.name);
    assert_eq!(route.data["spec"]["hostnames"], json!([host]));
    assert_eq!(route.data["spec"]["rules"][0]["backendRefs"][0]["kind"], "InferencePool");
    // The pool selects exactly the engine's pods.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let d = cluster::wait_for(&deployments, "llm", Duration::from_secs(30), |_| true).await;
    let pod_labels = d.spec.unwrap().template.metadata.unwrap().labels.unwrap();
    let selector = pool.data["spec"]["selector"]["matchLabels"].as_object().unwrap().clone();
    assert!(!selector.is_empty());
    for (k, v) in &selector {
        assert_eq!(pod_labels.get(k).map(String::as_str), v.as_str(), "pool selector {k}");
    }
    let up = cluster::wait_for(&svcs, "llm", Duration::from_secs(90), ready).await;
    assert_eq!(up.status.unwrap().model.unwrap().external_endpoint, Some(format!("https://{host}")));

    // The router switched off: the route and the pool go.
    svcs.patch("llm", &PatchParams::default(), &Patch::Merge(&json!({"spec": {"expose": null}}))).await.unwrap();
    gone(&routes, "llm", "the HTTPRoute removed").await;
    gone(&pools, "llm", "the InferencePool removed").await;
    let after = cluster::wait_for(&svcs, "llm", Duration::from_secs(60), |s| {
        s.status.as_ref().and_then(|s| s.model.as_ref()).is_some_and(|m| m.external_endpoint.is_none())
    })
    .await;
    assert!(ready(&after));
    ns.cleanup().await;
    cluster::platform_apis(false);
    node.delete(&client).await;
}

#[tokio::test]
async fn kserve_platform_renders_an_inference_service_and_the_status_follows_its_ready_condition() {
    let client = cluster::client().await;
    let _serial = cluster::serial().await;
    cluster::install_oim_crds();
    cluster::platform_apis(true);
    let ns = TestNs::new(&client, "kserve", &[]).await;
    let node = KwokNode::create(&client, "kserve", &cluster::inventory_of("h100-sxm-80gb", 8), None).await;
    let _operator = Operator::start(&ns.name);
    let svcs: Api<OIMService> = Api::namespaced(client.clone(), &ns.name);
    let mut svc = service("llm", "meta-llama/Llama-3.1-8B-Instruct", "latency", "kserve");
    svc.spec.inference_platform = Some(oim::api::InferencePlatform::Kserve);
    svc.spec.replicas = Some(2);
    svcs.create(&PostParams::default(), &svc).await.unwrap();
    let isvcs = api(&client, &ns.name, "serving.kserve.io", "v1beta1", "InferenceService", "inferenceservices");
    let isvc = cluster::wait_for(&isvcs, "llm", Duration::from_secs(90), |_| true).await;
    assert_eq!(isvc.metadata.annotations.as_ref().unwrap()["serving.kserve.io/deploymentMode"], "RawDeployment");
    let predictor = &isvc.data["spec"]["predictor"];
    assert_eq!((predictor["minReplicas"].as_i64(), predictor["maxReplicas"].as_i64()), (Some(2), Some(2)));
    // No KServe controller runs: the status waits on the InferenceService, naming it.
    let waiting = cluster::wait_for(&svcs, "llm", Duration::from_secs(60), |s| {
        condition(s, "Ready").is_some_and(|c| c.reason == "InferenceServicePending")
    })
    .await;
    let st = waiting.status.clone().unwrap();
    // The container KServe runs carries exactly the resources the status reports.
    let container = &predictor["containers"][0];
    assert_eq!(container["name"], "kserve-container");
    assert_eq!(container["resources"], serde_json::to_value(st.resources.as_ref().unwrap()).unwrap());
    assert_eq!(container["resources"]["limits"]["nvidia.com/gpu"], "1");
    assert_eq!(
        st.model.unwrap().cluster_endpoint.as_deref(),
        Some(format!("http://llm-predictor.{}.svc:80", ns.name).as_str())
    );
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    assert!(deployments.get_opt("llm").await.unwrap().is_none(), "KServe, not the operator, makes the Deployment");

    // What KServe's controller would write: Ready, with its URLs.
    let url = format!("http://llm-{}.example.com", ns.name);
    let status = json!({"status": {
        "url": url,
        "address": {"url": format!("http://llm-predictor.{}.svc.cluster.local", ns.name)},
        "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}],
    }});
    isvcs.patch_status("llm", &PatchParams::default(), &Patch::Merge(&status)).await.unwrap();
    let up = cluster::wait_for(&svcs, "llm", Duration::from_secs(60), ready).await;
    let model = up.status.unwrap().model.unwrap();
    assert_eq!(model.external_endpoint.as_deref(), Some(url.as_str()));
    assert_eq!(model.cluster_endpoint, Some(format!("http://llm-predictor.{}.svc.cluster.local", ns.name)));

    // KServe reports it broken: the service follows, with KServe's reason and message.
    let broken = json!({"status": {"conditions": [{
        "type": "Ready", "status": "False", "reason": "PredictorNotReady",
        "message": "predictor pods crash", "lastTransitionTime": "2026-01-01T00:01:00Z",
    }]}});
    isvcs.patch_status("llm", &PatchParams::default(), &Patch::Merge(&broken)).await.unwrap();
    let down = cluster::wait_for(&svcs, "llm", Duration::from_secs(60), |s| !ready(s)).await;
    let c = condition(&down, "Ready").unwrap();
    assert_eq!(c.reason, "InferenceServiceNotReady");
    assert!(c.message.contains("PredictorNotReady predictor pods crash"), "{}", c.message);

    // Back to standalone: the InferenceService goes, the operator's Deployment serves.
    let standalone = json!({"spec": {"inferencePlatform": "standalone"}});
    svcs.patch("llm", &PatchParams::default(), &Patch::Merge(&standalone)).await.unwrap();
    gone(&isvcs, "llm", "the InferenceService removed").await;
    cluster::wait_for(&deployments, "llm", Duration::from_secs(60), |_| true).await;
    let back = cluster::wait_for(&svcs, "llm", Duration::from_secs(90), ready).await;
    assert_eq!(back.status.unwrap().model.unwrap().cluster_endpoint, Some(format!("http://llm.{}.svc:8000", ns.name)));

    // And to KServe again: the operator's own Deployment and Service are pruned, KServe makes its own.
    let kserve = json!({"spec": {"inferencePlatform": "kserve"}});
    svcs.patch("llm", &PatchParams::default(), &Patch::Merge(&kserve)).await.unwrap();
    cluster::wait_for(&isvcs, "llm", Duration::from_secs(60), |_| true).await;
    gone(&api(&client, &ns.name, "apps", "v1", "Deployment", "deployments"), "llm", "our Deployment pruned").await;
    gone(&api(&client, &ns.name, "", "v1", "Service", "services"), "llm", "our Service pruned").await;
    ns.cleanup().await;
    cluster::platform_apis(false);
    node.delete(&client).await;
}

#[tokio::test]
async fn kserve_or_a_gateway_route_asked_for_where_it_is_not_installed_is_a_clear_reason_and_an_event() {
    let client = cluster::client().await;
    let _serial = cluster::serial().await;
    cluster::install_oim_crds();
    cluster::platform_apis(false);
    let ns = TestNs::new(&client, "no-kserve", &[]).await;
    let node = KwokNode::create(&client, "no-kserve", &cluster::inventory_of("h100-sxm-80gb", 8), None).await;
    let _operator = Operator::start(&ns.name);
    let svcs: Api<OIMService> = Api::namespaced(client.clone(), &ns.name);
    let mut svc = service("llm", "meta-llama/Llama-3.1-8B-Instruct", "latency", "no-kserve");
    svc.spec.inference_platform = Some(oim::api::InferencePlatform::Kserve);
    svcs.create(&PostParams::default(), &svc).await.unwrap();
    let blocked = cluster::wait_for(&svcs, "llm", Duration::from_secs(90), |s| {
        condition(s, "Ready").is_some_and(|c| c.reason == "KServeNotInstalled")
    })
    .await;
    let message = &condition(&blocked, "Ready").unwrap().message;
    assert!(message.contains("spec.inferencePlatform") && message.contains("standalone"), "{message}");
    cluster::wait_until("a KServeNotInstalled event", Duration::from_secs(30), || async {
        Some(()).filter(|_| !cluster::events(&ns.name, "KServeNotInstalled").is_empty())
    })
    .await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    assert!(deployments.get_opt("llm").await.unwrap().is_none(), "nothing is served in its place");

    // A Gateway route without the Gateway API: served in-cluster, Degraded with the reason.
    let mut routed = service("routed", "meta-llama/Llama-3.1-8B-Instruct", "latency", "no-kserve");
    routed.spec.expose = Some(
        serde_json::from_value(serde_json::json!({"router": {"hostDomainName": "example.com", "gateway": {"namespace": "gw", "name": "inference"}}}))
            .unwrap(),
    );
    svcs.create(&PostParams::default(), &routed).await.unwrap();
    let degraded = cluster::wait_for(&svcs, "routed", Duration::from_secs(90), |s| {
        condition(s, "Degraded").is_some_and(|c| c.reason == "RouterAPIMissing")
    })
    .await;
    let message = &condition(&degraded, "Degraded").unwrap().message;
    assert!(message.starts_with("spec.expose.router.gateway: the Gateway API"), "{message}");
    assert!(degraded.status.as_ref().unwrap().model.as_ref().unwrap().external_endpoint.is_none());
    assert!(deployments.get_opt("routed").await.unwrap().is_some(), "it still serves in the cluster");
    cluster::wait_until("a RouterAPIMissing event", Duration::from_secs(30), || async {
        Some(()).filter(|_| !cluster::events(&ns.name, "RouterAPIMissing").is_empty())
    })
    .await;
    ns.cleanup().await;
    node.delete(&client).await;
}
