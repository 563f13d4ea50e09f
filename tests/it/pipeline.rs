//! The controllers own exactly their children: what the spec no longer asks for goes, what
//! someone else changes comes back, what someone else made is never touched, what the API server
//! refuses is shown on the object, and a waiting service keeps reporting what still serves.

use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Node, PersistentVolumeClaim, ResourceQuota};
use k8s_openapi::api::networking::v1::Ingress;
use kube::Api;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use oim::api::{CacheState, OIMCache, OIMService, ServiceState};
use serde_json::json;

use crate::cluster::{self, KwokNode, SCENARIO_LABEL, TestNs};
use crate::operator::{Operator, condition, image, ready, service};

async fn gone<K>(api: &Api<K>, name: &str, what: &str)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    cluster::wait_until(what, Duration::from_secs(60), || async {
        api.get_opt(name).await.ok().filter(|o| o.is_none()).map(|_| ())
    })
    .await;
}

#[tokio::test]
async fn ingress_and_autoscaling_switched_off_are_removed_and_the_deployment_gets_spec_replicas() {
    let client = cluster::client().await;
    cluster::install_oim_crds();
    let ns = TestNs::new(&client, "pl-off", &[]).await;
    let node = KwokNode::create(&client, "pl-off", &cluster::inventory_of("h100-sxm-80gb", 8), None).await;
    let _operator = Operator::start(&ns.name);
    let svcs: Api<OIMService> = Api::namespaced(client.clone(), &ns.name);
    let mut svc = service("llm", "meta-llama/Llama-3.1-8B-Instruct", "latency", "pl-off");
    svc.spec.expose = Some(
        serde_json::from_value(json!({"ingress": {"enabled": true, "spec": {"rules": [{"host": "llm.lan"}]}}}))
            .unwrap(),
    );
    svc.spec.scale =
        Some(serde_json::from_value(json!({"enabled": true, "hpa": {"minReplicas": 1, "maxReplicas": 3}})).unwrap());
    svcs.create(&PostParams::default(), &svc).await.unwrap();
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), &ns.name);
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), &ns.name);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    cluster::wait_for(&ingresses, "llm", Duration::from_secs(90), |_| true).await;
    cluster::wait_for(&hpas, "llm", Duration::from_secs(30), |_| true).await;
    let up = cluster::wait_for(&svcs, "llm", Duration::from_secs(60), ready).await;
    assert_eq!(up.status.unwrap().model.unwrap().external_endpoint.as_deref(), Some("http://llm.lan"));

    let off = json!({"spec": {"expose": null, "scale": null, "replicas": 2}});
    svcs.patch("llm", &PatchParams::default(), &Patch::Merge(&off)).await.unwrap();
    gone(&ingresses, "llm", "the Ingress removed").await;
    gone(&hpas, "llm", "the HPA removed").await;
    cluster::wait_for(&deployments, "llm", Duration::from_secs(30), |d| d.spec.as_ref().unwrap().replicas == Some(2))
        .await;
    let after = cluster::wait_for(&svcs, "llm", Duration::from_secs(60), |s| {
        ready(s) && s.status.as_ref().unwrap().available_replicas == Some(2)
    })
    .await;
    assert_eq!(after.status.unwrap().model.unwrap().external_endpoint, None, "no Ingress, no external endpoint");
    ns.cleanup().await;
    node.delete(&client).await;
}

#[tokio::test]
async fn a_hand_edited_deployment_is_put_back_and_a_resync_after_that_writes_nothing() {
    let client = cluster::client().await;
    let crate::operator::Serving { ns, node, svcs, _operator } = crate::operator::serving_8b(&client, "pl-drift").await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let d = deployments.get("llm").await.unwrap();
    let applied = image(&d);
    let container = d.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0].name.clone();
    // What `kubectl set image` does: a strategic merge patch by another field manager.
    let edit = json!({"spec": {"template": {"spec": {"containers": [{"name": container, "image": "docker.io/evil/vllm:1.0"}]}}}});
    deployments
        .patch(
            "llm",
            &PatchParams { field_manager: Some("kubectl-set".into()), ..Default::default() },
            &Patch::Strategic(&edit),
        )
        .await
        .unwrap();
    let back = cluster::wait_for(&deployments, "llm", Duration::from_secs(30), |d| image(d) == applied).await;
    assert_eq!(image(&back), applied);
    // Once repaired, nothing moves: a resync does not write the Deployment again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let settled = deployments.get("llm").await.unwrap().metadata.resource_version;
    let touch = json!({"metadata": {"annotations": {"oim.test/resync": "1"}}});
    svcs.patch("llm", &PatchParams::default(), &Patch::Merge(&touch)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let d = deployments.get("llm").await.unwrap();
    assert_eq!((image(&d), d.metadata.resource_version), (applied, settled), "the resync rewrote the Deployment");
    ns.cleanup().await;
    node.delete(&client).await;
}

#[tokio::test]
async fn a_deployment_someone_else_made_under_the_services_name_is_a_conflict_and_is_left_alone() {
    let client = cluster::client().await;
    cluster::install_oim_crds();
    let ns = TestNs::new(&client, "pl-foreign", &[]).await;
    let node = KwokNode::create(&client, "pl-foreign", &cluster::inventory_of("h100-sxm-80gb", 8), None).await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let theirs: Deployment = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "taken"},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "theirs"}},
                 "template": {"metadata": {"labels": {"app": "theirs"}}, "spec": {"containers": [{"name": "web", "image": "docker.io/library/nginx:1.27"}]}}}
    }))
    .unwrap();
    deployments.create(&PostParams::default(), &theirs).await.unwrap();
    let _operator = Operator::start(&ns.name);
    let svcs: Api<OIMService> = Api::namespaced(client.clone(), &ns.name);
    svcs.create(&PostParams::default(), &service("taken", "meta-llama/Llama-3.1-8B-Instruct", "latency", "pl-foreign"))
        .await
        .unwrap();
    let failed = cluster::wait_for(&svcs, "taken", Duration::from_secs(90), |s| {
        s.status.as_ref().and_then(|s| s.state) == Some(ServiceState::Failed)
    })
    .await;
    let degraded = condition(&failed, "Degraded").expect("a Degraded condition");
    assert_eq!(degraded.reason, "ConflictingObject");
    assert!(degraded.message.contains("Deployment") && degraded.message.contains("taken"), "{}", degraded.message);
    assert!(degraded.message.contains("rename the OIMService, or delete"), "the fix is named: {}", degraded.message);
    let live = deployments.get("taken").await.unwrap();
    assert!(live.metadata.owner_references.is_none(), "no owner reference was added to someone else's Deployment");
    assert_eq!(image(&live), "docker.io/library/nginx:1.27");
    assert!(
        live.metadata.managed_fields.iter().flatten().all(|m| m.manager.as_deref() != Some("oim-operator")),
        "the operator wrote to a Deployment it did not create"
    );
    ns.cleanup().await;
    node.delete(&client).await;
}

#[tokio::test]
async fn a_deployment_refused_by_a_quota_shows_degraded_with_the_api_servers_message() {
    let client = cluster::client().await;
    cluster::install_oim_crds();
    let ns = TestNs::new(&client, "pl-quota", &[]).await;
    let node = KwokNode::create(&client, "pl-quota", &cluster::inventory_of("h100-sxm-80gb", 8), None).await;
    let quota: ResourceQuota = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "no-deployments"},
        "spec": {"hard": {"count/deployments.apps": "0"}}
    }))
    .unwrap();
    Api::<ResourceQuota>::namespaced(client.clone(), &ns.name).create(&PostParams::default(), &quota).await.unwrap();
    // The quota controller must have counted usage before admission enforces it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _operator = Operator::start(&ns.name);
    let svcs: Api<OIMService> = Api::namespaced(client.clone(), &ns.name);
    svcs.create(&PostParams::default(), &service("llm", "meta-llama/Llama-3.1-8B-Instruct", "latency", "pl-quota"))
        .await
        .unwrap();
    let refused = cluster::wait_for(&svcs, "llm", Duration::from_secs(90), |s| {
        condition(s, "Degraded").is_some_and(|c| c.status == "True" && c.reason == "ApplyFailed")
    })
    .await;
    let degraded = condition(&refused, "Degraded").unwrap();
    assert!(degraded.message.contains("applying Deployment llm"), "{}", degraded.message);
    assert!(degraded.message.contains("exceeded quota"), "the API server's message: {}", degraded.message);
    assert_ne!(refused.status.as_ref().unwrap().state, Some(ServiceState::Ready));
    ns.cleanup().await;
    node.delete(&client).await;
}

#[tokio::test]
async fn route_and_service_monitor_come_and_go_with_the_spec_where_their_apis_exist() {
    let client = cluster::client().await;
    let _serial = cluster::serial().await;
    cluster::install_oim_crds();
    cluster::optional_apis(true);
    let ns = TestNs::new(&client, "pl-optional", &[]).await;
    let node = KwokNode::create(&client, "pl-optional", &cluster::inventory_of("h100-sxm-80gb", 8), None).await;
    let _operator = Operator::start(&ns.name);
    let svcs: Api<OIMService> = Api::namespaced(client.clone(), &ns.name);
    let mut svc = service("llm", "meta-llama/Llama-3.1-8B-Instruct", "latency", "pl-optional");
    svc.spec.expose =
        Some(serde_json::from_value(json!({"route": {"enabled": true, "host": "llm.apps.lan"}})).unwrap());
    svc.spec.metrics =
        Some(serde_json::from_value(json!({"enabled": true, "serviceMonitor": {"interval": "30s"}})).unwrap());
    svcs.create(&PostParams::default(), &svc).await.unwrap();
    let api = |group: &str, kind: &str, plural: &str| -> Api<DynamicObject> {
        let ar = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, "v1", kind), plural);
        Api::namespaced_with(client.clone(), &ns.name, &ar)
    };
    let routes = api("route.openshift.io", "Route", "routes");
    let monitors = api("monitoring.coreos.com", "ServiceMonitor", "servicemonitors");
    cluster::wait_for(&routes, "llm", Duration::from_secs(90), |_| true).await;
    cluster::wait_for(&monitors, "llm", Duration::from_secs(30), |_| true).await;
    let off = json!({"spec": {"expose": null, "metrics": null}});
    svcs.patch("llm", &PatchParams::default(), &Patch::Merge(&off)).await.unwrap();
    gone(&routes, "llm", "the Route removed").await;
    gone(&monitors, "llm", "the ServiceMonitor removed").await;
    ns.cleanup().await;
    cluster::optional_apis(false);
    node.delete(&client).await;
}

fn cache_yaml(scenario: &str, kpi: &str) -> OIMCache {
    serde_saphyr::from_str(&format!(
        "apiVersion: oim.opea.dev/v1alpha1\nkind: OIMCache\nmetadata: {{name: llama70b}}\nspec:\n  source: {{hf: {{modelName: meta-llama/Llama-3.1-70B-Instruct}}}}\n  profile: {{kpi: {kpi}}}\n  storage: {{pvc: {{size: 300Gi, volumeAccessMode: ReadWriteMany}}}}\n  nodeSelector: {{{SCENARIO_LABEL}: {scenario}}}\n"
    ))
    .unwrap()
}

#[tokio::test]
async fn a_service_waiting_for_a_rerun_download_keeps_its_profile_endpoint_and_replicas() {
    let client = cluster::client().await;
    cluster::install_oim_crds();
    let ns = TestNs::new(&client, "pl-rerun", &[]).await;
    let node = KwokNode::create(&client, "pl-rerun", &cluster::inventory_of("h100-sxm-80gb", 8), None).await;
    let _operator = Operator::start(&ns.name);
    let caches: Api<OIMCache> = Api::namespaced(client.clone(), &ns.name);
    caches.create(&PostParams::default(), &cache_yaml("pl-rerun", "throughput")).await.unwrap();
    let is = |c: &OIMCache, s: CacheState| c.status.as_ref().and_then(|x| x.state) == Some(s);
    cluster::wait_for(&caches, "llama70b", Duration::from_secs(90), |c| is(c, CacheState::Ready)).await;
    let svcs: Api<OIMService> = Api::namespaced(client.clone(), &ns.name);
    let mut svc = service("llm", "meta-llama/Llama-3.1-70B-Instruct", "throughput", "pl-rerun");
    svc.spec.storage = Some(serde_json::from_value(json!({"oimCache": {"name": "llama70b"}})).unwrap());
    svcs.create(&PostParams::default(), &svc).await.unwrap();
    let serving = cluster::wait_for(&svcs, "llm", Duration::from_secs(90), ready).await.status.unwrap();

    // Other weights wanted: the download runs again while the service's pods keep serving.
    let rerun = json!({"spec": {"profile": {"kpi": "latency"}}});
    caches.patch("llama70b", &PatchParams::default(), &Patch::Merge(&rerun)).await.unwrap();
    let mut waited = 0;
    for _ in 0..300 {
        let s = svcs.get("llm").await.unwrap();
        let st = s.status.clone().unwrap();
        if condition(&s, "CacheReady").is_some_and(|c| c.status == "False") {
            waited += 1;
            assert_eq!(st.state, Some(ServiceState::NotReady), "a service still serving is not Pending");
            assert_eq!(st.profile.as_ref().map(|p| p.name.as_str()), serving.profile.as_ref().map(|p| p.name.as_str()));
            assert_eq!(st.model, serving.model, "the endpoints are still true");
            assert_eq!(st.available_replicas, Some(1));
        }
        if waited > 0 && is(&caches.get("llama70b").await.unwrap(), CacheState::Ready) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(waited > 0, "the service never reported the cache as not ready during the re-run");
    caches.delete("llama70b", &Default::default()).await.unwrap();
    svcs.delete("llm", &Default::default()).await.unwrap();
    gone(&caches, "llama70b", "the cache deleted").await;
    ns.cleanup().await;
    node.delete(&client).await;
}

#[tokio::test]
async fn oim_render_prints_the_pvc_and_job_the_operator_creates_for_a_cache() {
    let client = cluster::client().await;
    cluster::install_oim_crds();
    let ns = TestNs::new(&client, "pl-cache-render", &[]).await;
    let node = KwokNode::create(&client, "pl-cache-render", &cluster::inventory_of("h100-sxm-80gb", 8), None).await;
    let _operator = Operator::start(&ns.name);
    let caches: Api<OIMCache> = Api::namespaced(client.clone(), &ns.name);
    let mut cache = cache_yaml("pl-cache-render", "throughput");
    cache.metadata.namespace = Some(ns.name.clone());
    caches.create(&PostParams::default(), &cache).await.unwrap();
    cluster::wait_for(&caches, "llama70b", Duration::from_secs(90), |c| {
        c.status.as_ref().and_then(|s| s.state) == Some(CacheState::Ready)
    })
    .await;

    let dir = std::env::temp_dir().join(cluster::unique("pl-cache-render"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("cache.yaml");
    std::fs::write(&file, serde_saphyr::to_string(&cache).unwrap()).unwrap();
    let nodes = dir.join("nodes.json");
    let live_node = Api::<Node>::all(client.clone()).get(&node.name).await.unwrap();
    std::fs::write(&nodes, json!({"kind": "List", "apiVersion": "v1", "items": [live_node]}).to_string()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_oim"))
        .args(["render", "-f", file.to_str().unwrap(), "--inventory", nodes.to_str().unwrap()])
        .args(["--catalog", concat!(env!("CARGO_MANIFEST_DIR"), "/profiles")])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&String::from_utf8_lossy(&out.stdout)).unwrap();
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    assert_eq!(kinds, ["PersistentVolumeClaim", "Job"]);

    let pvc = serde_json::to_value(
        Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns.name).get("llama70b-weights").await.unwrap(),
    )
    .unwrap();
    assert_eq!(docs[0]["spec"]["resources"], pvc["spec"]["resources"]);
    assert_eq!(docs[0]["spec"]["accessModes"], pvc["spec"]["accessModes"]);
    for label in ["oim.opea.dev/cache", "app.kubernetes.io/managed-by"] {
        assert_eq!(docs[0]["metadata"]["labels"][label], pvc["metadata"]["labels"][label], "{label}");
    }
    assert_eq!(
        docs[0]["metadata"]["annotations"]["oim.opea.dev/cache-source-hash"],
        pvc["metadata"]["annotations"]["oim.opea.dev/cache-source-hash"]
    );
    let job =
        serde_json::to_value(Api::<Job>::namespaced(client.clone(), &ns.name).get("llama70b-download").await.unwrap())
            .unwrap();
    let pod = |j: &serde_json::Value| j["spec"]["template"]["spec"].clone();
    let (r, l) = (pod(&docs[1]), pod(&job));
    for field in ["nodeSelector", "tolerations", "securityContext", "restartPolicy", "volumes"] {
        assert_eq!(r[field], l[field], "pod spec field {field}");
    }
    for field in ["image", "args", "env", "resources", "volumeMounts", "securityContext"] {
        assert_eq!(r["containers"][0][field], l["containers"][0][field], "container field {field}");
    }
    assert_eq!(
        docs[1]["metadata"]["labels"]["oim.opea.dev/job-hash"],
        job["metadata"]["labels"]["oim.opea.dev/job-hash"]
    );
    caches.delete("llama70b", &Default::default()).await.unwrap();
    gone(&caches, "llama70b", "the cache deleted").await;
    ns.cleanup().await;
    node.delete(&client).await;
}
