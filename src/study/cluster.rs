//! `oim study run` on a cluster: each candidate is selected and rendered exactly as the operator
//! would for an OIMService pinned to it (same placement, same builders), then applied with the
//! study's own field manager, labelled with the study and the candidate. The study waits for a
//! Ready pod behind the Service's endpoints, reaches it through the port-forward subresource
//! ([`super::forward`]), and deletes what it applied when the candidate is measured, fails or is
//! interrupted. A run first removes what an earlier, killed run of the same study left behind.
//!
//! Why not create an OIMService: the operator selects only published profiles, and a candidate
//! is a draft in the study directory; rendering it here needs no operator, no registry write and
//! no CRD, and still produces the objects the operator would apply for it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, Preconditions};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use super::Study;
use super::forward::Forward;
use crate::api::{OIMService, OIMServiceSpec, ProfileSelector};
use crate::profile::Profile;
use crate::profile::catalog::{ProfileSummary, digest_of};
use crate::profile::engines::Engines;
use crate::profile::select::{NodeView, PodUse, Request, select, selection_key};
use crate::render::{Capabilities, Input, Platform, Selection, Weights, render};

/// Label on everything a study applies: which study (a label-safe form of its id).
pub const STUDY_LABEL: &str = "oim.opea.dev/study";
/// Label on everything a study applies: which candidate.
pub const CANDIDATE_LABEL: &str = "oim.opea.dev/study-candidate";
/// The study's server-side-apply field manager (not the operator's).
pub const FIELD_MANAGER: &str = "oim-study";
/// Most objects read per list page, and pages read, so a list stays bounded.
const PAGE: u32 = 500;
const MAX_PAGES: u32 = 40;
/// How long a deleted candidate's pods may take to go.
const TEARDOWN_TIMEOUT: Duration = Duration::from_secs(120);

/// Where and how candidates are deployed.
#[derive(Clone)]
pub struct ClusterTarget {
    /// The cluster.
    pub client: Client,
    /// Namespace the candidates run in (must exist).
    pub namespace: String,
    /// Only nodes with these labels (the OIMService `nodeSelector`).
    pub node_selector: BTreeMap<String, String>,
    /// Secret with the Hugging Face token (`HF_TOKEN` key), for gated models.
    pub auth_secret: Option<String>,
    /// Target platform (OpenShift: no fixed user ids).
    pub platform: Platform,
}

/// A label value from any text: the text when it is a valid label value, else a readable prefix
/// and a hash.
pub fn label_value(text: &str) -> String {
    let valid = |s: &str| {
        s.len() <= 63
            && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && s.starts_with(|c: char| c.is_ascii_alphanumeric())
            && s.ends_with(|c: char| c.is_ascii_alphanumeric())
    };
    if valid(text) {
        return text.to_string();
    }
    let hash: String = Sha256::digest(text.as_bytes()).iter().take(6).map(|b| format!("{b:02x}")).collect();
    let prefix: String =
        text.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).take(48).collect();
    let prefix = prefix.trim_matches('-');
    if prefix.is_empty() { hash } else { format!("{prefix}-{hash}") }
}

/// The objects' name for a candidate: its name when it is a short DNS label (Service names are
/// at most 63 characters and pod names grow by 17), else a prefix and a hash.
pub fn object_name(candidate: &str) -> String {
    let ok = candidate.len() <= 45
        && candidate.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && candidate.starts_with(|c: char| c.is_ascii_lowercase())
        && !candidate.ends_with('-');
    if ok {
        return candidate.to_string();
    }
    let hash: String = Sha256::digest(candidate.as_bytes()).iter().take(4).map(|b| format!("{b:02x}")).collect();
    let prefix: String = candidate
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' })
        .skip_while(|c| !c.is_ascii_lowercase())
        .take(36)
        .collect();
    format!("{}-{hash}", if prefix.trim_matches('-').is_empty() { "study" } else { prefix.trim_end_matches('-') })
}

/// The labels on a candidate's objects.
fn labels(study: &Study, candidate: &str) -> BTreeMap<String, String> {
    [(STUDY_LABEL.to_string(), label_value(&study.id)), (CANDIDATE_LABEL.to_string(), label_value(candidate))].into()
}

fn selector(labels: &BTreeMap<String, String>) -> String {
    labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

/// The OIMService the operator would be given for this candidate: pinned to it, no generated
/// fallback, the study's labels on every child.
fn service_for(t: &ClusterTarget, study: &Study, p: &Profile) -> OIMService {
    let mut svc = OIMService::new(
        &object_name(&p.name),
        OIMServiceSpec {
            model: crate::api::ModelSpec { name: p.model.clone(), ..Default::default() },
            profile: Some(ProfileSelector {
                name: Some(p.name.clone()),
                allow_generated: Some(false),
                ..Default::default()
            }),
            auth_secret: t.auth_secret.clone(),
            node_selector: Some(t.node_selector.clone()).filter(|s| !s.is_empty()),
            labels: Some(labels(study, &p.name)),
            ..Default::default()
        },
    );
    svc.metadata.namespace = Some(t.namespace.clone());
    svc
}

/// Lists every object of a kind (bounded by pages).
async fn list_all<K>(api: &Api<K>, lp: ListParams) -> Result<Vec<K>, String>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    let mut out = vec![];
    let mut lp = lp.limit(PAGE);
    for _ in 0..MAX_PAGES {
        let page = api.list(&lp).await.map_err(|e| format!("listing {}: {e}", K::plural(&())))?;
        out.extend(page.items);
        match page.metadata.continue_ {
            Some(c) if !c.is_empty() => lp = lp.continue_token(&c),
            _ => return Ok(out),
        }
    }
    Err(format!("more than {} {}; narrow the study with --node-selector", PAGE * MAX_PAGES, K::plural(&())))
}

/// What the operator's selection and renderer make of the candidate on this cluster's nodes.
async fn rendered(t: &ClusterTarget, study: &Study, p: &Profile) -> Result<crate::render::Rendered, String> {
    let nodes: Vec<NodeView> = list_all(&Api::<Node>::all(t.client.clone()), ListParams::default())
        .await?
        .iter()
        .filter_map(NodeView::from_node)
        .collect();
    let running = ListParams::default().fields("status.phase!=Succeeded,status.phase!=Failed");
    let pods: Vec<PodUse> =
        list_all(&Api::<Pod>::all(t.client.clone()), running).await?.iter().filter_map(PodUse::from_pod).collect();
    let svc = service_for(t, study, p);
    let yaml = serde_saphyr::to_string(p).map_err(|e| e.to_string())?;
    let summary = ProfileSummary::of(p, digest_of(yaml.as_bytes()), format!("study {}", study.id));
    let engines = Engines::builtin();
    let selection = select(&Request::for_service(&svc), std::slice::from_ref(&summary), &nodes, &pods, &engines);
    let Some(chosen) = selection.selected else {
        let mut why: Vec<String> = selection.rejected.iter().map(|r| r.reason.clone()).collect();
        why.extend(selection.unusable.iter().map(|u| format!("node {}: {}", u.node, u.message)));
        if nodes.is_empty() {
            why.push("no node carries an inventory (is the oim node agent running?)".into());
        }
        return Err(format!("no node can run it now: {}", why.join("; ")));
    };
    let key = selection_key(&svc);
    let input = Input {
        service: &svc,
        profile: p,
        digest: &summary.digest,
        source: &summary.source,
        selection: Selection { key: &key, reason: &chosen.reason, rejected: &[] },
        group: &chosen.group,
        weights: Weights::Hub,
        platform: t.platform,
        capabilities: Capabilities::default(),
        engines: &engines,
        device_groups: vec![],
    };
    render(&input).map_err(|e| e.to_string())
}

/// A candidate deployed on the cluster.
pub struct Deployed {
    target: ClusterTarget,
    name: String,
    labels: BTreeMap<String, String>,
    forward: Option<Forward>,
    /// The pod measured.
    pub pod: Option<String>,
}

/// Applies one typed object with the study's field manager; refuses to touch an object of that
/// name the study did not create.
async fn apply<K>(client: &Client, ns: &str, obj: &K, labels: &BTreeMap<String, String>) -> Result<(), String>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let name = obj.meta().name.clone().unwrap_or_default();
    let what = format!("{} {ns}/{name}", K::kind(&()));
    if let Some(existing) = api.get_opt(&name).await.map_err(|e| format!("reading {what}: {e}"))? {
        let ours = labels.iter().all(|(k, v)| existing.labels().get(k) == Some(v));
        if !ours {
            return Err(format!(
                "{what} exists and was not created by this study; delete it or run the study in another --namespace"
            ));
        }
    }
    let doc = crate::render::with_kind(obj);
    api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&doc))
        .await
        .map_err(|e| format!("applying {what}: {e}"))?;
    Ok(())
}

/// Selects, renders and applies a candidate; returns what to wait on and tear down.
pub async fn deploy(t: &ClusterTarget, study: &Study, p: &Profile) -> Result<Deployed, String> {
    let r = rendered(t, study, p).await?;
    let labels = labels(study, &p.name);
    let mut d =
        Deployed { target: t.clone(), name: object_name(&p.name), labels: labels.clone(), forward: None, pod: None };
    let ns = &t.namespace;
    let c = &t.client;
    let applied = async {
        apply(c, ns, &r.deployment, &labels).await?;
        apply(c, ns, &r.service, &labels).await
    }
    .await;
    if let Err(e) = applied {
        d.teardown().await;
        return Err(e);
    }
    Ok(d)
}

impl Deployed {
    /// The last port-forward error, if any.
    pub fn forward_error(&self) -> Option<String> {
        self.forward.as_ref().and_then(Forward::last_error)
    }

    /// `namespace/name` of the Deployment.
    pub fn describe(&self) -> String {
        format!("Deployment {}/{}", self.target.namespace, self.name)
    }

    /// Waits for a Ready pod behind the Service's endpoints and opens a local forward to it;
    /// returns the engine's base URL. `say` hears state changes.
    pub async fn wait_ready(&mut self, timeout: Duration, say: &mut dyn FnMut(String)) -> Result<String, String> {
        let start = Instant::now();
        let mut last = String::new();
        loop {
            let (state, pod) = self.endpoint_state().await;
            if state != last {
                say(state.clone());
                last = state;
            }
            if let Some(pod) = pod {
                let pods: Api<Pod> = Api::namespaced(self.target.client.clone(), &self.target.namespace);
                let fwd = Forward::start(pods, pod.clone(), crate::render::PORT as u16).await?;
                let url = fwd.url();
                say(format!("forwarding {url} to pod {pod} port {}", crate::render::PORT));
                self.forward = Some(fwd);
                self.pod = Some(pod);
                return Ok(url);
            }
            if start.elapsed() > timeout {
                return Err(format!("no Ready endpoint after {}s: {last}", timeout.as_secs()));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// What the candidate is waiting for, and the Ready pod behind the Service once there is one.
    async fn endpoint_state(&self) -> (String, Option<String>) {
        let ns = &self.target.namespace;
        let slices: Api<EndpointSlice> = Api::namespaced(self.target.client.clone(), ns);
        let lp = ListParams::default().labels(&format!("kubernetes.io/service-name={}", self.name));
        let ready_pod = slices.list(&lp.limit(PAGE)).await.ok().and_then(|l| {
            l.items.iter().flat_map(|s| s.endpoints.iter()).find_map(|e| {
                let ready = e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(false);
                let pod =
                    e.target_ref.as_ref().filter(|r| r.kind.as_deref() == Some("Pod")).and_then(|r| r.name.clone());
                pod.filter(|_| ready)
            })
        });
        if let Some(pod) = ready_pod {
            return (format!("pod {pod} is Ready and behind Service {}", self.name), Some(pod));
        }
        let pods: Api<Pod> = Api::namespaced(self.target.client.clone(), ns);
        let lp = ListParams::default().labels(&selector(&self.labels)).limit(PAGE);
        let state = match pods.list(&lp).await {
            Ok(l) if l.items.is_empty() => "waiting for the Deployment's pod".to_string(),
            Ok(l) => l.items.iter().map(pod_state).collect::<Vec<_>>().join("; "),
            Err(e) => format!("cannot read pods: {e}"),
        };
        (state, None)
    }

    /// Stops the forward and deletes every object of this candidate (found by its labels, each
    /// deleted only if its uid is still the one listed), then waits for its pods to go so the
    /// next candidate finds the devices free.
    pub async fn teardown(&mut self) {
        self.forward = None;
        delete_labelled(&self.target, &selector(&self.labels)).await;
    }
}

/// Pod phase and the first reason it is not Ready.
fn pod_state(p: &Pod) -> String {
    let name = p.name_any();
    let status = p.status.clone().unwrap_or_default();
    let phase = status.phase.unwrap_or_else(|| "Pending".into());
    let why = status
        .conditions
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.status != "True" && c.message.is_some())
        .map(|c| format!(": {} {}", c.reason.unwrap_or_default(), c.message.unwrap_or_default()))
        .or_else(|| {
            status.container_statuses.unwrap_or_default().into_iter().find_map(|c| {
                c.state.and_then(|s| s.waiting).and_then(|w| w.reason).map(|r| format!(": container {} {r}", c.name))
            })
        })
        .unwrap_or_default();
    format!("pod {name} {phase}{why}")
}

async fn delete_kind<K>(client: &Client, ns: &str, selector: &str) -> Vec<String>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let Ok(list) = list_all(&api, ListParams::default().labels(selector)).await else { return vec![] };
    let mut deleted = vec![];
    for o in list {
        let dp = DeleteParams {
            preconditions: Some(Preconditions { uid: o.uid(), resource_version: None }),
            ..DeleteParams::background()
        };
        if api.delete(&o.name_any(), &dp).await.is_ok() {
            deleted.push(format!("{} {}", K::kind(&()), o.name_any()));
        }
    }
    deleted
}

/// Deletes the Deployments, Services, ConfigMaps and ServiceAccounts matching `selector` in the
/// target namespace, then waits (bounded) for the Deployments' ReplicaSets and pods to be gone.
/// Returns what it deleted.
async fn delete_labelled(t: &ClusterTarget, selector: &str) -> Vec<String> {
    let (c, ns) = (&t.client, t.namespace.as_str());
    let mut deleted = delete_kind::<Deployment>(c, ns, selector).await;
    deleted.extend(delete_kind::<Service>(c, ns, selector).await);
    deleted.extend(delete_kind::<ConfigMap>(c, ns, selector).await);
    deleted.extend(delete_kind::<ServiceAccount>(c, ns, selector).await);
    let start = Instant::now();
    while start.elapsed() < TEARDOWN_TIMEOUT && still_there(c, ns, selector).await {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    deleted
}

/// Whether a Deployment, ReplicaSet or Pod matching `selector` is still there (the garbage
/// collector removes the ReplicaSets and pods after their Deployment); an error counts as gone.
async fn still_there(c: &Client, ns: &str, selector: &str) -> bool {
    let lp = ListParams::default().labels(selector).limit(1);
    let deployments = Api::<Deployment>::namespaced(c.clone(), ns).list(&lp).await.is_ok_and(|l| !l.items.is_empty());
    let sets = Api::<ReplicaSet>::namespaced(c.clone(), ns).list(&lp).await.is_ok_and(|l| !l.items.is_empty());
    let pods = Api::<Pod>::namespaced(c.clone(), ns).list(&lp).await.is_ok_and(|l| !l.items.is_empty());
    deployments || sets || pods
}

/// Removes what an earlier run of this study left on the cluster (a run killed before its
/// teardown); returns what it deleted.
pub async fn sweep(t: &ClusterTarget, study: &Study) -> Vec<String> {
    delete_labelled(t, &format!("{STUDY_LABEL}={}", label_value(&study.id))).await
}

/// Checks the namespace exists and the client can reach the cluster, before any candidate.
pub async fn check(t: &ClusterTarget) -> Result<(), String> {
    let nss: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(t.client.clone());
    match nss.get_opt(&t.namespace).await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err("does not exist; create it or pass another --namespace".into()),
        // Reading namespaces may be forbidden to a namespaced user; the applies will tell.
        Err(kube::Error::Api(e)) if e.code == 403 => Ok(()),
        Err(e) => Err(format!("cannot read it: {e}; check the kubeconfig's cluster and credentials")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_label_values_are_the_text_when_valid_and_stay_valid_and_distinct_when_not() {
        assert_eq!(
            object_name("study-nvidia-h100-sxm-80gb-x1-bf16-s256-l8k"),
            "study-nvidia-h100-sxm-80gb-x1-bf16-s256-l8k"
        );
        let long = "study-nvidia-h100-sxm-80gb-x8-bf16-s256-l131072-with-a-much-longer-name";
        let other = "study-nvidia-h100-sxm-80gb-x8-bf16-s256-l131072-with-a-much-longer-name-2";
        let (a, b) = (object_name(long), object_name(other));
        assert!(a.len() <= 45 && b.len() <= 45 && a != b, "{a} {b}");
        assert!(
            a.starts_with("study-nvidia")
                && a.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        );
        assert!(object_name("1-Upper_Case").starts_with("upper-case-"), "{}", object_name("1-Upper_Case"));

        assert_eq!(label_value("20261127-llama-3.1-8b-instruct-h100"), "20261127-llama-3.1-8b-instruct-h100");
        let id = "20261127074606-meta-llama/llama-3.1-70b-instruct-nvidia-h100-sxm-80gb-and-more";
        let v = label_value(id);
        assert!(v.len() <= 63 && !v.contains('/') && v != label_value(&format!("{id}x")), "{v}");
    }
}
