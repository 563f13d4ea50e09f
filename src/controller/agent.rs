//! The operator owns the node agent: it applies the `config/agent` objects (namespace, service
//! account, RBAC, admission policy, DaemonSet) with its own image and puts them back when someone
//! deletes or edits them. Writes happen only on drift, so a steady cluster costs no writes.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::admissionregistration::v1::{ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount, Toleration};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::Value;
use tracing::{error, info, warn};

use crate::controller::apply::{APPLIED_HASH, Verdict, WriteCounter, api_for, mark, server_side_apply, stamp, verdict};
use crate::controller::metrics::Metrics;

/// The namespace `config/agent` installs into; cluster-scoped names stay unsuffixed for it.
pub const DEFAULT_NAMESPACE: &str = "oim-system";
const NAME: &str = "oim-node-agent";

/// Where and with what image the agent runs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Namespace of the DaemonSet and its service account.
    pub namespace: String,
    /// The agent's image (the operator's own by default).
    pub image: String,
    /// Deploy the agent even where its admission policy cannot be applied (clusters without
    /// ValidatingAdmissionPolicy): its ClusterRole may then patch every Node without limits.
    pub without_admission_policy: bool,
    /// Nodes the agent runs on (default: all).
    pub node_selector: BTreeMap<String, String>,
    /// Taints it tolerates (default: every taint, as GPU nodes are usually tainted).
    pub tolerations: Option<Vec<Toleration>>,
    /// OpenShift: restricted-v2 assigns the user id, so none is fixed.
    pub openshift: bool,
}

impl AgentConfig {
    /// The agent in `namespace` with `image`, on every node, with its admission policy.
    pub fn new(namespace: String, image: String) -> AgentConfig {
        AgentConfig {
            namespace,
            image,
            without_admission_policy: false,
            node_selector: BTreeMap::new(),
            tolerations: None,
            openshift: false,
        }
    }
}

/// The `config/agent` objects for `cfg`, typed-checked and adjusted: image, namespace, and the
/// service-account name the RBAC binding and admission policy refer to. Two installs in two
/// namespaces get distinct cluster-scoped names, so they never fight over one object.
pub fn objects(cfg: &AgentConfig) -> Result<Vec<Value>, String> {
    let bad = |file: &str, e: &dyn std::fmt::Display| format!("config/agent/{file}: {e}");
    let mut ns: Namespace =
        serde_saphyr::from_str(include_str!("../../config/agent/namespace.yaml")).map_err(|e| bad("namespace", &e))?;
    let mut sa: ServiceAccount = serde_saphyr::from_str(include_str!("../../config/agent/serviceaccount.yaml"))
        .map_err(|e| bad("serviceaccount", &e))?;
    let [role, binding] = two_documents(include_str!("../../config/agent/rbac.yaml")).map_err(|e| bad("rbac", &e))?;
    let mut role: ClusterRole = serde_json::from_value(role).map_err(|e| bad("rbac", &e))?;
    let mut binding: ClusterRoleBinding = serde_json::from_value(binding).map_err(|e| bad("rbac", &e))?;
    let [policy, policy_binding] = two_documents(include_str!("../../config/agent/admission-policy.yaml"))
        .map_err(|e| bad("admission-policy", &e))?;
    let mut policy: ValidatingAdmissionPolicy =
        serde_json::from_value(policy).map_err(|e| bad("admission-policy", &e))?;
    let mut policy_binding: ValidatingAdmissionPolicyBinding =
        serde_json::from_value(policy_binding).map_err(|e| bad("admission-policy", &e))?;
    let mut ds: DaemonSet =
        serde_saphyr::from_str(include_str!("../../config/agent/daemonset.yaml")).map_err(|e| bad("daemonset", &e))?;

    let cluster_name =
        if cfg.namespace == DEFAULT_NAMESPACE { NAME.to_string() } else { format!("{NAME}-{}", cfg.namespace) };
    ns.metadata.name = Some(cfg.namespace.clone());
    sa.metadata.namespace = Some(cfg.namespace.clone());
    ds.metadata.namespace = Some(cfg.namespace.clone());
    role.metadata.name = Some(cluster_name.clone());
    binding.metadata.name = Some(cluster_name.clone());
    binding.role_ref.name = cluster_name.clone();
    for s in binding.subjects.iter_mut().flatten() {
        s.namespace = Some(cfg.namespace.clone());
    }
    policy.metadata.name = Some(cluster_name.clone());
    policy_binding.metadata.name = Some(cluster_name.clone());
    if let Some(spec) = policy_binding.spec.as_mut() {
        spec.policy_name = Some(cluster_name.clone());
    }
    let user = format!("system:serviceaccount:{}:{NAME}", cfg.namespace);
    for c in policy.spec.as_mut().and_then(|s| s.match_conditions.as_mut()).into_iter().flatten() {
        c.expression = c.expression.replace(&format!("system:serviceaccount:{DEFAULT_NAMESPACE}:{NAME}"), &user);
    }
    let pod = ds.spec.as_mut().and_then(|s| s.template.spec.as_mut()).ok_or_else(|| bad("daemonset", &"no pod"))?;
    for c in &mut pod.containers {
        c.image = Some(cfg.image.clone());
    }
    if !cfg.node_selector.is_empty() {
        pod.node_selector = Some(cfg.node_selector.clone());
    }
    if let Some(t) = &cfg.tolerations {
        pod.tolerations = Some(t.clone());
    }
    if cfg.openshift
        && let Some(sc) = pod.security_context.as_mut()
    {
        sc.run_as_user = None;
        sc.run_as_group = None;
    }
    let json = |v: Result<Value, serde_json::Error>| v.map_err(|e| e.to_string());
    // The admission policy first: the agent's rights exist only once they are limited.
    Ok(vec![
        json(serde_json::to_value(ns))?,
        json(serde_json::to_value(policy))?,
        json(serde_json::to_value(policy_binding))?,
        json(serde_json::to_value(sa))?,
        json(serde_json::to_value(role))?,
        json(serde_json::to_value(binding))?,
        json(serde_json::to_value(ds))?,
    ])
}

/// A file of exactly two YAML documents.
fn two_documents(text: &str) -> Result<[Value; 2], String> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(text).map_err(|e| e.to_string())?;
    docs.try_into().map_err(|d: Vec<Value>| format!("expected two documents, found {}", d.len()))
}

/// What we last wrote of each object: its mark (generation or resourceVersion).
type Seen = HashMap<String, String>;

/// Whether an object is in place after this pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placed {
    Yes,
    No,
}

/// Applies one object when it is missing or changed since our last apply (the services'
/// policy, [`crate::controller::apply::verdict`]). A Namespace someone else made is used as it
/// is: its labels (Pod Security) are theirs.
async fn ensure_one(client: &kube::Client, obj: &Value, seen: &mut Seen, writes: &WriteCounter) -> Placed {
    let Some((api, name)) = api_for::<kube::api::DynamicObject>(client, obj) else { return Placed::No };
    let key = format!("{}/{name}", obj["kind"].as_str().unwrap_or_default());
    let mut obj = obj.clone();
    let hash = stamp(&mut obj, None);
    let live = match api.get_metadata_opt(&name).await {
        Ok(l) => l.map(|l| l.metadata),
        Err(e) => {
            warn!(object = %key, error = %e, "node agent object not readable");
            return Placed::No;
        }
    };
    let foreign_namespace = obj["kind"] == "Namespace"
        && live.as_ref().is_some_and(|l| l.annotations.as_ref().is_none_or(|a| !a.contains_key(APPLIED_HASH)));
    if foreign_namespace
        || verdict(live.as_ref(), None, &hash, seen.get(&key).map(String::as_str)) == Verdict::Unchanged
    {
        if let Some(l) = &live {
            seen.insert(key, mark(l));
        }
        return Placed::Yes;
    }
    match server_side_apply(client, &obj, writes).await {
        Ok(applied) => {
            info!(object = %key, "node agent object applied");
            seen.insert(key, mark(&applied));
            Placed::Yes
        }
        Err(e) => {
            warn!(object = %key, error = %e, "node agent object not applied; retrying");
            Placed::No
        }
    }
}

/// Applies the agent's objects in order, failing closed: without its admission policy and
/// binding in place, neither its RBAC nor its DaemonSet is deployed (unless opted out).
/// Returns whether the agent runs limited by the policy.
async fn ensure(
    client: &kube::Client,
    cfg: &AgentConfig,
    objects: &[Value],
    seen: &mut Seen,
    writes: &WriteCounter,
) -> bool {
    let mut limited = true;
    for obj in objects {
        let kind = obj["kind"].as_str().unwrap_or_default();
        let gated = !matches!(kind, "Namespace" | "ValidatingAdmissionPolicy" | "ValidatingAdmissionPolicyBinding");
        if gated && !limited && !cfg.without_admission_policy {
            error!(
                "the node agent's ValidatingAdmissionPolicy could not be applied: its RBAC and DaemonSet are not deployed (the agent could otherwise patch every Node); grant the operator validatingadmissionpolicies, or run with --agent-without-admission-policy"
            );
            return false;
        }
        let placed = ensure_one(client, obj, seen, writes).await;
        if kind.starts_with("ValidatingAdmissionPolicy") && placed == Placed::No {
            limited = false;
        }
    }
    limited
}

/// Keeps the agent objects in shape until the process ends: at start, on every change to the
/// DaemonSet, and every `period` for the others.
pub async fn keep(client: kube::Client, cfg: AgentConfig, metrics: std::sync::Arc<Metrics>, period: Duration) {
    let objects = match objects(&cfg) {
        Ok(o) => o,
        Err(e) => {
            warn!(error = %e, "node agent objects not built; the agent is not managed");
            return;
        }
    };
    let mut seen = Seen::new();
    let daemonsets: Api<DaemonSet> = Api::namespaced(client.clone(), &cfg.namespace);
    let changes = watcher(daemonsets, watcher::Config::default().fields(&format!("metadata.name={NAME}")))
        .default_backoff()
        .map(|_| ());
    let ticks = futures::stream::unfold((), move |_| async move {
        tokio::time::sleep(period).await;
        Some(((), ()))
    });
    let mut triggers = futures::stream::select(futures::stream::once(async {}).chain(changes), ticks).boxed();
    while triggers.next().await.is_some() {
        let limited = ensure(&client, &cfg, &objects, &mut seen, &metrics.writes).await;
        metrics.agent_policy_missing.set(i64::from(!limited));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_runs_the_given_image_in_the_given_namespace_and_the_policy_names_its_account() {
        let cfg = AgentConfig::new("platform".into(), "registry.example/oim:1.2.3".into());
        let objs = objects(&cfg).unwrap();
        let kinds: Vec<&str> = objs.iter().map(|o| o["kind"].as_str().unwrap()).collect();
        assert_eq!(
            kinds,
            [
                "Namespace",
                "ValidatingAdmissionPolicy",
                "ValidatingAdmissionPolicyBinding",
                "ServiceAccount",
                "ClusterRole",
                "ClusterRoleBinding",
                "DaemonSet"
            ],
            "the admission policy comes before the rights it limits"
        );
        let ds = &objs[6];
        assert_eq!(ds["metadata"]["namespace"], "platform");
        assert_eq!(ds["spec"]["template"]["spec"]["containers"][0]["image"], "registry.example/oim:1.2.3");
        assert_eq!(objs[5]["subjects"][0]["namespace"], "platform");
        assert_eq!(objs[5]["roleRef"]["name"], "oim-node-agent-platform");
        let rule = objs[1]["spec"]["matchConditions"][0]["expression"].as_str().unwrap();
        assert!(rule.contains("system:serviceaccount:platform:oim-node-agent"), "{rule}");
        assert_eq!(objs[2]["spec"]["policyName"], "oim-node-agent-platform");
    }

    #[test]
    fn in_the_default_namespace_the_objects_are_the_checked_in_ones() {
        let cfg = AgentConfig::new(DEFAULT_NAMESPACE.into(), "docker.io/opea/oim:0.1.0".into());
        let objs = objects(&cfg).unwrap();
        assert_eq!(objs[4]["metadata"]["name"], "oim-node-agent");
        let rule = objs[1]["spec"]["matchConditions"][0]["expression"].as_str().unwrap();
        assert!(rule.contains("system:serviceaccount:oim-system:oim-node-agent"));
    }

    #[test]
    fn the_agent_runs_where_the_platform_team_says_and_under_openshift_ids() {
        let mut cfg = AgentConfig::new("platform".into(), "img:1".into());
        cfg.node_selector = [("node-role.kubernetes.io/gpu".to_string(), "".to_string())].into();
        cfg.tolerations = Some(vec![Toleration {
            key: Some("nvidia.com/gpu".into()),
            operator: Some("Exists".into()),
            ..Default::default()
        }]);
        cfg.openshift = true;
        let pod = objects(&cfg).unwrap()[6]["spec"]["template"]["spec"].clone();
        assert_eq!(pod["nodeSelector"]["node-role.kubernetes.io/gpu"], "");
        assert_eq!(pod["tolerations"].as_array().unwrap().len(), 1);
        assert_eq!(pod["tolerations"][0]["key"], "nvidia.com/gpu");
        assert!(pod["securityContext"]["runAsUser"].is_null(), "restricted-v2 assigns the uid");
        let default =
            objects(&AgentConfig::new("p".into(), "img:1".into())).unwrap()[6]["spec"]["template"]["spec"].clone();
        assert_eq!(default["tolerations"][0]["operator"], "Exists", "every taint by default");
        assert_eq!(default["securityContext"]["runAsUser"], 65532);
    }
}
