//! OIMCache on the local control plane: the right weights into a PVC of the computed size, a
//! service serving from it read-only, failures with their reason, and PVCs that outlive their
//! cache (Retain, adopted again without a new Job) or go only when nobody uses them (Delete).
//! kwok completes download Job pods with a fake commit, or fails the `download-fails` image.

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Node, PersistentVolumeClaim};
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use oim::api::{CacheState, OIMCache, OIMService, ServiceState};
use oim::profile::catalog::{Catalog, DirCatalog};
use oim::profile::select::NodeView;

use crate::cluster::{self, KwokNode, SCENARIO_LABEL, TestNs};
use crate::operator::{Operator, condition};

const FAKE_COMMIT: &str = "5f0b6c9e1a2d3c4b5a69788796a5b4c3d2e1f001";
const FP8_70B: &str = "neuralmagic/Meta-Llama-3.1-70B-Instruct-FP8";

/// The 70B example cache, targeted at this test's nodes; `size` None lets the operator size it.
fn example_cache(scenario: &str, size: Option<&str>) -> OIMCache {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/llama31-70b-cache.yaml")).unwrap();
    let mut cache: OIMCache = serde_saphyr::from_str(&text).unwrap();
    cache.spec.storage.pvc.size = size.map(str::to_string);
    cache.spec.node_selector = Some([(SCENARIO_LABEL.to_string(), scenario.to_string())].into());
    cache
}

fn cache_of(name: &str, model: &str, scenario: &str, extra: &str) -> OIMCache {
    serde_saphyr::from_str(&format!(
        "apiVersion: oim.opea.dev/v1alpha1\nkind: OIMCache\nmetadata: {{name: {name}}}\nspec:\n  source: {{hf: {{modelName: {model}{extra}}}}}\n  profile: {{kpi: latency}}\n  nodeSelector: {{{SCENARIO_LABEL}: {scenario}}}\n"
    ))
    .unwrap()
}

fn service_on_cache(name: &str, model: &str, kpi: &str, cache: &str, scenario: &str) -> OIMService {
    serde_saphyr::from_str(&format!(
        "apiVersion: oim.opea.dev/v1alpha1\nkind: OIMService\nmetadata: {{name: {name}}}\nspec:\n  model: {{name: {model}}}\n  profile: {{kpi: {kpi}}}\n  storage: {{oimCache: {{name: {cache}}}}}\n  nodeSelector: {{{SCENARIO_LABEL}: {scenario}}}\n"
    ))
    .unwrap()
}

/// Deletes every cache while the operator still runs, so their finalizers are carried out and
/// the namespace can go.
async fn delete_caches(caches: &Api<OIMCache>) {
    let _ = caches.delete_collection(&DeleteParams::default(), &Default::default()).await;
    cluster::wait_until("every OIMCache gone", Duration::from_secs(60), || async {
        caches.list(&Default::default()).await.ok().filter(|l| l.items.is_empty()).map(|_| ())
    })
    .await;
}

fn state(c: &OIMCache) -> Option<CacheState> {
    c.status.as_ref().and_then(|s| s.state)
}

/// The size the operator should compute for the example cache on this node.
async fn expected_size(cache: &OIMCache, node: &Node) -> String {
    let dir = DirCatalog::load(std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/profiles"))).unwrap();
    let profiles = Catalog::Dir(dir).list("meta-llama/Llama-3.1-70B-Instruct").await.unwrap();
    let nodes = vec![NodeView::from_node(node).unwrap()];
    let (wanted, _) =
        oim::profile::weights::plan(cache, &profiles, &nodes, &oim::profile::engines::Engines::builtin(), None)
            .unwrap();
    oim::profile::weights::size_for(&cache.spec, &wanted, None).unwrap()
}

#[tokio::test]
async fn the_70b_cache_fills_a_pvc_of_the_computed_size_serves_read_only_and_a_retained_pvc_is_adopted_without_a_new_job()
 {
    let client = cluster::client().await;
    cluster::install_oim_crds();
    let ns = TestNs::new(&client, "cache-70b", &[]).await;
    let node = KwokNode::create(&client, "cache-70b", &cluster::inventory_of("h100-sxm-80gb", 8), None).await;
    let _operator = Operator::start(&ns.name);
    let caches: Api<OIMCache> = Api::namespaced(client.clone(), &ns.name);
    let cache = example_cache("cache-70b", None);
    caches.create(&PostParams::default(), &cache).await.unwrap();

    let ready =
        cluster::wait_for(&caches, "llama31-70b", Duration::from_secs(90), |c| state(c) == Some(CacheState::Ready))
            .await;
    let status = ready.status.clone().unwrap();
    let live_node = Api::<Node>::all(client.clone()).get(&node.name).await.unwrap();
    let size = expected_size(&cache, &live_node).await;
    assert_eq!(status.size.as_deref(), Some(size.as_str()), "sized from the weights, not the example's 300Gi");
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns.name);
    let pvc = pvcs.get("llama31-70b-weights").await.unwrap();
    assert_eq!(pvc.spec.as_ref().unwrap().resources.as_ref().unwrap().requests.as_ref().unwrap()["storage"].0, size);
    assert!(pvc.metadata.owner_references.is_none(), "a Retain PVC has no owner to be collected with");
    let p = &status.profiles[0];
    assert_eq!((p.name.as_str(), p.weights.as_str()), ("vllm-nvidia-h100-sxm-80gb-x2-throughput-fp8", FP8_70B));
    assert_eq!(p.path, format!("/{FP8_70B}/{FAKE_COMMIT}"), "the commit the downloader reported");

    // The Job ran on the H100 group's nodes, without asking for a GPU, hardened.
    let job = Api::<Job>::namespaced(client.clone(), &ns.name).get("llama31-70b-download").await.unwrap();
    let pod = job.spec.unwrap().template.spec.unwrap();
    assert_eq!(pod.node_selector.as_ref().unwrap()["oim.opea.dev/accelerator.product"], "h100-sxm-80gb");
    assert!(pod.tolerations.unwrap().iter().any(|t| t.key.as_deref() == Some("nvidia.com/gpu")));
    let c = &pod.containers[0];
    assert!(c.resources.as_ref().unwrap().limits.as_ref().unwrap().keys().all(|k| !k.contains('/')));
    assert_eq!(c.args.as_ref().unwrap()[..3], ["download", "--repo", FP8_70B]);
    assert_eq!(pod.security_context.unwrap().run_as_non_root, Some(true));
    assert!(c.env.as_ref().unwrap().iter().any(|e| e.name == "HF_TOKEN" && e.value.is_none()), "token from the Secret");

    // A service on the cache runs the cached weights, read-only and offline.
    let svcs: Api<OIMService> = Api::namespaced(client.clone(), &ns.name);
    let svc =
        service_on_cache("llama70b", "meta-llama/Llama-3.1-70B-Instruct", "throughput", "llama31-70b", "cache-70b");
    svcs.create(&PostParams::default(), &svc).await.unwrap();
    let served = cluster::wait_for(&svcs, "llama70b", Duration::from_secs(90), |s| {
        s.status.as_ref().and_then(|s| s.state) == Some(ServiceState::Ready)
    })
    .await;
    assert_eq!(condition(&served, "CacheReady").unwrap().reason, "Ready");
    let d = Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(client.clone(), &ns.name)
        .get("llama70b")
        .await
        .unwrap();
    let pod = d.spec.unwrap().template.spec.unwrap();
    let c = &pod.containers[0];
    assert_eq!(c.args.as_ref().unwrap()[0], format!("/models/{FP8_70B}/{FAKE_COMMIT}"));
    let mount = c.volume_mounts.as_ref().unwrap().iter().find(|m| m.mount_path == "/models").unwrap();
    assert_eq!(mount.read_only, Some(true));
    let vol = pod.volumes.unwrap().into_iter().find(|v| v.name == mount.name).unwrap();
    assert_eq!(vol.persistent_volume_claim.unwrap().claim_name, "llama31-70b-weights");
    assert!(c.env.as_ref().unwrap().iter().any(|e| e.name == "HF_HUB_OFFLINE" && e.value.as_deref() == Some("1")));

    // Deleting the (Retain) cache keeps the PVC, labelled back to it; the Job goes with the cache.
    caches.delete("llama31-70b", &DeleteParams::default()).await.unwrap();
    cluster::wait_until("the cache and its Job gone", Duration::from_secs(60), || async {
        let gone = caches.get_opt("llama31-70b").await.unwrap().is_none();
        let job_gone =
            Api::<Job>::namespaced(client.clone(), &ns.name).get_opt("llama31-70b-download").await.unwrap().is_none();
        (gone && job_gone).then_some(())
    })
    .await;
    let kept = pvcs.get("llama31-70b-weights").await.unwrap();
    assert!(kept.metadata.deletion_timestamp.is_none());
    assert_eq!(kept.metadata.labels.unwrap()["oim.opea.dev/cache"], "llama31-70b");

    // The same cache again adopts the PVC: Ready with no new download.
    caches.create(&PostParams::default(), &example_cache("cache-70b", None)).await.unwrap();
    let again =
        cluster::wait_for(&caches, "llama31-70b", Duration::from_secs(60), |c| state(c) == Some(CacheState::Ready))
            .await;
    assert_eq!(again.status.unwrap().profiles[0].path, format!("/{FP8_70B}/{FAKE_COMMIT}"));
    assert!(
        Api::<Job>::namespaced(client.clone(), &ns.name).get_opt("llama31-70b-download").await.unwrap().is_none(),
        "no new Job"
    );

    // A cache of another source pointed at that PVC is refused.
    let mut other = cache_of("other", "meta-llama/Llama-3.1-8B-Instruct", "cache-70b", "");
    other.spec.storage.pvc.name = Some("llama31-70b-weights".into());
    caches.create(&PostParams::default(), &other).await.unwrap();
    let refused =
        cluster::wait_for(&caches, "other", Duration::from_secs(30), |c| state(c) == Some(CacheState::Failed)).await;
    let c = refused.status.unwrap().conditions.into_iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!(c.reason, "PVCConflict");
    assert!(c.message.contains("llama31-70b-weights") && c.message.contains("another source"), "{}", c.message);

    delete_caches(&caches).await;
    ns.cleanup().await;
    node.delete(&client).await;
}

#[tokio::test]
async fn a_failed_download_says_why_and_a_delete_cache_keeps_its_pvc_while_a_service_uses_it() {
    let client = cluster::client().await;
    cluster::install_oim_crds();
    let ns = TestNs::new(&client, "cache-life", &[]).await;
    let node = KwokNode::create(&client, "cache-life", &cluster::inventory_of("h100-sxm-80gb", 8), None).await;
    let _operator = Operator::start(&ns.name);
    let caches: Api<OIMCache> = Api::namespaced(client.clone(), &ns.name);

    let failing = cache_of(
        "gated",
        "meta-llama/Llama-3.1-8B-Instruct",
        "cache-life",
        ", modelPuller: 'oim.test/download-fails:403'",
    );
    caches.create(&PostParams::default(), &failing).await.unwrap();
    let failed =
        cluster::wait_for(&caches, "gated", Duration::from_secs(120), |c| state(c) == Some(CacheState::Failed)).await;
    let c = failed.status.unwrap().conditions.into_iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!(c.reason, "DownloadFailed");
    assert!(
        c.message.contains("403") && c.message.contains("HF_TOKEN"),
        "the Job's reason is in the status: {}",
        c.message
    );

    let mut deletable = cache_of("llama8b", "meta-llama/Llama-3.1-8B-Instruct", "cache-life", "");
    deletable.spec.retention_policy = Some(oim::api::RetentionPolicy::Delete);
    caches.create(&PostParams::default(), &deletable).await.unwrap();
    cluster::wait_for(&caches, "llama8b", Duration::from_secs(90), |c| state(c) == Some(CacheState::Ready)).await;
    let svcs: Api<OIMService> = Api::namespaced(client.clone(), &ns.name);
    let svc = service_on_cache("llama8b", "meta-llama/Llama-3.1-8B-Instruct", "latency", "llama8b", "cache-life");
    svcs.create(&PostParams::default(), &svc).await.unwrap();
    cluster::wait_for(&svcs, "llama8b", Duration::from_secs(90), |s| {
        s.status.as_ref().and_then(|s| s.state) == Some(ServiceState::Ready)
    })
    .await;

    // While the service mounts it, deleting the cache does not delete the PVC.
    caches.delete("llama8b", &DeleteParams::default()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns.name);
    let pvc = pvcs.get("llama8b-weights").await.unwrap();
    assert!(pvc.metadata.deletion_timestamp.is_none(), "a live service still uses it");
    assert!(caches.get_opt("llama8b").await.unwrap().is_some(), "the cache waits for its users");

    // The service goes: so do the PVC and the cache.
    svcs.delete("llama8b", &DeleteParams::default()).await.unwrap();
    cluster::wait_until("the PVC and the cache deleted", Duration::from_secs(90), || async {
        let pvc_gone =
            pvcs.get_opt("llama8b-weights").await.unwrap().is_none_or(|p| p.metadata.deletion_timestamp.is_some());
        let cache_gone = caches.get_opt("llama8b").await.unwrap().is_none();
        (pvc_gone && cache_gone).then_some(())
    })
    .await;
    delete_caches(&caches).await;
    ns.cleanup().await;
    node.delete(&client).await;
}

#[tokio::test]
async fn a_failed_download_runs_again_when_its_token_secret_changes_or_after_a_backoff() {
    let client = cluster::client().await;
    cluster::install_oim_crds();
    let ns = TestNs::new(&client, "cache-retry", &[]).await;
    let node = KwokNode::create(&client, "cache-retry", &cluster::inventory_of("h100-sxm-80gb", 8), None).await;
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), &ns.name);
    let token = |t: &str| -> k8s_openapi::api::core::v1::Secret {
        serde_json::from_value(serde_json::json!({"metadata": {"name": "hf"}, "stringData": {"HF_TOKEN": t}})).unwrap()
    };
    secrets.create(&PostParams::default(), &token("hf_expired")).await.unwrap();
    let _operator = Operator::start(&ns.name);
    let caches: Api<OIMCache> = Api::namespaced(client.clone(), &ns.name);
    // The hub answers 500 to the first attempt of these downloads (tests/cluster/kwok).
    let puller = ", modelPuller: 'oim.test/hub-down-first:500'";
    let model = "meta-llama/Llama-3.1-8B-Instruct";
    caches
        .create(
            &PostParams::default(),
            &cache_of("with-token", model, "cache-retry", &format!("{puller}, authSecret: hf")),
        )
        .await
        .unwrap();
    caches.create(&PostParams::default(), &cache_of("hub-back", model, "cache-retry", puller)).await.unwrap();
    for name in ["with-token", "hub-back"] {
        let failed =
            cluster::wait_for(&caches, name, Duration::from_secs(120), |c| state(c) == Some(CacheState::Failed)).await;
        let c = failed.status.unwrap().conditions.into_iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(c.reason, "DownloadFailed");
        assert!(c.message.contains("500") && c.message.contains("runs again at"), "{name}: {}", c.message);
    }

    // A new token: the download runs again at once, not after its backoff.
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns.name);
    secrets.replace("hf", &PostParams::default(), &token("hf_renewed")).await.unwrap();
    cluster::wait_for(&caches, "with-token", Duration::from_secs(60), |c| state(c) == Some(CacheState::Ready)).await;
    let retried = cluster::events(&ns.name, "DownloadRetried");
    assert!(
        retried.iter().any(|m| m.contains("with-token-download") && m.contains("token Secret changed")),
        "{retried:?}"
    );
    // Nothing changed for the other: it runs again after its backoff (the hub is back by then).
    cluster::wait_for(&caches, "hub-back", Duration::from_secs(150), |c| state(c) == Some(CacheState::Ready)).await;
    let retried = cluster::events(&ns.name, "DownloadRetried");
    assert!(
        retried.iter().any(|m| m.contains("hub-back-download") && m.contains("60s after it failed")),
        "{retried:?}"
    );
    let job = jobs.get("hub-back-download").await.unwrap();
    assert_eq!(job.metadata.annotations.unwrap()["oim.opea.dev/download-attempt"], "2");
    delete_caches(&caches).await;
    ns.cleanup().await;
    node.delete(&client).await;
}
