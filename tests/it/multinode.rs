//! Multi-node serving on the local control plane: a model no node can hold runs as a
//! LeaderWorkerSet group across nodes (its controller runs as a process, `tests/cluster/lws.sh`,
//! so the group's pods are really scheduled on kwok nodes); without the LeaderWorkerSet API the
//! group is refused with that reason, and a node that holds the model alone gets a Deployment.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams};
use oim::api::OIMService;

use crate::cluster::{self, KwokNode, TestNs};
use crate::operator::{Operator, condition, ready, service};

const LLAMA405B: &str = "meta-llama/Llama-3.1-405B-Instruct";

/// The LeaderWorkerSet controller for one test; stopped (its webhooks and CRDs removed) on drop,
/// so other tests see a cluster without the API again.
struct Lws;

impl Lws {
    fn run(action: &str) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/cluster/lws.sh");
        let out = std::process::Command::new("bash").args([script, action]).output().expect("run lws.sh");
        assert!(out.status.success(), "lws.sh {action}: {}", String::from_utf8_lossy(&out.stderr));
    }

    fn start() -> Lws {
        Lws::run("start");
        Lws
    }
}

impl Drop for Lws {
    fn drop(&mut self) {
        Lws::run("stop");
    }
}

fn lws_api(client: &kube::Client, ns: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("leaderworkerset.x-k8s.io", "v1", "LeaderWorkerSet");
    Api::namespaced_with(client.clone(), ns, &ApiResource::from_gvk_with_plural(&gvk, "leaderworkersets"))
}

fn gpus(pod: &serde_json::Value, resource: &str) -> Option<String> {
    pod["spec"]["containers"][0]["resources"]["limits"][resource].as_str().map(str::to_string)
}

#[tokio::test]
async fn llama_405b_spans_two_h100_nodes_as_a_leader_worker_set_and_one_mi300x_node_holds_it_alone() {
    let _serial = cluster::serial().await;
    let client = cluster::client().await;
    cluster::install_oim_crds();
    Lws::run("stop"); // whatever an earlier run left: start without the API
    let ns = TestNs::new(&client, "mn", &[]).await;
    // Scenario labels of this run only: nodes a failed earlier run left behind are not chosen.
    let (on_h100, on_mi300x) = (cluster::unique("mn-h100"), cluster::unique("mn-mi300x"));
    let h100 = cluster::inventory_of("h100-sxm-80gb", 8);
    let nodes = [
        KwokNode::create(&client, &on_h100, &h100, None).await,
        KwokNode::create(&client, &on_h100, &h100, None).await,
        KwokNode::create(&client, &on_mi300x, &cluster::inventory_of("mi300x", 8), None).await,
        KwokNode::create(&client, &on_h100, &h100, None).await,
        KwokNode::create(&client, &on_h100, &h100, None).await,
    ];
    let svcs: Api<OIMService> = Api::namespaced(client.clone(), &ns.name);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);

    // No LeaderWorkerSet API: the group two H100 nodes would need is refused, and says why.
    let operator = Operator::start(&ns.name);
    svcs.create(&PostParams::default(), &service("big", LLAMA405B, "throughput", &on_h100)).await.unwrap();
    let refused = cluster::wait_for(&svcs, "big", Duration::from_secs(90), |s| {
        condition(s, "ProfileSelected").is_some_and(|c| c.status == "False")
    })
    .await;
    let message = &condition(&refused, "ProfileSelected").unwrap().message;
    assert!(message.contains("LeaderWorkerSetMissing: spans 2 nodes"), "{message}");
    assert!(message.contains("install LeaderWorkerSet"), "{message}");
    // The same model on one 8x MI300X node: a single-node profile, a Deployment of 8 AMD GPUs.
    svcs.create(&PostParams::default(), &service("one-node", LLAMA405B, "throughput", &on_mi300x)).await.unwrap();
    let d = cluster::wait_for(&deployments, "one-node", Duration::from_secs(90), |_| true).await;
    let pod = serde_json::to_value(&d.spec.unwrap().template).unwrap();
    assert_eq!(gpus(&pod, "amd.com/gpu").as_deref(), Some("8"));
    let one = cluster::wait_for(&svcs, "one-node", Duration::from_secs(90), ready).await;
    let profile = one.status.as_ref().unwrap().profile.as_ref().unwrap();
    assert_eq!(profile.name, "generated-vllm-amd-mi300x-x8-bf16");
    assert_eq!(profile.pipeline_parallelism, Some(1));
    drop(operator);

    // With LeaderWorkerSet (its controller running): what `oim render` prints offline for two
    // 8x H100 nodes is accepted by the API server (and LeaderWorkerSet's webhooks).
    let _lws = Lws::start();
    let golden = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/golden/llama31-405b-h100-pair.yaml");
    let (ok, out, err) = cluster::tool(
        "kubectl",
        &["apply", "--dry-run=server", "--server-side", "--field-manager", "oim-operator", "-f", golden],
    );
    assert!(ok, "{err}");
    assert!(out.contains("leaderworkerset.leaderworkerset.x-k8s.io/llama31-405b"), "{out}");
    // The operator: one group of two pods, 8 H100s each.
    let _operator = Operator::start(&ns.name);
    let groups = lws_api(&client, &ns.name);
    let lws = cluster::wait_for(&groups, "big", Duration::from_secs(90), |_| true).await;
    let template = &lws.data["spec"]["leaderWorkerTemplate"];
    assert_eq!(template["size"].as_i64(), Some(2));
    for role in ["leaderTemplate", "workerTemplate"] {
        assert_eq!(gpus(&template[role], "nvidia.com/gpu").as_deref(), Some("8"), "{role}");
    }
    let args = template["leaderTemplate"]["spec"]["containers"][0]["args"].to_string();
    for flag in
        ["--tensor-parallel-size\",\"8", "--pipeline-parallel-size\",\"2", "--distributed-executor-backend\",\"ray"]
    {
        assert!(args.contains(flag), "{flag} in {args}");
    }
    // The LeaderWorkerSet controller made the leader and the worker; the scheduler put them on
    // the two H100 nodes, one each.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let by_group = ListParams::default().labels("leaderworkerset.sigs.k8s.io/name=big");
    let placed = cluster::wait_until("the group's two pods scheduled", Duration::from_secs(90), || async {
        let list = pods.list(&by_group).await.ok()?;
        let on: Vec<String> = list.items.iter().filter_map(|p| p.spec.as_ref()?.node_name.clone()).collect();
        (on.len() == 2).then_some(on)
    })
    .await;
    let h100_nodes = [&nodes[0].name, &nodes[1].name, &nodes[3].name, &nodes[4].name];
    assert_ne!(placed[0], placed[1], "one pod per node");
    assert!(placed.iter().all(|n| h100_nodes.contains(&n)), "{placed:?} on the H100 nodes");
    // Status reports the group: Ready once its leader and worker are.
    let up = cluster::wait_for(&svcs, "big", Duration::from_secs(120), ready).await;
    let st = up.status.as_ref().unwrap();
    assert_eq!(st.accelerator.as_deref(), Some("2 nodes x 8x h100-sxm-80gb"));
    assert_eq!(st.available_replicas, Some(1));
    let available = &condition(&up, "Available").unwrap().message;
    assert!(available.starts_with("1/1 LeaderWorkerSet group(s) ready (2 pods each"), "{available}");
    assert_eq!(st.profile.as_ref().unwrap().name, "generated-vllm-nvidia-h100-sxm-80gb-x8-n2-bf16");
    assert!(deployments.get_opt("big").await.unwrap().is_none(), "a group is not a Deployment");

    // Two replicas are two groups on four nodes; then autoscaling takes the count over from
    // there (handed to another field manager first, so no group is dropped).
    svcs.patch("big", &PatchParams::default(), &Patch::Merge(&serde_json::json!({"spec": {"replicas": 2}})))
        .await
        .unwrap();
    let two = cluster::wait_for(&svcs, "big", Duration::from_secs(120), |s| {
        ready(s) && s.status.as_ref().and_then(|st| st.available_replicas) == Some(2)
    })
    .await;
    let available = &condition(&two, "Available").unwrap().message;
    assert!(available.starts_with("2/2 LeaderWorkerSet group(s) ready"), "{available}");
    let scale = serde_json::json!({"spec": {"replicas": null, "scale": {"enabled": true, "hpa": {"minReplicas": 1, "maxReplicas": 2}}}});
    svcs.patch("big", &PatchParams::default(), &Patch::Merge(&scale)).await.unwrap();
    let hpas: Api<k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler> =
        Api::namespaced(client.clone(), &ns.name);
    let hpa = cluster::wait_for(&hpas, "big", Duration::from_secs(60), |_| true).await;
    assert_eq!(hpa.spec.unwrap().scale_target_ref.kind, "LeaderWorkerSet");
    let handed = cluster::wait_for(&groups, "big", Duration::from_secs(60), |g| {
        g.metadata
            .managed_fields
            .iter()
            .flatten()
            .any(|m| m.manager.as_deref() == Some("oim-operator-replicas-handoff"))
    })
    .await;
    assert_eq!(handed.data["spec"]["replicas"].as_i64(), Some(2), "no group dropped when autoscaling took over");
    let scale_off = serde_json::json!({"spec": {"replicas": 1, "scale": null}});
    svcs.patch("big", &PatchParams::default(), &Patch::Merge(&scale_off)).await.unwrap();

    // Moved to the MI300X node (freed first): one node holds it, so the group is removed and a
    // Deployment takes its place.
    svcs.delete("one-node", &Default::default()).await.unwrap();
    cluster::wait_until("the MI300X service's pod gone", Duration::from_secs(60), || async {
        let left = pods.list(&ListParams::default().labels("app.kubernetes.io/instance=one-node")).await.ok()?;
        left.items.is_empty().then_some(())
    })
    .await;
    let to_mi300x = serde_json::json!({"spec": {"nodeSelector": {cluster::SCENARIO_LABEL: on_mi300x}}});
    svcs.patch("big", &PatchParams::default(), &Patch::Merge(&to_mi300x)).await.unwrap();
    cluster::wait_for(&deployments, "big", Duration::from_secs(90), |_| true).await;
    cluster::wait_until("the LeaderWorkerSet removed", Duration::from_secs(60), || async {
        groups.get_opt("big").await.ok().flatten().is_none().then_some(())
    })
    .await;
    // Ready for this generation (the status written before the move still says Ready).
    let moved = cluster::wait_for(&svcs, "big", Duration::from_secs(90), |s| {
        ready(s) && s.status.as_ref().and_then(|st| st.observed_generation) == s.metadata.generation
    })
    .await;
    assert_eq!(moved.status.unwrap().accelerator.as_deref(), Some("8x mi300x"));

    ns.cleanup().await;
    for n in nodes {
        n.delete(&client).await;
    }
}
