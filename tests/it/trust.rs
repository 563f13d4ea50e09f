//! Trust boundaries: whoever can write an OIMService (or edit what the operator stores in its
//! namespace) cannot make the operator take over, delete or run what they could not alone.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use oim::api::{OIMService, ServiceState};
use serde_json::json;

use crate::cluster::{self, KwokNode, TestNs};
use crate::operator::{Operator, condition, image, service};

#[tokio::test]
async fn an_edited_stored_selection_is_ignored_reported_and_rewritten() {
    let client = cluster::client().await;
    let crate::operator::Serving { ns, node, svcs, _operator } = crate::operator::serving_8b(&client, "trust-cm").await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let legit = image(&deployments.get("llm").await.unwrap());
    const STORED: &str = "oim.opea.dev/profile";
    let stored = |d: &Deployment| d.metadata.annotations.as_ref().unwrap()[STORED].clone();
    let doc = stored(&deployments.get("llm").await.unwrap()).replace(&legit, "docker.io/evil/vllm:1.0");
    assert!(doc.contains("evil"), "the stored profile document names the image");
    // Only the stored selection is edited: the running pod template stays as it was.
    let edit = json!({"metadata": {"annotations": {STORED: doc}}});
    let mallory = PatchParams { field_manager: Some("mallory".into()), ..Default::default() };
    deployments.patch("llm", &mallory, &Patch::Merge(&edit)).await.unwrap();

    cluster::wait_until("the edited stored selection rewritten", Duration::from_secs(30), || async {
        let d = deployments.get("llm").await.ok()?;
        (!stored(&d).contains("evil")).then_some(())
    })
    .await;
    let out = cluster::kubectl(&[
        "get",
        "events",
        "-n",
        &ns.name,
        "--field-selector",
        "reason=StoredSelectionRejected",
        "-o",
        "name",
    ]);
    assert!(!out.trim().is_empty(), "no StoredSelectionRejected event");
    assert_eq!(image(&deployments.get("llm").await.unwrap()), legit, "the edited image never reached the Deployment");
    let s = svcs.get("llm").await.unwrap();
    assert_eq!(s.status.unwrap().profile.unwrap().image.as_deref(), Some(legit.as_str()));
    ns.cleanup().await;
    node.delete(&client).await;
}

#[tokio::test]
async fn a_service_cannot_adopt_someone_elses_pvc_and_its_deletion_never_takes_the_pvc() {
    let client = cluster::client().await;
    cluster::install_oim_crds();
    let ns = TestNs::new(&client, "trust-pvc", &[]).await;
    let node = KwokNode::create(&client, "trust-pvc", &cluster::inventory_of("h100-sxm-80gb", 8), None).await;
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns.name);
    let weights: PersistentVolumeClaim = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "team-weights"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
    }))
    .unwrap();
    pvcs.create(&PostParams::default(), &weights).await.unwrap();
    let _operator = Operator::start(&ns.name);
    let svcs: Api<OIMService> = Api::namespaced(client.clone(), &ns.name);
    let mut svc = service("grab", "meta-llama/Llama-3.1-8B-Instruct", "latency", "trust-pvc");
    svc.spec.storage = Some(
        serde_json::from_value(
            json!({"pvc": {"create": true, "name": "team-weights", "size": "1Gi", "retentionPolicy": "Delete"}}),
        )
        .unwrap(),
    );
    svcs.create(&PostParams::default(), &svc).await.unwrap();
    let failed = cluster::wait_for(&svcs, "grab", Duration::from_secs(90), |s| {
        s.status.as_ref().and_then(|s| s.state) == Some(ServiceState::Failed)
    })
    .await;
    let c = condition(&failed, "Degraded").unwrap();
    assert_eq!(c.reason, "ConflictingObject");
    assert!(c.message.contains("PersistentVolumeClaim") && c.message.contains("team-weights"), "{}", c.message);
    let live = pvcs.get("team-weights").await.unwrap();
    assert!(live.metadata.owner_references.is_none(), "the PVC was given an owner");
    assert!(
        Api::<Deployment>::namespaced(client.clone(), &ns.name).get_opt("grab").await.unwrap().is_none(),
        "nothing written"
    );
    svcs.delete("grab", &Default::default()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(pvcs.get_opt("team-weights").await.unwrap().is_some_and(|p| p.metadata.deletion_timestamp.is_none()));
    ns.cleanup().await;
    node.delete(&client).await;
}
