//! The operator owns the node agent: it deploys the `config/agent` objects with the image it is
//! told (its own by default) and puts them back when someone edits or deletes them.

use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::{ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams};

use crate::cluster::{self, TestNs};
use crate::operator::Operator;

const IMAGE: &str = "registry.example.com/opea/oim:test";

fn image(ds: &DaemonSet) -> Option<&str> {
    ds.spec.as_ref()?.template.spec.as_ref()?.containers.first()?.image.as_deref()
}

#[tokio::test]
async fn the_operator_deploys_the_node_agent_with_its_image_and_puts_it_back_when_edited_or_deleted() {
    let client = cluster::client().await;
    cluster::install_oim_crds();
    let ns = TestNs::new(&client, "op-agent", &[]).await;
    let operator = Operator::with_args(&[
        "--catalog",
        concat!(env!("CARGO_MANIFEST_DIR"), "/profiles"),
        "--watch-namespaces",
        &ns.name,
        "--agent-namespace",
        &ns.name,
        "--agent-image",
        IMAGE,
    ]);
    let daemonsets: Api<DaemonSet> = Api::namespaced(client.clone(), &ns.name);
    let ds =
        cluster::wait_for(&daemonsets, "oim-node-agent", Duration::from_secs(60), |d| image(d) == Some(IMAGE)).await;
    // Its RBAC and admission policy name this namespace's service account.
    let cluster_name = format!("oim-node-agent-{}", ns.name);
    let binding = Api::<ClusterRoleBinding>::all(client.clone()).get(&cluster_name).await.unwrap();
    assert_eq!(binding.subjects.unwrap()[0].namespace.as_deref(), Some(ns.name.as_str()));
    let policy = Api::<ValidatingAdmissionPolicy>::all(client.clone()).get(&cluster_name).await.unwrap();
    let rule = &policy.spec.unwrap().match_conditions.unwrap()[0].expression;
    assert!(rule.contains(&format!("system:serviceaccount:{}:oim-node-agent", ns.name)), "{rule}");
    Api::<ValidatingAdmissionPolicyBinding>::all(client.clone()).get(&cluster_name).await.unwrap();

    // Someone changes the image: the operator puts its own back.
    let edit = serde_json::json!({"spec": {"template": {"spec": {"containers": [{"name": "agent", "image": "example.com/other:1"}]}}}});
    daemonsets.patch("oim-node-agent", &PatchParams::default(), &Patch::Strategic(&edit)).await.unwrap();
    let restored =
        cluster::wait_for(&daemonsets, "oim-node-agent", Duration::from_secs(30), |d| image(d) == Some(IMAGE)).await;
    assert!(restored.metadata.generation > ds.metadata.generation, "the edit happened and was undone");

    // Someone deletes it: it comes back.
    let uid = restored.metadata.uid.clone();
    daemonsets.delete("oim-node-agent", &DeleteParams::default()).await.unwrap();
    let back = cluster::wait_for(&daemonsets, "oim-node-agent", Duration::from_secs(30), |d| {
        d.metadata.uid != uid && d.metadata.deletion_timestamp.is_none()
    })
    .await;
    assert_eq!(image(&back), Some(IMAGE));

    drop(operator);
    Api::<ValidatingAdmissionPolicyBinding>::all(client.clone())
        .delete(&cluster_name, &DeleteParams::default())
        .await
        .unwrap();
    Api::<ValidatingAdmissionPolicy>::all(client.clone())
        .delete(&cluster_name, &DeleteParams::default())
        .await
        .unwrap();
    Api::<ClusterRoleBinding>::all(client.clone()).delete(&cluster_name, &DeleteParams::default()).await.unwrap();
    Api::<ClusterRole>::all(client.clone()).delete(&cluster_name, &DeleteParams::default()).await.unwrap();
    ns.cleanup().await;
}
