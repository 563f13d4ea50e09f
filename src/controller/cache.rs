//! The OIMCache reconciler: select the profiles for the hardware present (the OIMService
//! selector and selection) -> create or adopt the PVC -> run the download Job on the selected
//! group's nodes -> status. A finalizer carries out `retentionPolicy` on deletion: Retain keeps
//! the PVC labelled back to the cache; Delete removes it, never while a live OIMService uses it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Container, EmptyDirVolumeSource, EnvVar, LocalObjectReference, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeClaimVolumeSource, Pod, PodSecurityContext, PodSpec, PodTemplateSpec, ResourceRequirements,
    SecurityContext, Toleration, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PropagationPolicy};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::{Resource, ResourceExt};
use serde_json::json;
use sha2::{Digest, Sha256};
use tracing::info;

use crate::api::{
    CacheState, CachedProfile, OIMCache, OIMCacheSpec, OIMCacheStatus, OIMService, RetentionPolicy, VolumeAccessMode,
};
use crate::controller::apply::apply;
use crate::controller::service::{Context, Error, publish_for};
use crate::controller::source::SourceError;
use crate::controller::status::{Cond, conditions, differs_but_times};
use crate::hardware::inventory::LABEL_PRODUCT;
use crate::profile::catalog::ProfileSummary;
use crate::profile::estimate;
use crate::profile::select::{Group, NodeView, Request, groups, select};
use crate::render::{FIELD_MANAGER, Platform, with_kind};

/// Keeps the cache until its retention policy has been carried out.
pub const FINALIZER: &str = "oim.opea.dev/cache-retention";
/// On a cache PVC: the hash of the source it holds; a new cache adopts the PVC only on a match.
pub const SOURCE_HASH: &str = "oim.opea.dev/cache-source-hash";
/// On a cache PVC: the cache it belongs (or belonged) to.
pub const CACHE_LABEL: &str = "oim.opea.dev/cache";
/// On a cache PVC: the weights known complete in it (JSON list), so adoption needs no new Job.
pub const COMPLETE_ANNOTATION: &str = "oim.opea.dev/cache-complete";
const JOB_HASH: &str = "oim.opea.dev/job-hash";
const MOUNT: &str = "/cache";
const PULLER_UID: i64 = 65532;

/// The Hugging Face repository a cache downloads: `namespace/modelName` or `modelName`.
pub fn model_of(spec: &OIMCacheSpec) -> String {
    let hf = &spec.source.hf;
    match hf.namespace.as_deref().filter(|n| !n.is_empty()) {
        Some(ns) => format!("{ns}/{}", hf.model_name),
        None => hf.model_name.clone(),
    }
}

fn short_hash(v: &serde_json::Value) -> String {
    Sha256::digest(v.to_string().as_bytes()).iter().take(12).map(|b| format!("{b:02x}")).collect()
}

/// What the weights in a PVC depend on: hub, repository, revision and file patterns — not
/// credentials or the downloader image.
pub fn source_hash(spec: &OIMCacheSpec) -> String {
    let hf = &spec.source.hf;
    short_hash(&json!([
        hf.endpoint.as_deref().unwrap_or("https://huggingface.co"),
        model_of(spec),
        hf.revision,
        hf.allow_patterns,
        hf.ignore_patterns
    ]))
}

/// The cache's PVC name.
pub fn pvc_name(cache: &OIMCache) -> String {
    cache.spec.storage.pvc.name.clone().unwrap_or_else(|| format!("{}-weights", cache.name_any()))
}

/// One weights repository to download, for the profiles that load it.
#[derive(Debug, Clone, PartialEq)]
pub struct Wanted {
    /// Profiles loading these weights.
    pub profiles: Vec<String>,
    /// Weights repository.
    pub weights: String,
    /// Revision to download (a commit when the profile pins one).
    pub revision: String,
    /// Precision, for the size estimate.
    pub precision: crate::api::Precision,
}

/// What the PVC annotation records per downloaded repository: asked revision and its commit.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Done {
    weights: String,
    revision: String,
    commit: String,
}

fn is_commit(rev: &str) -> bool {
    rev.len() == 40 && rev.chars().all(|c| c.is_ascii_hexdigit())
}

/// The request a cache's selector makes: every device counts as free (the cache is for later)
/// and the cache's node selector and tolerations narrow the nodes.
fn request_for(cache: &OIMCache) -> Request {
    let p = cache.spec.profile.clone().unwrap_or_default();
    let mut req = Request::from_selector(model_of(&cache.spec), &p, 1);
    req.node_selector = cache.spec.node_selector.clone().unwrap_or_default();
    req.tolerations = cache.spec.tolerations.clone().unwrap_or_default();
    req
}

/// For each node group present, the profile the selector picks there; their weights, deduplicated.
/// Returns the wanted weights and the group the Job runs on (the first one's), or why nothing fits.
pub fn plan(
    cache: &OIMCache,
    profiles: &[ProfileSummary],
    nodes: &[NodeView],
    engines: &crate::profile::engines::Engines,
) -> Result<(Vec<Wanted>, Group), String> {
    let req = request_for(cache);
    let (present, _) = groups(nodes, &[], &req);
    let mut wanted: Vec<Wanted> = vec![];
    let mut first_group = None;
    let mut reasons = vec![];
    for g in &present {
        let mut r = req.clone();
        r.vendor = Some(g.vendor);
        r.product = Some(g.product.clone());
        let s = select(&r, profiles, nodes, &[], engines);
        let Some(sel) = s.selected else {
            reasons.extend(s.rejected.first().map(|x| format!("{}: {}", x.name, x.reason)));
            continue;
        };
        let revision = cache
            .spec
            .source
            .hf
            .revision
            .clone()
            .or_else(|| sel.profile.weights_revision.clone())
            .unwrap_or_else(|| "main".into());
        let weights = sel.profile.weights.clone();
        first_group.get_or_insert(sel.group.clone());
        match wanted.iter_mut().find(|w| w.weights == weights && w.revision == revision) {
            Some(w) => w.profiles.push(sel.profile.name.clone()),
            None => wanted.push(Wanted {
                profiles: vec![sel.profile.name.clone()],
                weights,
                revision,
                precision: sel.profile.precision,
            }),
        }
    }
    match first_group {
        Some(g) => Ok((wanted, g)),
        None => Err(format!(
            "no profile for {} fits the {} node group(s) present{}",
            req.model,
            present.len(),
            reasons.first().map(|r| format!("; {r}")).unwrap_or_default()
        )),
    }
}

/// The PVC size: the spec's, else the estimated weight bytes plus 20% and 5 GiB of headroom,
/// rounded up to GiB; None when the model is not in the estimator's table.
pub fn size_for(spec: &OIMCacheSpec, wanted: &[Wanted]) -> Option<String> {
    if let Some(s) = &spec.storage.pvc.size {
        return Some(s.clone());
    }
    let mut bytes = 0.0;
    for w in wanted {
        let arch = estimate::arch(&w.weights).or_else(|| estimate::arch(&model_of(spec)))?;
        bytes += arch.weight_bytes(w.precision);
    }
    let gib = (bytes * 1.2 / (1u64 << 30) as f64).ceil() as u64 + 5;
    Some(format!("{gib}Gi"))
}

fn labels(cache: &OIMCache) -> BTreeMap<String, String> {
    [
        ("app.kubernetes.io/name", "oim-cache"),
        ("app.kubernetes.io/instance", cache.name_any().as_str()),
        ("app.kubernetes.io/component", "model-cache"),
        ("app.kubernetes.io/managed-by", FIELD_MANAGER),
        ("app.kubernetes.io/part-of", "oim-operator"),
        (CACHE_LABEL, cache.name_any().as_str()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// The cache PVC: labelled back to the cache, annotated with the source hash, never owned (the
/// finalizer carries out the retention policy, so the garbage collector cannot take weights).
pub fn build_pvc(cache: &OIMCache, size: &str) -> PersistentVolumeClaim {
    let pvc = &cache.spec.storage.pvc;
    let mode = pvc.volume_access_mode.unwrap_or_default();
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(pvc_name(cache)),
            namespace: cache.namespace(),
            labels: Some(labels(cache)),
            annotations: Some(
                [
                    (SOURCE_HASH.to_string(), source_hash(&cache.spec)),
                    (
                        crate::render::RETENTION_ANNOTATION.to_string(),
                        crate::profile::oci::enum_str(&cache.spec.retention_policy.unwrap_or_default()),
                    ),
                ]
                .into(),
            ),
            ..Default::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec![crate::profile::oci::enum_str(&mode)]),
            storage_class_name: pvc.storage_class.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some([("storage".to_string(), Quantity(size.to_string()))].into()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn owner(cache: &OIMCache) -> Option<OwnerReference> {
    cache.controller_owner_ref(&())
}

fn env(name: &str, value: &str) -> EnvVar {
    EnvVar { name: name.into(), value: Some(value.into()), ..Default::default() }
}

/// The download Job: one `oim download` per weights repository (init containers run them in
/// order), on the selected group's nodes without an accelerator request, hardened, with bounded
/// retries and the cache's token, proxy and env settings.
pub fn build_job(cache: &OIMCache, wanted: &[Wanted], group: &Group, image: &str, platform: Platform) -> Job {
    let hf = &cache.spec.source.hf;
    let mut envs = vec![env("HOME", "/tmp"), env("OIM_TERMINATION_LOG", "/dev/termination-log")];
    if let Some(e) = &hf.endpoint {
        envs.push(env("HF_ENDPOINT", e));
    }
    if let Some(secret) = &hf.auth_secret {
        envs.push(crate::render::token_env(secret));
    }
    envs.extend(cache.spec.proxy.as_ref().map(crate::render::proxy_env).unwrap_or_default());
    for e in cache.spec.env.iter().flatten() {
        envs.retain(|x| x.name != e.name);
        envs.push(e.clone());
    }
    let r = cache.spec.resources.clone().unwrap_or_default();
    let cpu = Quantity(r.cpu.unwrap_or_else(|| "1".into()));
    let memory = Quantity(r.memory.unwrap_or_else(|| "1Gi".into()));
    let resources = ResourceRequirements {
        requests: Some([("cpu".to_string(), cpu.clone()), ("memory".to_string(), memory.clone())].into()),
        limits: Some([("cpu".to_string(), cpu), ("memory".to_string(), memory)].into()),
        ..Default::default()
    };
    let container = |i: usize, w: &Wanted| {
        let mut args = vec!["download".into(), "--repo".into(), w.weights.clone(), "--revision".into()];
        args.extend([w.revision.clone(), "--dest".into(), MOUNT.into()]);
        for p in hf.allow_patterns.iter().flatten() {
            args.extend(["--include".into(), p.clone()]);
        }
        for p in hf.ignore_patterns.iter().flatten() {
            args.extend(["--exclude".into(), p.clone()]);
        }
        Container {
            name: format!("download-{i}"),
            image: Some(image.into()),
            args: Some(args),
            env: Some(envs.clone()),
            resources: Some(resources.clone()),
            volume_mounts: Some(vec![
                VolumeMount { name: "weights".into(), mount_path: MOUNT.into(), ..Default::default() },
                VolumeMount { name: "tmp".into(), mount_path: "/tmp".into(), ..Default::default() },
            ]),
            security_context: Some(SecurityContext {
                allow_privilege_escalation: Some(false),
                read_only_root_filesystem: Some(true),
                capabilities: Some(k8s_openapi::api::core::v1::Capabilities {
                    drop: Some(vec!["ALL".into()]),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            termination_message_policy: Some("FallbackToLogsOnError".into()),
            ..Default::default()
        }
    };
    let mut containers: Vec<Container> = wanted.iter().enumerate().map(|(i, w)| container(i, w)).collect();
    let main = containers.pop().unwrap_or_else(|| container(0, &wanted[0]));
    let mut node_selector = BTreeMap::new();
    if !group.resource_name.is_empty() {
        node_selector.insert(LABEL_PRODUCT.to_string(), group.product.clone());
    }
    node_selector.extend(cache.spec.node_selector.clone().unwrap_or_default());
    let mut tolerations: Vec<Toleration> = vec![];
    if !group.resource_name.is_empty() {
        tolerations.push(Toleration {
            key: Some(group.resource_name.clone()),
            operator: Some("Exists".into()),
            effect: Some("NoSchedule".into()),
            ..Default::default()
        });
    }
    tolerations.extend(cache.spec.tolerations.clone().unwrap_or_default());
    let ids = platform == Platform::Kubernetes;
    let spec = PodSpec {
        restart_policy: Some("Never".into()),
        enable_service_links: Some(false),
        automount_service_account_token: Some(false),
        init_containers: Some(containers).filter(|c| !c.is_empty()),
        containers: vec![main],
        node_selector: Some(node_selector),
        tolerations: Some(tolerations),
        image_pull_secrets: hf.pull_secret.clone().map(|n| vec![LocalObjectReference { name: n }]),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: ids.then_some(PULLER_UID),
            run_as_group: ids.then_some(PULLER_UID),
            fs_group: ids.then_some(PULLER_UID),
            seccomp_profile: Some(k8s_openapi::api::core::v1::SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        volumes: Some(vec![
            Volume {
                name: "weights".into(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: pvc_name(cache),
                    read_only: Some(false),
                }),
                ..Default::default()
            },
            Volume { name: "tmp".into(), empty_dir: Some(EmptyDirVolumeSource::default()), ..Default::default() },
        ]),
        ..Default::default()
    };
    let mut meta_labels = labels(cache);
    let job_hash = short_hash(&serde_json::to_value(&spec).unwrap_or_default());
    meta_labels.insert(JOB_HASH.into(), job_hash);
    Job {
        metadata: ObjectMeta {
            name: Some(format!("{}-download", cache.name_any())),
            namespace: cache.namespace(),
            labels: Some(meta_labels.clone()),
            owner_references: owner(cache).map(|o| vec![o]),
            ..Default::default()
        },
        spec: Some(JobSpec {
            backoff_limit: Some(2),
            active_deadline_seconds: Some(24 * 3600),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(labels(cache)), ..Default::default() }),
                spec: Some(spec),
            },
            ..Default::default()
        }),
        status: None,
    }
}

/// Why a Job's pods failed or wait, from their container states: image pulls, auth errors in
/// the downloader's message, OOM kills.
fn pod_reasons(pods: &[Pod]) -> Vec<String> {
    let mut out = vec![];
    for p in pods {
        let s = p.status.as_ref();
        let all = s.and_then(|s| s.init_container_statuses.clone()).into_iter().flatten();
        for c in all.chain(s.and_then(|s| s.container_statuses.clone()).into_iter().flatten()) {
            let st = c.state.unwrap_or_default();
            if let Some(w) = st.waiting.filter(|w| w.reason.as_deref().is_some_and(|r| r != "PodInitializing")) {
                out.push(format!("{}: {}", w.reason.unwrap_or_default(), w.message.unwrap_or_default()));
            }
            if let Some(t) = st.terminated.filter(|t| t.exit_code != 0) {
                let msg = t.message.unwrap_or_default();
                out.push(format!("{} (exit {}): {}", t.reason.unwrap_or_default(), t.exit_code, msg.trim()));
            }
        }
    }
    out.dedup();
    out
}

/// Whether a live OIMService (not being deleted) mounts this cache.
async fn users(ctx: &Context, cache: &OIMCache) -> Result<Vec<String>, Error> {
    let api: Api<OIMService> = Api::namespaced(ctx.client.clone(), &cache.namespace().unwrap_or_default());
    let name = cache.name_any();
    Ok(api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|s| s.metadata.deletion_timestamp.is_none())
        .filter(|s| s.spec.storage.as_ref().and_then(|x| x.oim_cache.as_ref()).is_some_and(|c| c.name == name))
        .map(|s| s.name_any())
        .collect())
}

/// Reconciles one OIMCache, counted in the metrics by outcome.
pub async fn reconcile(cache: Arc<OIMCache>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    let api: Api<OIMCache> = Api::namespaced(ctx.client.clone(), &cache.namespace().unwrap_or_default());
    let result = finalizer(&api, FINALIZER, cache, |event| async {
        match event {
            Finalizer::Apply(c) => apply_cache(c, ctx.clone()).await,
            Finalizer::Cleanup(c) => cleanup(c, ctx.clone()).await,
        }
    })
    .await
    .map_err(|e| match e {
        kube::runtime::finalizer::Error::ApplyFailed(e) | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
        other => Error::Finalizer(other.to_string()),
    });
    let outcome = result.as_ref().err().map_or("ok", Error::label);
    ctx.metrics.reconciled("oimcache", outcome, started.elapsed().as_secs_f64());
    result
}

struct Report {
    state: CacheState,
    conds: Vec<(&'static str, bool, &'static str, String)>,
    profiles: Vec<CachedProfile>,
    size: Option<String>,
    start: Option<Time>,
    completion: Option<Time>,
}

async fn apply_cache(cache: Arc<OIMCache>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = cache.namespace().unwrap_or_default();
    let name = cache.name_any();
    if !tokio::time::timeout(Duration::from_secs(30), ctx.nodes.wait_until_ready()).await.is_ok_and(|r| r.is_ok()) {
        return Ok(Action::requeue(Duration::from_secs(2)));
    }
    let source = cache.spec.profile.as_ref().and_then(|p| p.source.as_ref());
    let catalog = match ctx.sources.for_service(&ctx.client, &ns, source).await {
        Ok(c) => c,
        Err(SourceError::Kube(e)) => return Err(e.into()),
        Err(e) => return pending(&ctx, &cache, CacheState::Failed, "ProfileSourceRefused", e.to_string()).await,
    };
    let model = model_of(&cache.spec);
    let profiles = match catalog.list(&model).await {
        Ok(p) => p,
        Err(e) => return pending(&ctx, &cache, CacheState::Pending, "RegistryUnavailable", e.to_string()).await,
    };
    let nodes: Vec<NodeView> = ctx.nodes.state().iter().filter_map(|n| NodeView::from_node(n)).collect();
    let (wanted, group) = match plan(&cache, &profiles, &nodes, &ctx.engines) {
        Ok(x) => x,
        Err(message) => return pending(&ctx, &cache, CacheState::Pending, "NoFeasibleProfile", message).await,
    };

    // The PVC: adopt ours (same source), refuse someone else's, create it when asked.
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    let pvc = pvc_name(&cache);
    let hash = source_hash(&cache.spec);
    let create = cache.spec.storage.pvc.create.unwrap_or(true);
    let live = pvcs.get_opt(&pvc).await?;
    let live_hash = live.as_ref().and_then(|p| p.annotations().get(SOURCE_HASH).cloned());
    match (&live, live_hash) {
        (Some(_), Some(h)) if h != hash => {
            let message = format!(
                "PVC {pvc} holds weights of another source (cache-source-hash {h}, this cache's is {hash}); delete that PVC, or set spec.storage.pvc.name to another name"
            );
            return pending(&ctx, &cache, CacheState::Failed, "PVCConflict", message).await;
        }
        (Some(_), None) if create => {
            let message = format!(
                "PVC {pvc} exists and was not made by an OIMCache; set spec.storage.pvc.create: false to download into it, or choose another spec.storage.pvc.name"
            );
            return pending(&ctx, &cache, CacheState::Failed, "PVCConflict", message).await;
        }
        (None, _) if !create => {
            let message = format!("PVC {pvc} does not exist; create it or set spec.storage.pvc.create: true");
            return pending(&ctx, &cache, CacheState::Pending, "PVCNotFound", message).await;
        }
        (None, _) => {
            let Some(size) = size_for(&cache.spec, &wanted) else {
                let message = format!(
                    "the weight size of {model} is unknown to the estimator; set spec.storage.pvc.size (e.g. 200Gi)"
                );
                return pending(&ctx, &cache, CacheState::Pending, "SizeRequired", message).await;
            };
            apply(&ctx.client, &ns, with_kind(&build_pvc(&cache, &size)), &ctx.metrics.writes).await?;
            publish_for(&ctx, &cache.object_ref(&()), EventType::Normal, "PVCCreated", &format!("PVC {pvc} ({size})"))
                .await;
            // A Job that filled an earlier PVC of this name says nothing about this empty one.
            let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
            let job_name = format!("{name}-download");
            if jobs.get_opt(&job_name).await?.is_some() {
                let background =
                    DeleteParams { propagation_policy: Some(PropagationPolicy::Background), ..Default::default() };
                jobs.delete(&job_name, &background).await?;
                ctx.metrics.writes.add();
                return Ok(Action::requeue(Duration::from_secs(2)));
            }
        }
        (Some(_), _) => {
            // Ours from an earlier cache of the same source (or a user's PVC): label it to this one.
            if live.as_ref().and_then(|p| p.labels().get(CACHE_LABEL)) != Some(&name) {
                let patch = json!({"metadata": {"labels": {CACHE_LABEL: name}}});
                pvcs.patch(&pvc, &PatchParams::default(), &Patch::Merge(&patch)).await?;
                ctx.metrics.writes.add();
                publish_for(&ctx, &cache.object_ref(&()), EventType::Normal, "PVCAdopted", &format!("PVC {pvc}")).await;
            }
        }
    }
    let live = pvcs.get_opt(&pvc).await?;
    let size = live
        .as_ref()
        .and_then(|p| p.status.as_ref()?.capacity.as_ref()?.get("storage").cloned())
        .or_else(|| live.as_ref()?.spec.as_ref()?.resources.as_ref()?.requests.as_ref()?.get("storage").cloned())
        .map(|q| q.0);

    let paths = |commits: &BTreeMap<String, String>| -> Vec<CachedProfile> {
        wanted
            .iter()
            .flat_map(|w| {
                let commit = commits.get(&w.weights).cloned().unwrap_or_else(|| w.revision.clone());
                w.profiles.iter().map(move |p| CachedProfile {
                    name: p.clone(),
                    weights: w.weights.clone(),
                    weights_revision: commit.clone(),
                    path: format!("/{}/{commit}", w.weights),
                })
            })
            .collect()
    };
    // Complete already (an adopted PVC): no Job.
    let complete: Vec<Done> = live
        .as_ref()
        .and_then(|p| p.annotations().get(COMPLETE_ANNOTATION).and_then(|a| serde_json::from_str(a).ok()))
        .unwrap_or_default();
    let covered = |w: &Wanted| complete.iter().any(|c| c.weights == w.weights && c.revision == w.revision);
    if wanted.iter().all(covered) {
        let commits = complete.iter().map(|d| (d.weights.clone(), d.commit.clone())).collect();
        let profiles = paths(&commits);
        let report = Report {
            state: CacheState::Ready,
            conds: vec![("Ready", true, "Ready", format!("weights of {} profile(s) in PVC {pvc}", profiles.len()))],
            profiles,
            size,
            start: cache.status.as_ref().and_then(|s| s.start_time.clone()),
            completion: cache.status.as_ref().and_then(|s| s.completion_time.clone()),
        };
        return finish(&ctx, &cache, &pvc, report, None).await;
    }

    // The download Job.
    let job = build_job(&cache, &wanted, &group, &ctx.puller_image(&cache), ctx.platform);
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let job_name = job.metadata.name.clone().unwrap_or_default();
    let want_hash = job.metadata.labels.as_ref().and_then(|l| l.get(JOB_HASH)).cloned();
    let old = jobs.get_opt(&job_name).await?;
    if old.as_ref().is_some_and(|j| j.metadata.deletion_timestamp.is_some()) {
        return Ok(Action::requeue(Duration::from_secs(2))); // a replaced Job is still going
    }
    if let Some(old) = old
        && old.labels().get(JOB_HASH) != want_hash.as_ref()
    {
        // A Job's pod template is immutable: replace it when what it downloads changed.
        jobs.delete(
            &job_name,
            &DeleteParams { propagation_policy: Some(PropagationPolicy::Foreground), ..Default::default() },
        )
        .await?;
        ctx.metrics.writes.add();
        return Ok(Action::requeue(Duration::from_secs(2)));
    }
    if apply(&ctx.client, &ns, with_kind(&job), &ctx.metrics.writes).await? {
        publish_for(&ctx, &cache.object_ref(&()), EventType::Normal, "DownloadStarted", &format!("Job {job_name}"))
            .await;
    }
    let live_job = jobs.get_opt(&job_name).await?;
    let status = live_job.as_ref().and_then(|j| j.status.clone()).unwrap_or_default();
    let pods: Vec<Pod> = Api::<Pod>::namespaced(ctx.client.clone(), &ns)
        .list(&ListParams::default().labels(&format!("job-name={job_name}")))
        .await?
        .items;
    let job_conds = status.conditions.clone().unwrap_or_default();
    let failed = job_conds.iter().find(|c| c.type_ == "Failed" && c.status == "True");
    let succeeded = status.succeeded.unwrap_or(0) > 0;
    let reasons = pod_reasons(&pods);
    let mut done = None;
    let report = if succeeded {
        let reported = commits_from(&pods);
        let commits: BTreeMap<String, String> = wanted
            .iter()
            .map(|w| {
                let commit = reported.get(&w.weights).cloned().unwrap_or_else(|| {
                    if !is_commit(&w.revision) {
                        tracing::warn!(weights = %w.weights, revision = %w.revision, "the downloader reported no commit; the path uses the revision");
                    }
                    w.revision.clone()
                });
                (w.weights.clone(), commit)
            })
            .collect();
        done = Some(
            wanted
                .iter()
                .map(|w| Done {
                    weights: w.weights.clone(),
                    revision: w.revision.clone(),
                    commit: commits[&w.weights].clone(),
                })
                .collect::<Vec<_>>(),
        );
        let profiles = paths(&commits);
        Report {
            state: CacheState::Ready,
            conds: vec![("Ready", true, "Ready", format!("weights of {} profile(s) in PVC {pvc}", profiles.len()))],
            profiles,
            size,
            start: status.start_time.clone(),
            completion: status.completion_time.clone(),
        }
    } else if let Some(f) = failed {
        let why = reasons.first().cloned().unwrap_or_else(|| f.message.clone().unwrap_or_default());
        let message =
            format!("download Job {job_name} failed ({}): {why}", f.reason.clone().unwrap_or_else(|| "Failed".into()));
        Report {
            state: CacheState::Failed,
            conds: vec![("Ready", false, "DownloadFailed", message)],
            profiles: vec![],
            size,
            start: status.start_time.clone(),
            completion: None,
        }
    } else {
        let detail = reasons.first().map(|r| format!("; last problem: {r}")).unwrap_or_default();
        let names: Vec<String> = wanted.iter().map(|w| format!("{}@{}", w.weights, w.revision)).collect();
        Report {
            state: CacheState::InProgress,
            conds: vec![(
                "Ready",
                false,
                "Downloading",
                format!("Job {job_name} downloads {}{detail}", names.join(", ")),
            )],
            profiles: vec![],
            size,
            start: status.start_time.clone(),
            completion: None,
        }
    };
    finish(&ctx, &cache, &pvc, report, done).await
}

/// Commits the downloader reported in its termination messages (`{"repo", "commit"}`).
fn commits_from(pods: &[Pod]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for p in pods {
        let s = p.status.as_ref();
        let all = s.and_then(|s| s.init_container_statuses.clone()).into_iter().flatten();
        for c in all.chain(s.and_then(|s| s.container_statuses.clone()).into_iter().flatten()) {
            let msg = c.state.and_then(|s| s.terminated).and_then(|t| t.message).unwrap_or_default();
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&msg)
                && let (Some(repo), Some(commit)) = (v["repo"].as_str(), v["commit"].as_str())
            {
                out.insert(repo.to_string(), commit.to_string());
            }
        }
    }
    out
}

/// Writes the status; on success also records the complete weights on the PVC.
async fn finish(
    ctx: &Context,
    cache: &OIMCache,
    pvc: &str,
    report: Report,
    complete: Option<Vec<Done>>,
) -> Result<Action, Error> {
    let ns = cache.namespace().unwrap_or_default();
    if let Some(done) = complete {
        let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
        let value = serde_json::to_string(&done).unwrap_or_default();
        let live = pvcs.get_opt(pvc).await?;
        if live.as_ref().and_then(|p| p.annotations().get(COMPLETE_ANNOTATION)) != Some(&value) {
            let patch = json!({"metadata": {"annotations": {COMPLETE_ANNOTATION: value}}});
            pvcs.patch(pvc, &PatchParams::default(), &Patch::Merge(&patch)).await?;
            ctx.metrics.writes.add();
        }
    }
    let ready = report.state == CacheState::Ready;
    let failed = report.state == CacheState::Failed;
    let wanted: Vec<Cond> = report.conds.iter().map(|(t, ok, r, m)| Cond(t, *ok, r, m.clone())).collect();
    let old = cache.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or(&[]);
    let status = OIMCacheStatus {
        state: Some(report.state),
        pvc: Some(pvc.to_string()),
        size: report.size,
        profiles: report.profiles,
        conditions: conditions(old, &wanted, cache.metadata.generation),
        observed_generation: cache.metadata.generation,
        start_time: report.start,
        completion_time: report.completion,
    };
    let changed = write_status(ctx, cache, status).await?;
    if changed && (ready || failed) {
        let (t, reason) = if ready { (EventType::Normal, "Ready") } else { (EventType::Warning, "DownloadFailed") };
        let msg = report.conds.first().map(|c| c.3.clone()).unwrap_or_default();
        publish_for(ctx, &cache.object_ref(&()), t, reason, &msg).await;
    }
    Ok(match report.state {
        CacheState::Ready | CacheState::Failed => Action::requeue(Duration::from_secs(600)),
        _ => Action::requeue(Duration::from_secs(10)),
    })
}

/// A cache that cannot proceed: state, reason and message; Failed waits for a spec change.
async fn pending(
    ctx: &Context,
    cache: &OIMCache,
    state: CacheState,
    reason: &'static str,
    message: String,
) -> Result<Action, Error> {
    let old = cache.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or(&[]);
    let status = OIMCacheStatus {
        state: Some(state),
        pvc: cache.status.as_ref().and_then(|s| s.pvc.clone()),
        conditions: conditions(old, &[Cond("Ready", false, reason, message.clone())], cache.metadata.generation),
        observed_generation: cache.metadata.generation,
        ..Default::default()
    };
    if write_status(ctx, cache, status).await? {
        publish_for(ctx, &cache.object_ref(&()), EventType::Warning, reason, &message).await;
    }
    Ok(match state {
        CacheState::Failed => Action::await_change(),
        _ => Action::requeue(Duration::from_secs(30)),
    })
}

/// Patches the status when it differs (ignoring condition timestamps); returns whether it wrote.
async fn write_status(ctx: &Context, cache: &OIMCache, status: OIMCacheStatus) -> Result<bool, Error> {
    if !differs_but_times(cache.status.as_ref(), &status, |s| &mut s.conditions) {
        return Ok(false);
    }
    let api: Api<OIMCache> = Api::namespaced(ctx.client.clone(), &cache.namespace().unwrap_or_default());
    let patch = json!({"apiVersion": "oim.opea.dev/v1alpha1", "kind": "OIMCache", "status": status});
    api.patch_status(&cache.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch)).await?;
    ctx.metrics.writes.add();
    Ok(true)
}

/// Carries out the retention policy before the cache goes.
async fn cleanup(cache: Arc<OIMCache>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = cache.namespace().unwrap_or_default();
    let pvc = pvc_name(&cache);
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    // Only a PVC holding this cache's source is ours to keep or delete (never one we refused).
    let hash = source_hash(&cache.spec);
    let ours = pvcs.get_opt(&pvc).await?.filter(|p| p.annotations().get(SOURCE_HASH) == Some(&hash));
    let Some(live) = ours else { return Ok(Action::await_change()) };
    if cache.spec.retention_policy.unwrap_or_default() == RetentionPolicy::Retain {
        info!(cache = %cache.name_any(), %pvc, "OIMCache deleted; PVC retained");
        publish_for(
            &ctx,
            &cache.object_ref(&()),
            EventType::Normal,
            "PVCRetained",
            &format!("PVC {pvc} is kept (retentionPolicy: Retain); a new OIMCache of the same source adopts it"),
        )
        .await;
        return Ok(Action::await_change());
    }
    let users = users(&ctx, &cache).await?;
    if !users.is_empty() {
        let message = format!(
            "PVC {pvc} is not deleted while OIMService(s) {} use it; delete them or remove their spec.storage.oimCache",
            users.join(", ")
        );
        publish_for(&ctx, &cache.object_ref(&()), EventType::Warning, "PVCInUse", &message).await;
        return Err(Error::InUse(message));
    }
    if live.metadata.deletion_timestamp.is_none() {
        pvcs.delete(&pvc, &DeleteParams::default()).await?;
        ctx.metrics.writes.add();
        info!(cache = %cache.name_any(), %pvc, "OIMCache deleted; PVC deleted (retentionPolicy: Delete)");
    }
    Ok(Action::await_change())
}

/// A service's access mode problem: a ReadWriteOnce cache PVC shared by several replicas.
pub fn rwo_shared(cache: &OIMCache, replicas: i32) -> Option<String> {
    let mode = cache.spec.storage.pvc.volume_access_mode.unwrap_or_default();
    (matches!(mode, VolumeAccessMode::ReadWriteOnce | VolumeAccessMode::ReadWriteOncePod) && replicas > 1).then(|| {
        format!(
            "OIMCache {} has a {} PVC but this service wants {replicas} replicas: pods on other nodes cannot mount it; use volumeAccessMode ReadWriteMany or ReadOnlyMany for the cache, or one replica",
            cache.name_any(),
            crate::profile::oci::enum_str(&mode)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hardware::devices;
    use crate::hardware::inventory::{AcceleratorGroup, Inventory};
    use crate::profile::engines::Engines;

    fn cache(yaml: &str) -> OIMCache {
        let mut c: OIMCache = serde_saphyr::from_str(yaml).unwrap();
        c.metadata.namespace = Some("models".into());
        c.metadata.uid = Some("0b6c5a4e-0000-4000-8000-00000000000c".into());
        c
    }

    const LLAMA70B: &str = "apiVersion: oim.opea.dev/v1alpha1\nkind: OIMCache\nmetadata: {name: llama70b}\nspec:\n  source: {hf: {namespace: meta-llama, modelName: Llama-3.1-70B-Instruct, authSecret: hf}}\n  profile: {kpi: throughput}\n";

    fn node(slug: &str, count: u32) -> NodeView {
        NodeView::offline(Inventory {
            node: format!("{slug}-0"),
            accelerators: vec![AcceleratorGroup::of(devices::by_slug(slug).unwrap(), count)],
            ..Inventory::default()
        })
    }

    fn seed() -> Vec<ProfileSummary> {
        let dir = crate::profile::catalog::DirCatalog::load(std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/profiles"
        )))
        .unwrap();
        dir.entries()
            .filter(|(_, _, p)| p.model == "meta-llama/Llama-3.1-70B-Instruct")
            .map(|(path, bytes, p)| {
                ProfileSummary::of(p, crate::profile::catalog::digest_of(bytes), path.display().to_string())
            })
            .collect()
    }

    #[test]
    fn each_hardware_group_present_gets_its_own_weights_and_nothing_else() {
        let c = cache(LLAMA70B);
        let nodes = [node("h100-sxm-80gb", 8), node("a100-sxm-40gb", 8)];
        let (wanted, group) = plan(&c, &seed(), &nodes, &Engines::builtin()).unwrap();
        let mut repos: Vec<&str> = wanted.iter().map(|w| w.weights.as_str()).collect();
        repos.sort();
        assert_eq!(repos, ["meta-llama/Llama-3.1-70B-Instruct", "neuralmagic/Meta-Llama-3.1-70B-Instruct-FP8"]);
        assert!(wanted.iter().all(|w| w.revision == "main"), "no pin, no spec revision: main");
        assert!(["h100-sxm-80gb", "a100-sxm-40gb"].contains(&group.product.as_str()));
        // H100 and MI300X load the same FP8 repository: fetched once, for both profiles.
        let (shared, _) =
            plan(&c, &seed(), &[node("h100-sxm-80gb", 8), node("mi300x", 8)], &Engines::builtin()).unwrap();
        assert_eq!(shared.len(), 1);
        assert_eq!(shared[0].profiles.len(), 2);
        // Only H100s: the BF16 variant the A100s would need is not fetched.
        let (only, _) = plan(&c, &seed(), &[node("h100-sxm-80gb", 8)], &Engines::builtin()).unwrap();
        assert_eq!(only.len(), 1);
    }

    #[test]
    fn the_size_is_the_spec_or_the_weights_plus_headroom_or_unknown() {
        let c = cache(LLAMA70B);
        let (wanted, _) = plan(&c, &seed(), &[node("h100-sxm-80gb", 8)], &Engines::builtin()).unwrap();
        let fp8 = size_for(&c.spec, &wanted).unwrap();
        let gib: u64 = fp8.trim_end_matches("Gi").parse().unwrap();
        assert!((70..=100).contains(&gib), "70B at fp8 is ~66 GiB of weights plus headroom: {fp8}");
        let mut sized = c.clone();
        sized.spec.storage.pvc.size = Some("500Gi".into());
        assert_eq!(size_for(&sized.spec, &wanted).as_deref(), Some("500Gi"));
        let unknown = Wanted {
            profiles: vec![],
            weights: "acme/unknown".into(),
            revision: "main".into(),
            precision: crate::api::Precision::Bf16,
        };
        let mut other = c.clone();
        other.spec.source.hf.namespace = Some("acme".into());
        other.spec.source.hf.model_name = "unknown".into();
        assert_eq!(size_for(&other.spec, &[unknown]), None);
    }

    #[test]
    fn the_job_downloads_each_weights_repo_on_the_group_without_a_gpu_request_and_hardened() {
        let mut c = cache(LLAMA70B);
        c.spec.source.hf.allow_patterns = Some(vec!["*.safetensors".into()]);
        c.spec.proxy = Some(serde_saphyr::from_str("{httpsProxy: 'http://proxy:3128'}").unwrap());
        let (wanted, group) = plan(&c, &seed(), &[node("h100-sxm-80gb", 8)], &Engines::builtin()).unwrap();
        let job = build_job(&c, &wanted, &group, "docker.io/opea/oim:0.1.0", Platform::Kubernetes);
        assert_eq!(job.metadata.owner_references.as_ref().unwrap()[0].kind, "OIMCache");
        let spec = job.spec.unwrap();
        assert_eq!(spec.backoff_limit, Some(2));
        let pod = spec.template.spec.unwrap();
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
        assert_eq!(pod.node_selector.unwrap()[LABEL_PRODUCT], "h100-sxm-80gb");
        let ctr = &pod.containers[0];
        let args = ctr.args.clone().unwrap();
        assert_eq!(
            args[..7],
            [
                "download",
                "--repo",
                "neuralmagic/Meta-Llama-3.1-70B-Instruct-FP8",
                "--revision",
                "main",
                "--dest",
                "/cache"
            ]
        );
        assert!(args.windows(2).any(|w| w == ["--include", "*.safetensors"]));
        let env = ctr.env.clone().unwrap();
        assert!(env.iter().any(|e| e.name == "https_proxy" && e.value.as_deref() == Some("http://proxy:3128")));
        let token = env.iter().find(|e| e.name == "HF_TOKEN").unwrap();
        assert_eq!(token.value_from.as_ref().unwrap().secret_key_ref.as_ref().unwrap().name, "hf");
        assert!(ctr.resources.as_ref().unwrap().limits.as_ref().unwrap().keys().all(|k| k == "cpu" || k == "memory"));
        let sc = ctr.security_context.as_ref().unwrap();
        assert_eq!((sc.read_only_root_filesystem, sc.allow_privilege_escalation), (Some(true), Some(false)));
        assert_eq!(pod.security_context.as_ref().unwrap().fs_group, Some(PULLER_UID), "the PVC is writable");
        let openshift = build_job(&c, &wanted, &group, "img", Platform::Openshift).spec.unwrap().template.spec.unwrap();
        assert_eq!(openshift.security_context.unwrap().run_as_user, None, "restricted-v2 assigns the uid");
    }

    #[test]
    fn the_pvc_is_never_owned_and_carries_the_source_hash() {
        let c = cache(LLAMA70B);
        let pvc = build_pvc(&c, "90Gi");
        assert!(pvc.metadata.owner_references.is_none());
        assert_eq!(pvc.metadata.annotations.unwrap()[SOURCE_HASH], source_hash(&c.spec));
        let mut other = c.clone();
        other.spec.source.hf.revision = Some("refs/pr/1".into());
        assert_ne!(source_hash(&other.spec), source_hash(&c.spec), "another revision is another source");
        other = c.clone();
        other.spec.source.hf.auth_secret = Some("another-token".into());
        assert_eq!(source_hash(&other.spec), source_hash(&c.spec), "credentials are not the source");
    }

    #[test]
    fn a_read_write_once_cache_shared_by_replicas_is_reported() {
        let c = cache(LLAMA70B);
        assert_eq!(rwo_shared(&c, 1), None);
        assert!(rwo_shared(&c, 2).unwrap().contains("ReadWriteMany"));
        let mut rwx = c.clone();
        rwx.spec.storage.pvc.volume_access_mode = Some(VolumeAccessMode::ReadWriteMany);
        assert_eq!(rwo_shared(&rwx, 3), None);
    }
}
