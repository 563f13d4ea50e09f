//! The OIMService reconciler: dereference (nodes, pods, the stored profile) -> select (sticky) ->
//! build (pure renderers) -> apply (server-side, only on change) -> status and events.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Service};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use crate::api::{AcceleratorStatus, ModelStatus, OIMService, OIMServiceStatus, RejectedProfile, SelectedProfile};
use crate::cli::render::request_for;
use crate::controller::apply::{WriteCounter, apply};
use crate::controller::status::{Cond, conditions, differs, state};
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
}

/// What every reconcile shares.
pub struct Context {
    /// The client.
    pub client: Client,
    /// Where published profiles come from.
    pub catalog: Catalog,
    /// Vendor engines.
    pub engines: Engines,
    /// Nodes, watched.
    pub nodes: Store<Node>,
    /// Pods, watched (free-device accounting).
    pub pods: Store<Pod>,
    /// Event recorder.
    pub recorder: Recorder,
    /// The operator's own writes.
    pub writes: WriteCounter,
    /// Platform.
    pub platform: Platform,
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

/// Reconciles one OIMService.
pub async fn reconcile(svc: Arc<OIMService>, ctx: Arc<Context>) -> Result<Action, Error> {
    if svc.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    // Selecting from half-synced node or pod caches would report false "nothing fits".
    let synced = async { ctx.nodes.wait_until_ready().await.is_ok() && ctx.pods.wait_until_ready().await.is_ok() };
    if !tokio::time::timeout(Duration::from_secs(30), synced).await.unwrap_or(false) {
        return Ok(Action::requeue(Duration::from_secs(2)));
    }
    let ns = svc.namespace().unwrap_or_else(|| "default".into());
    let name = svc.name_any();
    let nodes: Vec<NodeView> = ctx.nodes.state().iter().filter_map(|n| NodeView::from_node(n)).collect();
    let pods: Vec<PodUse> = ctx.pods.state().iter().filter_map(|p| PodUse::from_pod(p)).collect();
    let key = selection_key(&svc);
    let cms: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ns);
    let stored = cms.get_opt(&format!("{name}-profile")).await?;
    let chosen = match stored.as_ref().and_then(|cm| sticky(cm, &key, &nodes, &pods, &svc)) {
        Some(c) => Some(c),
        None => match fresh_selection(&svc, &nodes, &pods, &ctx).await {
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

    if let Some(cache) = svc.spec.storage.as_ref().and_then(|s| s.oim_cache.as_ref()) {
        // Serving from an OIMCache needs the cache controller, which has not landed: wait, say so.
        let message = format!(
            "OIMCache {} is not Ready: the cache controller is not implemented yet, so the service waits instead of downloading on its own",
            cache.name
        );
        let status = conditions_only(
            &svc,
            &[
                Cond("ProfileSelected", true, "Selected", format!("{}: {}", chosen.profile.name, chosen.reason)),
                Cond("CacheReady", false, "CacheNotReady", message.clone()),
                Cond("Available", false, "CacheNotReady", message.clone()),
                Cond("Ready", false, "CacheNotReady", message),
            ],
        );
        patch_status(&ctx, &svc, status, false).await?;
        return Ok(Action::requeue(Duration::from_secs(60)));
    }
    let input = Input {
        service: &svc,
        profile: &chosen.profile,
        digest: &chosen.digest,
        source: &chosen.source,
        group: &chosen.group,
        weights: Weights::Hub,
        platform: ctx.platform,
        capabilities: Capabilities { routes: ctx.platform == Platform::Openshift, service_monitors: false },
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
        if apply(&ctx.client, &ns, obj.clone(), &ctx.writes).await? {
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
            Cond("CacheReady", true, "NotUsed", "no OIMCache is referenced".into()),
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
            Cond("Degraded", false, "AsExpected", "no problem detected".into()),
            Cond(
                "ProfileUpdateAvailable",
                false,
                "Pinned",
                "the resolved profile is kept until model or profile change".into(),
            ),
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
            external_endpoint: svc
                .spec
                .expose
                .as_ref()
                .and_then(|e| e.route.as_ref())
                .and_then(|r| r.host.clone())
                .map(|h| format!("https://{h}")),
        }),
    };
    patch_status(&ctx, &svc, status, false).await?;
    Ok(Action::requeue(if rolled_out { Duration::from_secs(600) } else { Duration::from_secs(15) }))
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
    ctx.writes.add();
    info!(service = %name, replicas = current, "replicas handed to the autoscaler");
    Ok(())
}

async fn fresh_selection(
    svc: &OIMService,
    nodes: &[NodeView],
    pods: &[PodUse],
    ctx: &Context,
) -> Result<Option<Chosen>, Error> {
    let req = request_for(svc);
    let profiles = ctx.catalog.list(&req.model).await.map_err(|e| Error::Catalog(e.to_string()))?;
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
        None => ctx.catalog.fetch(&s.profile).await.map_err(|e| Error::Catalog(e.to_string()))?,
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
    ctx.writes.add();
    Ok(())
}

async fn publish(ctx: &Context, svc: &OIMService, type_: EventType, reason: &str, note: &str) {
    let ev = Event {
        type_,
        reason: reason.chars().take(128).collect(),
        note: Some(note.chars().take(1000).collect()),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&ev, &svc.object_ref(&())).await {
        warn!(error = %e, "event not published");
    }
}

fn error_policy(svc: Arc<OIMService>, err: &Error, _ctx: Arc<Context>) -> Action {
    warn!(service = %svc.name_any(), error = %err, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(10))
}

/// What about a Node can change a placement: oim labels, the inventory annotation, allocatable,
/// taints, cordon and readiness. Heartbeats and other writers (kwok, the controller-manager) do
/// not requeue every service.
fn placement_fingerprint(node: &Node) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let labels: Vec<_> = node.labels().iter().filter(|(k, _)| k.starts_with("oim.opea.dev/")).collect();
    labels.hash(&mut h);
    node.annotations().get(crate::hardware::inventory::INVENTORY_ANNOTATION).hash(&mut h);
    let status = node.status.as_ref();
    let allocatable: Vec<_> = status
        .and_then(|s| s.allocatable.as_ref())
        .map(|a| a.iter().map(|(k, v)| (k.clone(), v.0.clone())).collect())
        .unwrap_or_default();
    allocatable.hash(&mut h);
    let spec = node.spec.as_ref();
    spec.and_then(|s| s.unschedulable).hash(&mut h);
    let taints: Vec<_> = spec
        .and_then(|s| s.taints.as_ref())
        .map(|t| t.iter().map(|t| (t.key.clone(), t.value.clone(), t.effect.clone())).collect())
        .unwrap_or_default();
    taints.hash(&mut h);
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    ready.hash(&mut h);
    h.finish()
}

/// Runs the controller until SIGTERM; `namespace` limits it to one namespace (None: all).
pub async fn run(client: Client, catalog: Catalog, engines: Engines, platform: Platform, namespace: Option<String>) {
    let (nodes, node_writer) = reflector::store::<Node>();
    let (pods, pod_writer) = reflector::store::<Pod>();
    let node_stream =
        reflector::reflector(node_writer, watcher(Api::<Node>::all(client.clone()), watcher::Config::default()))
            .applied_objects();
    let pod_stream =
        reflector::reflector(pod_writer, watcher(Api::<Pod>::all(client.clone()), watcher::Config::default()))
            .touched_objects();
    let recorder = Recorder::new(
        client.clone(),
        Reporter { controller: FIELD_MANAGER.into(), instance: std::env::var("POD_NAME").ok() },
    );
    let ctx = Arc::new(Context {
        client: client.clone(),
        catalog,
        engines,
        nodes,
        pods,
        recorder,
        writes: WriteCounter::default(),
        platform,
    });
    fn scoped<K>(client: &Client, ns: &Option<String>) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        match ns {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        }
    }
    let controller = Controller::new(scoped::<OIMService>(&client, &namespace), watcher::Config::default());
    // A node change (labels, inventory, allocatable, taints) may open or close placements for
    // every service; pods feed the free-device store only.
    let seen = Arc::new(std::sync::Mutex::new(std::collections::HashMap::<String, u64>::new()));
    let node_trigger = node_stream.filter_map(move |n| {
        let seen = seen.clone();
        async move {
            let node = n.ok()?;
            let fingerprint = placement_fingerprint(&node);
            let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
            (seen.insert(node.name_any(), fingerprint) != Some(fingerprint)).then_some(())
        }
    });
    tokio::spawn(pod_stream.for_each(|_| async {}));
    controller
        .owns(scoped::<Deployment>(&client, &namespace), watcher::Config::default())
        .owns(scoped::<Service>(&client, &namespace), watcher::Config::default())
        .owns(scoped::<ConfigMap>(&client, &namespace), watcher::Config::default())
        .reconcile_all_on(node_trigger)
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                warn!(error = %e, "controller");
            }
        })
        .await;
    info!("operator stopped");
}
