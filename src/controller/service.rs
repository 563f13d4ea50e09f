//! The OIMService reconciler: dereference (nodes, pods, the stored profile) -> select (sticky) ->
//! build (pure renderers) -> apply (server-side, only on change) -> status and events.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Service};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::Store;
use kube::{Client, Resource, ResourceExt};
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use crate::api::{
    AcceleratorStatus, CacheState, CachedProfile, ModelStatus, OIMCache, OIMService, OIMServiceStatus, RejectedProfile,
    SelectedProfile, UpdatePolicy,
};
use crate::cli::render::request_for;
use crate::controller::apply::apply_known;
use crate::controller::children::ChildCaches;
use crate::controller::metrics::Metrics;
use crate::controller::source::{SourceError, Sources};
use crate::controller::status::{Assigned, Cond, conditions, differs, external_endpoint, state};
use crate::profile::Profile;
use crate::profile::catalog::Catalog;
use crate::profile::engines::Engines;
use crate::profile::oci::enum_str;
use crate::profile::select::{Group, NodeView, PodUse, select};
use crate::render::{Capabilities, FIELD_MANAGER, Input, Platform, Weights, render};

/// Annotation on the profile ConfigMap: what the selection was made for.
pub const SELECTION_KEY: &str = "oim.opea.dev/selection-key";

/// Why a reconcile failed; doubles as a metric label.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or could not be reached.
    #[error("kubernetes: {0}")]
    Kube(#[from] kube::Error),
    /// The catalog could not be read.
    #[error("profiles: {0}")]
    Catalog(String),
    /// Adding or removing a finalizer failed.
    #[error("finalizer: {0}")]
    Finalizer(String),
    /// A cache PVC to delete is still mounted by services; retried.
    #[error("{0}")]
    InUse(String),
}

impl Error {
    /// The metric label of this error.
    pub fn label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Catalog(_) => "catalog",
            Error::Finalizer(_) => "finalizer",
            Error::InUse(_) => "in_use",
        }
    }
}

/// What every reconcile shares.
pub struct Context {
    /// The client.
    pub client: Client,
    /// Where published profiles come from: the default catalog and per-service sources.
    pub sources: Sources,
    /// Vendor engines.
    pub engines: Engines,
    /// Nodes, watched.
    pub nodes: Store<Node>,
    /// Pods, watched (free-device accounting).
    pub pods: Store<Pod>,
    /// Event recorder.
    pub recorder: Recorder,
    /// Writes, reconciles and their durations.
    pub metrics: Arc<Metrics>,
    /// Platform.
    pub platform: Platform,
    /// Optional APIs present (Route, ServiceMonitor).
    pub capabilities: Capabilities,
    /// The operator's own image: the default downloader of OIMCache Jobs.
    pub own_image: String,
    /// Metadata of our children, to skip unchanged applies without a GET.
    pub children: ChildCaches,
}

impl Context {
    /// The image a cache's download Job runs: its `modelPuller`, else the operator's own.
    pub fn puller_image(&self, cache: &crate::api::OIMCache) -> String {
        cache.spec.source.hf.model_puller.clone().unwrap_or_else(|| self.own_image.clone())
    }
}

/// The hash of what selection depends on: model, profile selector, placement and replicas.
fn selection_key(svc: &OIMService) -> String {
    let s = &svc.spec;
    let replicas = match s.scale.as_ref().filter(|x| x.enabled == Some(true)) {
        Some(x) => x.hpa.as_ref().and_then(|h| h.min_replicas).unwrap_or(1),
        None => s.replicas.unwrap_or(1),
    };
    let basis = serde_json::json!([s.model, s.profile, s.node_selector, s.tolerations, s.affinity, replicas]);
    let d = Sha256::digest(basis.to_string().as_bytes());
    d.iter().take(12).map(|b| format!("{b:02x}")).collect()
}

struct Chosen {
    profile: Profile,
    digest: String,
    source: String,
    group: Group,
    reason: String,
    generated: bool,
    rejected: Vec<RejectedProfile>,
}

/// The profile kept from an earlier reconcile, when the selection key still matches and its
/// group still exists: selection is sticky.
fn sticky(cm: &ConfigMap, key: &str, nodes: &[NodeView], pods: &[PodUse], svc: &OIMService) -> Option<Chosen> {
    let ann = cm.metadata.annotations.as_ref()?;
    if ann.get(SELECTION_KEY).map(String::as_str) != Some(key) {
        return None;
    }
    let data = cm.data.as_ref()?;
    let profile = Profile::parse(data.get("profile.yaml")?.as_bytes(), "profile ConfigMap").ok()?;
    let (groups, _) = crate::profile::select::groups(nodes, pods, &request_for(svc));
    let group = groups.into_iter().find(|g| {
        g.vendor == profile.accelerator.vendor
            && (g.product == profile.accelerator.product || profile.accelerator.product == "any")
    })?;
    Some(Chosen {
        digest: data.get("digest").cloned().unwrap_or_default(),
        source: data.get("source").cloned().unwrap_or_default(),
        reason: ann.get("oim.opea.dev/reason").cloned().unwrap_or_else(|| "kept from the earlier selection".into()),
        generated: profile.generated,
        profile,
        group,
        rejected: data.get("rejected").and_then(|r| serde_json::from_str(r).ok()).unwrap_or_default(),
    })
}

/// A status of conditions only (nothing running yet), with the state they imply.
fn conditions_only(svc: &OIMService, wanted: &[Cond]) -> OIMServiceStatus {
    let conds = conditions(
        svc.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or(&[]),
        wanted,
        svc.metadata.generation,
    );
    OIMServiceStatus {
        state: Some(state(&conds, false)),
        observed_generation: svc.metadata.generation,
        conditions: conds,
        ..Default::default()
    }
}

/// Reconciles one OIMService, counted in the metrics by outcome.
pub async fn reconcile(svc: Arc<OIMService>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    let result = reconcile_service(svc, ctx.clone()).await;
    let outcome = result.as_ref().err().map_or("ok", Error::label);
    ctx.metrics.reconciled("oimservice", outcome, started.elapsed().as_secs_f64());
    result
}

async fn reconcile_service(svc: Arc<OIMService>, ctx: Arc<Context>) -> Result<Action, Error> {
    if svc.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    // Selecting from half-synced node or pod caches would report false "nothing fits".
    let ns = svc.namespace().unwrap_or_else(|| "default".into());
    let children = ctx.children.of(&ns);
    let synced = async {
        ctx.nodes.wait_until_ready().await.is_ok()
            && ctx.pods.wait_until_ready().await.is_ok()
            && match children {
                Some(c) => c.ready().await,
                None => true,
            }
    };
    if !tokio::time::timeout(Duration::from_secs(30), synced).await.unwrap_or(false) {
        return Ok(Action::requeue(Duration::from_secs(2)));
    }
    let name = svc.name_any();
    let source = svc.spec.profile.as_ref().and_then(|p| p.source.as_ref());
    let catalog = match ctx.sources.for_service(&ctx.client, &ns, source).await {
        Ok(c) => c,
        Err(SourceError::Kube(e)) => return Err(e.into()),
        Err(e) => return source_problem(&ctx, &svc, &e).await,
    };
    // With an OIMCache, only what it holds can run: wait for it, then select among its weights.
    let cache = match svc.spec.storage.as_ref().and_then(|s| s.oim_cache.as_ref()) {
        Some(r) => match ready_cache(&ctx, &svc, &ns, &r.name).await? {
            Ok(c) => Some(c),
            Err(action) => return Ok(action),
        },
        None => None,
    };
    let held = cache.as_ref().map(|c| c.status.clone().unwrap_or_default().profiles);
    let nodes: Vec<NodeView> = ctx.nodes.state().iter().filter_map(|n| NodeView::from_node(n)).collect();
    let pods: Vec<PodUse> = ctx.pods.state().iter().filter_map(|p| PodUse::from_pod(p)).collect();
    let key = selection_key(&svc);
    let cms: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ns);
    let stored = cms.get_opt(&format!("{name}-profile")).await?;
    let mut kept = stored
        .as_ref()
        .and_then(|cm| sticky(cm, &key, &nodes, &pods, &svc))
        .filter(|c| held.as_deref().is_none_or(|h| cached_path(h, &c.profile).is_some()));
    // A re-published tag: followed with `updatePolicy: Auto`, otherwise reported.
    let update = match &kept {
        Some(c) => republished(&catalog, &svc.spec.model.name, c).await,
        None => None,
    };
    let auto = svc.spec.profile.as_ref().and_then(|p| p.update_policy) == Some(UpdatePolicy::Auto);
    let kept_name = kept.as_ref().map(|c| c.profile.name.clone()).unwrap_or_default();
    if let (Some(digest), true) = (&update, auto) {
        let note = format!("profile {kept_name} was re-published as {digest}; following it (updatePolicy: Auto)");
        publish(&ctx, &svc, EventType::Normal, "ProfileUpdated", &note).await;
        kept = None;
    }
    let chosen = match kept {
        Some(c) => Some(c),
        None => match fresh_selection(&svc, &nodes, &pods, &ctx, &catalog, held.as_deref()).await {
            Err(Error::Catalog(message)) => {
                // Nothing resolved earlier to fall back on: say so, retry soon.
                let status = conditions_only(
                    &svc,
                    &[
                        Cond("ProfileSelected", false, "RegistryUnavailable", message.clone()),
                        Cond("Degraded", true, "RegistryUnavailable", format!("{message}; retrying")),
                        Cond("Ready", false, "RegistryUnavailable", message.clone()),
                    ],
                );
                if differs(svc.status.as_ref(), &status) {
                    publish(&ctx, &svc, EventType::Warning, "RegistryUnavailable", &message).await;
                }
                patch_status(&ctx, &svc, status, false).await?;
                return Ok(Action::requeue(Duration::from_secs(30)));
            }
            other => other?,
        },
    };
    let Some(chosen) = chosen else {
        return Ok(Action::requeue(Duration::from_secs(300)));
    };

    let (weights, cache_cond, shared) = match (&cache, held.as_deref()) {
        (Some(c), Some(h)) => {
            let Some(path) = cached_path(h, &chosen.profile) else {
                return Ok(Action::requeue(Duration::from_secs(30)));
            };
            let pvc = c.status.as_ref().and_then(|s| s.pvc.clone()).unwrap_or_else(|| super::cache::pvc_name(c));
            let message = format!("weights from OIMCache {} (PVC {pvc}, {path})", c.name_any());
            let replicas = svc
                .spec
                .replicas
                .unwrap_or(1)
                .max(svc.spec.scale.as_ref().and_then(|x| x.hpa.as_ref()).map(|h| h.max_replicas).unwrap_or(0));
            (
                Weights::Cache { pvc, path },
                Cond("CacheReady", true, "Ready", message),
                super::cache::rwo_shared(c, replicas),
            )
        }
        _ => (Weights::Hub, Cond("CacheReady", true, "NotUsed", "no OIMCache is referenced".into()), None),
    };
    let input = Input {
        service: &svc,
        profile: &chosen.profile,
        digest: &chosen.digest,
        source: &chosen.source,
        group: &chosen.group,
        weights,
        platform: ctx.platform,
        capabilities: ctx.capabilities,
        engines: &ctx.engines,
        device_groups: vec![],
    };
    let rendered = match render(&input) {
        Ok(r) => r,
        Err(e) => {
            let status = OIMServiceStatus {
                conditions: conditions(
                    svc.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or(&[]),
                    &[
                        Cond("ProfileSelected", true, "Selected", chosen.reason.clone()),
                        Cond("Ready", false, "InvalidResources", e.to_string()),
                    ],
                    svc.metadata.generation,
                ),
                ..Default::default()
            };
            publish(&ctx, &svc, EventType::Warning, "InvalidResources", &e.to_string()).await;
            patch_status(&ctx, &svc, status, true).await?;
            return Ok(Action::await_change());
        }
    };
    hand_replicas_to_hpa(&ctx, &svc, &ns, &name).await?;
    for mut obj in rendered.objects() {
        if obj["kind"] == "ConfigMap" {
            obj["metadata"]["annotations"][SELECTION_KEY] = serde_json::Value::String(key.clone());
            obj["metadata"]["annotations"]["oim.opea.dev/reason"] = serde_json::Value::String(chosen.reason.clone());
            // Kept with the choice, so a sticky reconcile reports the same rejections.
            obj["data"]["rejected"] =
                serde_json::Value::String(serde_json::to_string(&chosen.rejected).unwrap_or_default());
        }
        let kind = obj["kind"].as_str().unwrap_or_default();
        let known =
            children.and_then(|c| c.applied_hash(kind, &ns, obj["metadata"]["name"].as_str().unwrap_or_default()));
        if apply_known(&ctx.client, &ns, obj.clone(), &ctx.metrics.writes, known).await? {
            info!(service = %name, kind = %obj["kind"], "applied");
        }
    }

    let deployment = Api::<Deployment>::namespaced(ctx.client.clone(), &ns).get_opt(&name).await?;
    let available = deployment.as_ref().and_then(|d| d.status.as_ref()).and_then(|s| s.available_replicas).unwrap_or(0);
    let rolled_out = deployment.as_ref().is_some_and(|d| {
        let s = d.status.clone().unwrap_or_default();
        s.observed_generation >= d.metadata.generation
            && s.updated_replicas.unwrap_or(0) >= d.spec.as_ref().and_then(|x| x.replicas).unwrap_or(1)
            && available > 0
    });
    let accel = format!(
        "{}x {}",
        chosen.profile.parallelism.tensor * chosen.profile.parallelism.pipeline,
        chosen.group.product
    );
    let old = svc.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or(&[]);
    let available_msg = if available > 0 {
        format!("{available} replica(s) available on {accel}")
    } else {
        format!("waiting for the Deployment: 0 replicas available (needs {accel} per replica)")
    };
    let conds = conditions(
        old,
        &[
            Cond(
                "ProfileSelected",
                true,
                if chosen.generated { "Generated" } else { "Selected" },
                format!("{}: {}", chosen.profile.name, chosen.reason),
            ),
            cache_cond,
            Cond(
                "Available",
                available > 0,
                if available > 0 { "MinimumReplicasAvailable" } else { "Unavailable" },
                available_msg,
            ),
            Cond(
                "Ready",
                rolled_out,
                if rolled_out { "Ready" } else { "RolloutInProgress" },
                if rolled_out { "serving".into() } else { "the rollout of this generation is not complete".into() },
            ),
            match shared {
                Some(why) => Cond("Degraded", true, "RWOSharedAcrossNodes", why),
                None => Cond("Degraded", false, "AsExpected", "no problem detected".into()),
            },
            match (&update, auto) {
                (Some(digest), false) => Cond(
                    "ProfileUpdateAvailable",
                    true,
                    "NewDigestPublished",
                    format!(
                        "{kept_name} was re-published as {digest}; this service keeps {} (updatePolicy: Pinned); set spec.profile.updatePolicy: Auto to follow it",
                        chosen.digest
                    ),
                ),
                (_, true) => Cond(
                    "ProfileUpdateAvailable",
                    false,
                    "Auto",
                    "re-published profiles are followed (updatePolicy: Auto)".into(),
                ),
                _ => Cond(
                    "ProfileUpdateAvailable",
                    false,
                    "UpToDate",
                    "the resolved profile is the published one; it is kept until model or profile change".into(),
                ),
            },
        ],
        svc.metadata.generation,
    );
    let port =
        svc.spec.expose.as_ref().and_then(|e| e.service.as_ref()).and_then(|s| s.port).unwrap_or(crate::render::PORT);
    let status = OIMServiceStatus {
        state: Some(state(&conds, false)),
        observed_generation: svc.metadata.generation,
        available_replicas: Some(available),
        accelerator: Some(accel.clone()),
        conditions: conds,
        profile: Some(SelectedProfile {
            name: chosen.profile.name.clone(),
            digest: Some(chosen.digest.clone()).filter(|d| !d.is_empty()),
            source: Some(chosen.source.clone()),
            engine: Some(format!("{} {}", chosen.profile.engine.name, chosen.profile.engine.version)),
            image: Some(chosen.profile.engine.image.clone()),
            precision: Some(enum_str(&chosen.profile.precision)),
            tensor_parallelism: i32::try_from(chosen.profile.parallelism.tensor).ok(),
            pipeline_parallelism: i32::try_from(chosen.profile.parallelism.pipeline).ok(),
            accelerator: Some(AcceleratorStatus {
                vendor: chosen.group.vendor,
                product: chosen.group.product.clone(),
                count: i32::try_from(chosen.profile.accelerator.count).unwrap_or(0),
            }),
            reason: Some(chosen.reason.clone()),
            rejected: chosen.rejected.clone(),
            generated: chosen.generated,
        }),
        resources: rendered
            .deployment
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .and_then(|p| p.containers[0].resources.clone()),
        model: Some(ModelStatus {
            name: svc.spec.model.served_name.clone().unwrap_or_else(|| svc.spec.model.name.clone()),
            cluster_endpoint: Some(format!("http://{name}.{ns}.svc:{port}")),
            external_endpoint: external_endpoint(&rendered, &assigned_address(&ctx, &rendered, &ns).await?),
        }),
    };
    patch_status(&ctx, &svc, status, false).await?;
    let revisit = ctx.sources.refresh().clamp(Duration::from_secs(1), Duration::from_secs(600));
    // The owned Deployment's status changes wake us during a rollout; the timer is a backstop.
    Ok(Action::requeue(if rolled_out { revisit } else { Duration::from_secs(60) }))
}

/// What only the cluster knows about the exposure: a LoadBalancer Service's address and a
/// Route's router-assigned host. Read only when such objects were rendered.
async fn assigned_address(ctx: &Context, rendered: &crate::render::Rendered, ns: &str) -> Result<Assigned, Error> {
    let mut out = Assigned::default();
    let name = rendered.service.metadata.name.clone().unwrap_or_default();
    if rendered.service.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("LoadBalancer")
        && let Some(live) = Api::<Service>::namespaced(ctx.client.clone(), ns).get_opt(&name).await?
    {
        let lb = live.status.and_then(|s| s.load_balancer).and_then(|l| l.ingress).unwrap_or_default();
        out.load_balancer = lb.into_iter().find_map(|i| i.hostname.or(i.ip));
    }
    if let Some(route) = rendered.route.as_ref().filter(|r| r.data["spec"]["host"].is_null()) {
        let ar = kube::discovery::ApiResource::from_gvk_with_plural(
            &kube::api::GroupVersionKind::gvk("route.openshift.io", "v1", "Route"),
            "routes",
        );
        let api: Api<kube::api::DynamicObject> = Api::namespaced_with(ctx.client.clone(), ns, &ar);
        if let Some(live) = api.get_opt(&route.name_any()).await? {
            out.route_host = live.data["status"]["ingress"][0]["host"].as_str().map(str::to_string);
        }
    }
    Ok(out)
}

/// With autoscaling on, the rendered Deployment leaves `replicas` out. Dropping a field we own
/// would reset it to 1, so first a second field manager takes over the current value: the HPA
/// then moves it from there and running replicas never drop.
async fn hand_replicas_to_hpa(ctx: &Context, svc: &OIMService, ns: &str, name: &str) -> Result<(), Error> {
    const HANDOFF: &str = "oim-operator-replicas-handoff";
    if svc.spec.scale.as_ref().and_then(|s| s.enabled) != Some(true) {
        return Ok(());
    }
    let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), ns);
    let Some(live) = api.get_opt(name).await? else { return Ok(()) };
    let we_own_replicas = live.metadata.managed_fields.iter().flatten().any(|m| {
        m.manager.as_deref() == Some(FIELD_MANAGER)
            && m.fields_v1.as_ref().is_some_and(|f| f.0.pointer("/f:spec/f:replicas").is_some())
    });
    let Some(current) = live.spec.as_ref().and_then(|s| s.replicas).filter(|_| we_own_replicas) else { return Ok(()) };
    let patch = serde_json::json!({"apiVersion": "apps/v1", "kind": "Deployment", "spec": {"replicas": current}});
    api.patch(name, &PatchParams::apply(HANDOFF), &Patch::Apply(&patch)).await?;
    ctx.metrics.writes.add();
    info!(service = %name, replicas = current, "replicas handed to the autoscaler");
    Ok(())
}

async fn fresh_selection(
    svc: &OIMService,
    nodes: &[NodeView],
    pods: &[PodUse],
    ctx: &Context,
    catalog: &Catalog,
    held: Option<&[CachedProfile]>,
) -> Result<Option<Chosen>, Error> {
    let mut req = request_for(svc);
    let mut profiles = catalog.list(&req.model).await.map_err(|e| Error::Catalog(e.to_string()))?;
    if let Some(h) = held {
        profiles.retain(|p| in_cache(h, &p.weights, p.weights_revision.as_deref()));
        req.allow_generated &= in_cache(h, &req.model, None);
    }
    let selection = select(&req, &profiles, nodes, pods, &ctx.engines);
    let rejected: Vec<RejectedProfile> = selection
        .rejected
        .iter()
        .take(10)
        .map(|r| RejectedProfile { name: r.name.clone(), reason: r.reason.clone() })
        .collect();
    let Some(s) = selection.selected else {
        let reason = selection.reason.clone().unwrap_or_else(|| "NoFeasibleProfile".into());
        let first = selection
            .rejected
            .first()
            .map(|r| format!("{}: {}", r.name, r.reason))
            .unwrap_or_else(|| "no profile for this model".into());
        let message =
            format!("{} profile(s) for {} considered, none fits; {first}", selection.rejected.len(), req.model);
        let mut status = conditions_only(
            svc,
            &[
                Cond("ProfileSelected", false, &reason, message.clone()),
                Cond("CacheReady", true, "NotUsed", "no OIMCache is referenced".into()),
                Cond("Available", false, &reason, "nothing to run until a profile fits".into()),
                Cond("Ready", false, &reason, message.clone()),
            ],
        );
        status.profile = Some(SelectedProfile { name: String::new(), rejected, ..Default::default() });
        if differs(svc.status.as_ref(), &status) {
            publish(ctx, svc, EventType::Warning, &reason, &message).await;
        }
        patch_status(ctx, svc, status, false).await?;
        return Ok(None);
    };
    let profile = match &s.document {
        Some(d) => d.clone(),
        None => catalog.fetch(&s.profile).await.map_err(|e| Error::Catalog(e.to_string()))?,
    };
    publish(ctx, svc, EventType::Normal, "ProfileSelected", &format!("{}: {}", profile.name, s.reason)).await;
    Ok(Some(Chosen {
        digest: s.profile.digest.clone(),
        source: s.profile.source.clone(),
        reason: s.reason.clone(),
        generated: s.generated,
        group: s.group,
        profile,
        rejected,
    }))
}

/// Whether a cache holds `weights` (at `revision`, when the profile pins one).
fn in_cache(held: &[CachedProfile], weights: &str, revision: Option<&str>) -> bool {
    held.iter().any(|c| c.weights == weights && revision.is_none_or(|r| r == c.weights_revision))
}

/// Where a profile's weights are in the cache: its own entry, else one of the same weights.
fn cached_path(held: &[CachedProfile], p: &Profile) -> Option<String> {
    let weights = p.weights();
    held.iter()
        .find(|c| c.name == p.name)
        .or_else(|| {
            held.iter()
                .find(|c| c.weights == weights && p.weights_revision.as_deref().is_none_or(|r| r == c.weights_revision))
        })
        .map(|c| c.path.clone())
}

/// The referenced OIMCache when it is Ready; otherwise the status says why the service waits
/// (the cache's own message included) and the action to take.
async fn ready_cache(ctx: &Context, svc: &OIMService, ns: &str, name: &str) -> Result<Result<OIMCache, Action>, Error> {
    let live = Api::<OIMCache>::namespaced(ctx.client.clone(), ns).get_opt(name).await?;
    let (reason, message) = match &live {
        Some(c) if c.status.as_ref().and_then(|s| s.state) == Some(CacheState::Ready) => return Ok(Ok(c.clone())),
        Some(c) => {
            let st = c.status.clone().unwrap_or_default();
            let why = st.conditions.iter().find(|x| x.type_ == "Ready").map(|x| x.message.clone()).unwrap_or_default();
            let state = st.state.map(|s| enum_str(&s)).unwrap_or_else(|| "Pending".into());
            ("CacheNotReady", format!("OIMCache {name} is {state}: {why}"))
        }
        None => (
            "CacheNotFound",
            format!(
                "spec.storage.oimCache.name: OIMCache {name} does not exist in {ns}; create it or remove spec.storage.oimCache"
            ),
        ),
    };
    let status = conditions_only(
        svc,
        &[
            Cond("CacheReady", false, reason, message.clone()),
            Cond("Available", false, reason, "nothing runs until the cache is Ready".into()),
            Cond("Ready", false, reason, message.clone()),
        ],
    );
    if differs(svc.status.as_ref(), &status) {
        publish(ctx, svc, EventType::Normal, reason, &message).await;
    }
    patch_status(ctx, svc, status, false).await?;
    Ok(Err(Action::requeue(Duration::from_secs(30))))
}

/// The new digest of the kept profile's tag, when it was re-published. Registry trouble is not
/// an update: the kept profile keeps serving.
async fn republished(catalog: &Catalog, model: &str, kept: &Chosen) -> Option<String> {
    if kept.generated || kept.digest.is_empty() {
        return None;
    }
    let listed = catalog.list(model).await.ok()?;
    let now = listed.iter().find(|p| p.name == kept.profile.name)?;
    (now.digest != kept.digest).then(|| now.digest.clone())
}

/// A `spec.profile.source` the operator cannot use: Failed when the spec must change, Pending
/// (retried) when something may still appear.
async fn source_problem(ctx: &Context, svc: &OIMService, e: &SourceError) -> Result<Action, Error> {
    let (reason, retry) = match e {
        SourceError::Refused(_) => ("ProfileSourceRefused", None),
        _ => ("ProfileSourceUnavailable", Some(Duration::from_secs(30))),
    };
    let message = e.to_string();
    let status = conditions_only(
        svc,
        &[Cond("ProfileSelected", false, reason, message.clone()), Cond("Ready", false, reason, message.clone())],
    );
    if differs(svc.status.as_ref(), &status) {
        publish(ctx, svc, EventType::Warning, reason, &message).await;
    }
    patch_status(ctx, svc, status, retry.is_none()).await?;
    Ok(retry.map_or_else(Action::await_change, Action::requeue))
}

async fn patch_status(
    ctx: &Context,
    svc: &OIMService,
    mut status: OIMServiceStatus,
    failed: bool,
) -> Result<(), Error> {
    if failed {
        status.state = Some(crate::api::ServiceState::Failed);
    }
    if !differs(svc.status.as_ref(), &status) {
        return Ok(());
    }
    let api: Api<OIMService> = Api::namespaced(ctx.client.clone(), &svc.namespace().unwrap_or_default());
    let patch = serde_json::json!({"apiVersion": "oim.opea.dev/v1alpha1", "kind": "OIMService", "status": status});
    api.patch_status(&svc.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch)).await?;
    ctx.metrics.writes.add();
    Ok(())
}

async fn publish(ctx: &Context, svc: &OIMService, type_: EventType, reason: &str, note: &str) {
    publish_for(ctx, &svc.object_ref(&()), type_, reason, note).await;
}

/// Records a Kubernetes Event on `object`; a failure to record is logged, never fatal.
pub async fn publish_for(
    ctx: &Context,
    object: &k8s_openapi::api::core::v1::ObjectReference,
    type_: EventType,
    reason: &str,
    note: &str,
) {
    let ev = Event {
        type_,
        reason: reason.chars().take(128).collect(),
        note: Some(note.chars().take(1000).collect()),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&ev, object).await {
        warn!(error = %e, "event not published");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(name: &str, weights: &str, commit: &str) -> CachedProfile {
        CachedProfile {
            name: name.into(),
            weights: weights.into(),
            weights_revision: commit.into(),
            path: format!("/{weights}/{commit}"),
        }
    }

    fn profile(name: &str, weights: &str, revision: Option<&str>) -> Profile {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/profiles/llama-3.1-8b/vllm-nvidia-h100-sxm-80gb-x1-latency-bf16.yaml"
        );
        let mut p = Profile::parse(&std::fs::read(path).unwrap(), path).unwrap();
        p.name = name.into();
        p.weights = Some(weights.into());
        p.weights_revision = revision.map(str::to_string);
        p
    }

    #[test]
    fn only_weights_the_cache_holds_are_candidates_and_they_run_from_its_path() {
        let h = vec![held("a", "org/model-fp8", "c0ffee")];
        assert!(in_cache(&h, "org/model-fp8", None), "an unpinned profile takes whatever commit the cache has");
        assert!(in_cache(&h, "org/model-fp8", Some("c0ffee")));
        assert!(!in_cache(&h, "org/model-fp8", Some("deadbeef")), "a pinned revision must match");
        assert!(!in_cache(&h, "org/model", None), "another variant is not in the cache");
        assert_eq!(cached_path(&h, &profile("a", "org/model-fp8", None)).as_deref(), Some("/org/model-fp8/c0ffee"));
        assert_eq!(
            cached_path(&h, &profile("b", "org/model-fp8", None)).as_deref(),
            Some("/org/model-fp8/c0ffee"),
            "another profile loading the same weights uses them too"
        );
        assert_eq!(cached_path(&h, &profile("c", "org/model", None)), None);
    }
}
