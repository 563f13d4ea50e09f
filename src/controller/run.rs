//! Running the operator: one OIMService and one OIMCache controller per watched namespace (or
//! one pair for all), sharing node, pod and child caches; node changes that matter to placement
//! fan out to every controller; the node agent's keeper and the metrics endpoint run alongside.

use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use tracing::{info, warn};

use crate::api::{OIMCache, OIMService};
use crate::controller::agent::{self, AgentConfig};
use crate::controller::apply::key;
use crate::controller::children::{ChildCaches, ours};
use crate::controller::context::{Backoff, Context, Error};
use crate::controller::decode::{self, Watched};
use crate::controller::health::Health;
use crate::controller::leader::Election;
use crate::controller::metrics::{self, Metrics};
use crate::controller::priority;
use crate::controller::service::reconcile;
use crate::controller::source::Sources;
use crate::controller::watch::watch_backoff;
use crate::hardware::slices::{ResourceClaim, ResourceSlice};
use crate::profile::engines::Engines;
use crate::profile::select::PodUse;
use crate::render::{Capabilities, FIELD_MANAGER, Platform};

/// What about a Node can change a placement: labels (a service's nodeSelector or affinity may
/// name any), the inventory annotation, allocatable, taints, cordon and readiness. Heartbeats and
/// other status writers (kwok, the kubelet) neither requeue every service nor rebuild the view.
fn placement_fingerprint(node: &Node) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    node.labels().hash(&mut h);
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

/// What placement reads of a Node: its image list and managedFields, often most of it, go.
fn slim_node(node: &mut Node) {
    node.metadata.managed_fields = None;
    if let Some(status) = node.status.as_mut() {
        status.images = None;
    }
}

/// How the operator runs, from its flags.
pub struct Settings {
    /// Namespaces whose OIMServices are reconciled; empty: all.
    pub namespaces: Vec<String>,
    /// Kubernetes or OpenShift.
    pub platform: Platform,
    /// Optional APIs present.
    pub capabilities: Capabilities,
    /// The node agent to keep deployed; None when it is deployed some other way.
    pub agent: Option<AgentConfig>,
    /// Where `/metrics` and `/healthz` listen.
    pub metrics_bind: Option<std::net::SocketAddr>,
    /// The operator's own image (default downloader of OIMCache Jobs).
    pub own_image: String,
    /// The hub model facts are read from.
    pub hf_endpoint: String,
    /// The limit the operator's client was built with (reported in the metrics).
    pub api_limit: crate::controller::limit::ApiLimit,
    /// The leader election this replica takes part in (its client is fenced by it); None:
    /// a single replica that always reconciles.
    pub election: Option<Election>,
}

/// Why `run` returned.
#[derive(Debug, PartialEq, Eq)]
pub enum Stopped {
    /// SIGTERM or Ctrl-C.
    Signal,
    /// The leader lease was lost: the process ends and restarts as a standby.
    LeaseLost,
}

/// A reconcile running longer than this is stuck (every read in it has a shorter deadline):
/// `/healthz` fails so the kubelet restarts the operator.
const STUCK_AFTER: Duration = Duration::from_secs(600);

/// Reconciles in flight per controller (`controller::limit`).
const CONCURRENCY: u16 = crate::controller::limit::RECONCILES as u16;

/// Runs the controllers until SIGTERM (or, with leader election, until the lease is lost): one
/// OIMService and one OIMCache controller per watched namespace (or one pair for all), sharing
/// the node, pod and child caches, plus the node agent's keeper and the metrics. A standby keeps
/// its caches warm and starts the controllers when it becomes the leader.
/// A cache of every `K` in the cluster, each slimmed to what is read, and the stream of its
/// changed objects (which must be polled for the cache to fill).
fn cluster_cache<K>(client: &Client, slim: fn(&mut K)) -> (reflector::Store<K>, Touches<K>)
where
    K: Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    let (store, writer) = reflector::store::<K>();
    let watch =
        watcher(Api::<K>::all(client.clone()), watcher::Config::default()).backoff(watch_backoff()).modify(slim);
    (store, reflector::reflector(writer, watch).touched_objects().boxed())
}

type Touches<K> = futures::stream::BoxStream<'static, Result<K, watcher::Error>>;

pub async fn run(client: Client, sources: Sources, engines: Engines, settings: Settings) -> Stopped {
    tokio::spawn(bounded_shutdown(Duration::from_secs(10)));
    let (nodes, node_writer) = reflector::store::<Node>();
    let node_stream = reflector::reflector(
        node_writer,
        watcher(Api::<Node>::all(client.clone()), watcher::Config::default())
            .backoff(watch_backoff())
            .modify(slim_node),
    );
    // Every pod in the cluster may hold accelerators; keep only what accounting reads.
    let (pods, pod_stream) = cluster_cache(&client, PodUse::slim);
    // Allocated claims hold DRA devices like pod requests hold extended resources: a change
    // marks the view stale (as a pod change does) without waking every service.
    let (claims, claim_changes) = match settings.capabilities.dra {
        true => {
            let (store, stream) = cluster_cache(&client, ResourceClaim::slim);
            (Some(store), Some(stream))
        }
        false => (None, None),
    };
    // DRA devices where the cluster serves resource.k8s.io/v1, each slice slimmed to what
    // selection reads. A change wakes the controllers like a node change.
    let (slices, slice_changes) = match settings.capabilities.dra {
        true => {
            let (store, stream) = cluster_cache(&client, ResourceSlice::slim);
            (Some(store), stream.filter_map(|r| futures::future::ready(r.ok().map(|_| ()))).boxed())
        }
        false => (None, futures::stream::pending().boxed()),
    };
    let recorder = Recorder::new(
        client.clone(),
        Reporter { controller: FIELD_MANAGER.into(), instance: std::env::var("POD_NAME").ok() },
    );
    let metrics = Arc::new(Metrics::default());
    let health = Arc::new(Health::new(STUCK_AFTER));
    if let Some(addr) = settings.metrics_bind {
        tokio::spawn(metrics::serve(addr, metrics.clone(), health.clone()));
    }
    let scopes: Vec<Option<String>> = if settings.namespaces.is_empty() {
        vec![None]
    } else {
        settings.namespaces.iter().cloned().map(Some).collect()
    };
    let ctx = Arc::new(Context {
        client: client.clone(),
        sources,
        engines,
        nodes,
        pods,
        slices,
        claims,
        recorder,
        metrics: metrics.clone(),
        platform: settings.platform,
        capabilities: settings.capabilities,
        own_image: settings.own_image.clone(),
        hub: crate::controller::model::HubFacts::new(settings.hf_endpoint.clone()),
        children: ChildCaches::watch(&client, &scopes, settings.capabilities),
        failures: Backoff::default(),
        health: health.clone(),
        placement: Default::default(),
        echoes: Default::default(),
        api_limit: settings.api_limit.clone(),
        backlog: Default::default(),
    });
    tokio::spawn(report_ready(ctx.clone(), scopes.clone()));
    let releasing = ctx.clone();
    tokio::spawn(async move { releasing.backlog.keep_releasing().await });
    let (senders, receivers) = node_channels(scopes.len());
    tokio::spawn(fan_out_node_changes(node_stream, slice_changes, senders, ctx.clone()));
    if let Some(stream) = claim_changes {
        let claims_changed = ctx.clone();
        tokio::spawn(stream.for_each(move |_| {
            claims_changed.placement.changed();
            futures::future::ready(())
        }));
    }
    let pods_changed = ctx.clone();
    tokio::spawn(pod_stream.for_each(move |_| {
        pods_changed.placement.changed();
        futures::future::ready(())
    }));
    if let Some(election) = &settings.election {
        tokio::select! {
            leading = election.leading() => if !leading { return Stopped::LeaseLost },
            _ = terminated() => return Stopped::Signal,
        }
    }
    metrics.leader.set(1);
    if let Some(cfg) = settings.agent.clone() {
        tokio::spawn(agent::keep(client.clone(), cfg, metrics.clone(), Duration::from_secs(60)));
    }
    let mut controllers = vec![];
    for (ns, (services, caches)) in scopes.iter().zip(receivers) {
        controllers.push(controller_for(&client, ns, services, ctx.clone()).boxed());
        controllers.push(cache_controller_for(&client, ns, caches, ctx.clone()).boxed());
    }
    let stopped = match &settings.election {
        Some(election) => tokio::select! {
            _ = futures::future::join_all(controllers) => Stopped::Signal,
            _ = election.lost() => Stopped::LeaseLost,
        },
        None => {
            futures::future::join_all(controllers).await;
            Stopped::Signal
        }
    };
    metrics.leader.set(0);
    if let (Some(election), Stopped::Signal) = (&settings.election, &stopped) {
        election.release().await;
    }
    info!(?stopped, "operator stopped");
    stopped
}

type NodeChanges = futures::channel::mpsc::Receiver<()>;

/// One channel of node changes per controller: (services, caches) per scope. Each holds one
/// pending wake at most: changes arriving while one is pending (or on a standby) coalesce.
fn node_channels(scopes: usize) -> (Vec<futures::channel::mpsc::Sender<()>>, Vec<(NodeChanges, NodeChanges)>) {
    let mut senders = vec![];
    let mut receivers = vec![];
    for _ in 0..scopes {
        let (tx_services, rx_services) = futures::channel::mpsc::channel::<()>(0);
        let (tx_caches, rx_caches) = futures::channel::mpsc::channel::<()>(0);
        senders.extend([tx_services, tx_caches]);
        receivers.push((rx_services, rx_caches));
    }
    (senders, receivers)
}

/// A node change (labels, inventory, allocatable, taints) or a ResourceSlice change (DRA
/// devices) may open or close placements for every service; it is fanned out to each controller.
async fn fan_out_node_changes(
    events: impl futures::Stream<Item = Result<watcher::Event<Node>, watcher::Error>>,
    slice_changes: impl futures::Stream<Item = ()>,
    mut senders: Vec<futures::channel::mpsc::Sender<()>>,
    ctx: Arc<Context>,
) {
    let node_changes = events.scan(std::collections::HashMap::<String, u64>::new(), |seen, event| {
        let changed = match event {
            Ok(watcher::Event::Apply(node) | watcher::Event::InitApply(node)) => {
                let fingerprint = placement_fingerprint(&node);
                seen.insert(node.name_any(), fingerprint) != Some(fingerprint)
            }
            Ok(watcher::Event::Delete(node)) => seen.remove(&node.name_any()).is_some(),
            // A relist may have dropped nodes deleted while the watch was down.
            Ok(watcher::Event::InitDone) => true,
            Ok(watcher::Event::Init) | Err(_) => false,
        };
        futures::future::ready(Some(changed))
    });
    let changes = futures::stream::select(node_changes, slice_changes.map(|()| true));
    futures::pin_mut!(changes);
    while let Some(changed) = changes.next().await {
        if changed {
            ctx.placement.changed();
            for tx in &mut senders {
                // Full: a wake is already pending, which covers this change too.
                let _ = tx.try_send(());
            }
        }
    }
}

/// Ready once the node, pod and child caches have listed.
async fn report_ready(ctx: Arc<Context>, scopes: Vec<Option<String>>) {
    if ctx.nodes.wait_until_ready().await.is_err() || ctx.pods.wait_until_ready().await.is_err() {
        return;
    }
    for ns in &scopes {
        if let Some(c) = ctx.children.of(ns.as_deref().unwrap_or(""))
            && !c.ready().await
        {
            return;
        }
    }
    ctx.health.set_ready();
    info!("caches synced; ready");
}

/// SIGTERM or Ctrl-C.
async fn terminated() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => futures::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// After SIGTERM or Ctrl-C the controllers finish their running reconciles; a controller whose
/// watches cannot list (an API server down, RBAC missing) must not keep the process alive past
/// `grace`.
async fn bounded_shutdown(grace: Duration) {
    terminated().await;
    tokio::time::sleep(grace).await;
    warn!(?grace, "controllers did not stop within the grace period; exiting");
    std::process::exit(0);
}

fn scoped<K>(client: &Client, ns: &Option<String>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// One of our kinds as dynamic objects: the OIMCache watch that only wakes services must not stop
/// on a cache it cannot decode.
fn dynamic<K: Resource<DynamicType = ()>>(client: &Client, ns: &Option<String>) -> (Api<DynamicObject>, ApiResource) {
    let ar = decode::resource::<K>();
    let api = match ns {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    };
    (api, ar)
}

/// The service a watch event is about, if its reconcile is due: not the echo of our own write.
/// Keeps the backlog (`priority`) of services waiting for a first look.
fn mark_due(
    event: watcher::Event<Watched<OIMService>>,
    ctx: &Context,
    kind: &str,
    scope: &Option<String>,
) -> Option<Watched<OIMService>> {
    match event {
        watcher::Event::Apply(s) | watcher::Event::InitApply(s) => {
            let own = key(kind, s.meta().namespace.as_deref().unwrap_or_default(), &s.name_any());
            if ctx.echoes.is_echo(&own, s.meta().resource_version.as_deref()) {
                return None;
            }
            ctx.backlog.arrived(priority::key_of(&s));
            Some(s)
        }
        watcher::Event::Delete(s) => {
            ctx.backlog.gone(&priority::key_of(&s));
            Some(s)
        }
        watcher::Event::Init => {
            ctx.backlog.relisting(scope);
            None
        }
        watcher::Event::InitDone => None,
    }
}

async fn reconcile_object(obj: Arc<Watched<OIMService>>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _running = ctx.health.running(format!("OIMService {}", decode::id(&*obj)));
    ctx.metrics.api_limit.set(ctx.api_limit.current() as i64);
    match &*obj {
        Watched::Typed(svc) => reconcile(svc.clone(), ctx).await,
        Watched::Raw { obj, why } => {
            // Looked at, though not decodable: it holds no workload back (`priority`).
            ctx.backlog.start_look(&priority::key_of(&**obj));
            Ok(decode::skip(&ctx, obj, &decode::resource::<OIMService>(), "oimservice", why).await)
        }
    }
}

/// A failed reconcile is retried after a backoff by error class: transient errors back off
/// exponentially with jitter, refusals wait (a change to the object wakes it sooner).
fn error_policy(obj: Arc<Watched<OIMService>>, err: &Error, ctx: Arc<Context>) -> Action {
    let delay = ctx.failures.failed(&format!("OIMService/{}", decode::id(&*obj)), err);
    warn!(service = %decode::id(&*obj), error = %err, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

fn controller_for(
    client: &Client,
    namespace: &Option<String>,
    node_changes: NodeChanges,
    ctx: Arc<Context>,
) -> impl std::future::Future<Output = ()> + use<> {
    let api: Api<Watched<OIMService>> = scoped(client, namespace);
    // The services, minus the echoes of our own status writes.
    let writer = reflector::store::Writer::default();
    let services = writer.as_reader();
    let due_ctx = ctx.clone();
    let kind = OIMService::kind(&()).to_string();
    // Nobody reads a service's managedFields; at 10,000 services they would be most of the cache.
    let watch = watcher(api, watcher::Config::default())
        .backoff(watch_backoff())
        .modify(|s: &mut Watched<OIMService>| s.meta_mut().managed_fields = None);
    // Each change that is not our own echo is due for a look (`priority`: the backlog).
    let scope = namespace.clone();
    let trigger = reflector::reflector(writer, watch)
        .try_filter_map(move |event| futures::future::ready(Ok(mark_due(event, &due_ctx, &kind, &scope))));
    let controller = Controller::for_stream(trigger, services.clone());
    // A cache becoming Ready (or going away) wakes the services that mount it.
    let users = move |cache: DynamicObject| {
        let ns = cache.metadata.namespace.clone();
        let name = cache.metadata.name.clone().unwrap_or_default();
        services
            .state()
            .into_iter()
            .filter(|s| {
                s.typed().is_some_and(|svc| {
                    svc.metadata.namespace == ns
                        && svc
                            .spec
                            .storage
                            .as_ref()
                            .and_then(|st| st.oim_cache.as_ref())
                            .is_some_and(|c| c.name == name)
                })
            })
            .map(|s| ObjectRef::from_obj(&*s))
            .collect::<Vec<_>>()
    };
    let (caches, cache_ar) = dynamic::<OIMCache>(client, namespace);
    let mut controller = controller.watches_with(caches, cache_ar, watcher::Config::default(), users);
    // Every kind we may own wakes its owner when it changes (drift is repaired) or goes; not
    // when the change is our own apply coming back.
    if let Some(children) = ctx.children.scope(namespace) {
        let echoes = ctx.clone();
        let wakes = children.subscribe().filter_map(move |t| {
            let echo = echoes.echoes.is_echo(&key(&t.kind, &t.namespace, &t.name), t.resource_version.as_deref());
            let owner = t.owner.filter(|_| !echo).map(|o| ObjectRef::new(&o).within(&t.namespace));
            futures::future::ready(owner)
        });
        controller = controller.reconcile_on(wakes);
    }
    // A service owed its Service and status, once the backlog drained (`priority`).
    let owed = ctx.backlog.wakes(namespace).map(|(ns, name)| ObjectRef::new(&name).within(&ns));
    controller
        .reconcile_on(owed)
        .reconcile_all_on(node_changes)
        .with_config(kube::runtime::controller::Config::default().concurrency(CONCURRENCY))
        .trigger_backoff(watch_backoff())
        .shutdown_on_signal()
        .run(reconcile_object, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                warn!(error = %e, "controller");
            }
        })
}

async fn reconcile_cache_object(obj: Arc<Watched<OIMCache>>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _running = ctx.health.running(format!("OIMCache {}", decode::id(&*obj)));
    match &*obj {
        Watched::Typed(cache) => super::cache::reconcile(cache.clone(), ctx).await,
        Watched::Raw { obj, why } => {
            Ok(decode::skip(&ctx, obj, &decode::resource::<OIMCache>(), "oimcache", why).await)
        }
    }
}

fn cache_error_policy(obj: Arc<Watched<OIMCache>>, err: &Error, ctx: Arc<Context>) -> Action {
    let delay = ctx.failures.failed(&format!("OIMCache/{}", decode::id(&*obj)), err);
    warn!(cache = %decode::id(&*obj), error = %err, retry_in = ?delay, "cache reconcile failed");
    Action::requeue(delay)
}

fn cache_controller_for(
    client: &Client,
    namespace: &Option<String>,
    node_changes: NodeChanges,
    ctx: Arc<Context>,
) -> impl std::future::Future<Output = ()> + use<> {
    Controller::new(scoped::<Watched<OIMCache>>(client, namespace), watcher::Config::default())
        .owns(scoped::<PartialObjectMeta<k8s_openapi::api::batch::v1::Job>>(client, namespace), ours())
        .reconcile_all_on(node_changes)
        .with_config(kube::runtime::controller::Config::default().concurrency(CONCURRENCY))
        .trigger_backoff(watch_backoff())
        .shutdown_on_signal()
        .run(reconcile_cache_object, cache_error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                warn!(error = %e, "cache controller");
            }
        })
}
