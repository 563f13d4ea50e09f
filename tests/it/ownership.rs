//! The operator owns the node agent: it deploys the `config/agent` objects with the image it is
//! told (its own by default) and puts them back when someone edits or deletes them.

use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::{ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams};
use std::process::Command;

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

#[tokio::test]
async fn without_its_admission_policy_the_node_agent_is_not_deployed() {
    let client = cluster::client().await;
    let ns = TestNs::new(&client, "op-agent-closed", &[]).await;
    // An operator account that may deploy everything of the agent but its admission policy.
    let role = serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": ns.name},
        "rules": [
            {"apiGroups": [""], "resources": ["namespaces", "serviceaccounts"], "verbs": ["get", "create", "patch"]},
            {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["clusterroles", "clusterrolebindings"],
             "verbs": ["get", "create", "patch", "bind", "escalate"]},
            {"apiGroups": ["apps"], "resources": ["daemonsets"], "verbs": ["get", "list", "watch", "create", "patch"]},
        ]
    });
    let binding = serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": ns.name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": ns.name},
        "subjects": [{"kind": "ServiceAccount", "name": "operator", "namespace": ns.name}]
    });
    cluster::kubectl(&["create", "serviceaccount", "operator", "-n", &ns.name]);
    for obj in [&role, &binding] {
        let (ok, _, err) = cluster::tool_stdin("kubectl", &["apply", "-f", "-"], &obj.to_string());
        assert!(ok, "{err}");
    }
    let dir = std::env::temp_dir().join(cluster::unique("agent-closed"));
    let kubeconfig = cluster::kubeconfig_for(&ns.name, "operator", &dir);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let bind = format!("127.0.0.1:{port}");
    let args = ["--catalog", concat!(env!("CARGO_MANIFEST_DIR"), "/profiles"), "--watch-namespaces", &ns.name];
    let operator = Operator::with_kubeconfig(
        &kubeconfig,
        &[&args[..], &["--agent-namespace", &ns.name, "--agent-image", IMAGE, "--metrics-bind", &bind]].concat(),
    );
    let metric = cluster::wait_until("the operator reports the missing policy", Duration::from_secs(60), || async {
        let out = Command::new("curl").args(["-sf", "-m", "2", &format!("http://{bind}/metrics")]).output().ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.contains("oim_operator_agent_admission_policy_missing 1").then_some(text)
    })
    .await;
    assert!(metric.contains("agent_admission_policy_missing"));
    let cluster_name = format!("oim-node-agent-{}", ns.name);
    assert!(
        Api::<DaemonSet>::namespaced(client.clone(), &ns.name).get_opt("oim-node-agent").await.unwrap().is_none(),
        "the DaemonSet was deployed"
    );
    assert!(
        Api::<ClusterRole>::all(client.clone()).get_opt(&cluster_name).await.unwrap().is_none(),
        "the agent's ClusterRole was deployed"
    );
    let labels = Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .get(&ns.name)
        .await
        .unwrap()
        .metadata
        .labels
        .unwrap_or_default();
    assert!(
        !labels.contains_key("pod-security.kubernetes.io/enforce"),
        "a namespace the operator did not create was relabelled"
    );
    drop(operator);
    cluster::kubectl(&["delete", "clusterrolebinding", &ns.name]);
    cluster::kubectl(&["delete", "clusterrole", &ns.name]);
    ns.cleanup().await;
}
