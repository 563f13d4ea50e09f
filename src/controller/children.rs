//! Caches of the children the operator labels as its own — metadata only, plus the Deployments'
//! status — and what we last applied to each. They answer "is this ours", "does it already carry
//! what we would apply", "did someone change it since" and "what do we own that is no longer
//! rendered" without a GET per child per reconcile.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::channel::mpsc;
use futures::{FutureExt, SinkExt, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{ApiResource, DynamicObject};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};

use crate::api::OIMService;
use crate::controller::decode;
use crate::controller::watch::watch_backoff;
use crate::render::{Capabilities, FIELD_MANAGER};

/// The watch filter for everything we create.
pub fn ours() -> watcher::Config {
    watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={FIELD_MANAGER}"))
}

/// The kinds an OIMService may own, by their typed API metadata; Route and ServiceMonitor only
/// where their APIs exist. PVCs are never among them: their retention is deliberate.
pub fn service_child_kinds(capabilities: Capabilities) -> Vec<ApiResource> {
    let mut kinds = vec![
        ApiResource::erase::<Deployment>(&()),
        ApiResource::erase::<Service>(&()),
        ApiResource::erase::<ServiceAccount>(&()),
        ApiResource::erase::<ConfigMap>(&()),
        ApiResource::erase::<HorizontalPodAutoscaler>(&()),
        ApiResource::erase::<Ingress>(&()),
    ];
    if capabilities.routes {
        kinds.push(crate::render::route_resource());
    }
    if capabilities.service_monitors {
        kinds.push(crate::render::service_monitor_resource());
    }
    if capabilities.dra {
        kinds.push(ApiResource::erase::<crate::render::dra::ResourceClaimTemplate>(&()));
    }
    kinds
}

type Meta = PartialObjectMeta<DynamicObject>;

/// Kinds from CRDs of other projects (Route, ServiceMonitor), which may come and go.
fn optional(ar: &ApiResource) -> bool {
    matches!(ar.group.as_str(), "route.openshift.io" | "monitoring.coreos.com" | "resource.k8s.io")
}

/// A change to one of our children, for its owner's controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Touched {
    /// The child's kind, namespace and name.
    pub kind: String,
    pub namespace: String,
    pub name: String,
    /// Its resourceVersion after the change (our own writes are recognised by it).
    pub resource_version: Option<String>,
    /// The OIMService that controls it, if any.
    pub owner: Option<String>,
}

impl Touched {
    fn of(kind: &str, meta: &ObjectMeta) -> Touched {
        let owner = decode::resource::<OIMService>();
        Touched {
            kind: kind.to_string(),
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
            resource_version: meta.resource_version.clone(),
            owner: meta
                .owner_references
                .iter()
                .flatten()
                .find(|o| o.controller == Some(true) && o.kind == owner.kind && o.api_version == owner.api_version)
                .map(|o| o.name.clone()),
        }
    }
}

/// Where the changes of one scope's children go: the controller of that scope once it runs
/// (a standby's caches stay warm without anyone to wake; the controller reconciles every
/// service when it starts anyway).
#[derive(Default)]
struct Wakes(Mutex<Option<mpsc::Sender<Touched>>>);

impl Wakes {
    async fn send(&self, touched: Touched) {
        let tx = self.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(mut tx) = tx {
            // A full channel holds the watch back (backpressure), never drops a wake.
            let _ = tx.send(touched).await;
        }
    }
}

/// One cached kind: metadata only, or (Deployments) the object without its pod template, which
/// the status reads.
enum Cache {
    Meta(Store<Meta>),
    Deployments(Store<Deployment>),
}

impl Cache {
    fn store_ready(&self) -> bool {
        let ready = match self {
            Cache::Meta(s) => s.wait_until_ready().now_or_never(),
            Cache::Deployments(s) => s.wait_until_ready().now_or_never(),
        };
        ready.is_some_and(|r| r.is_ok())
    }

    async fn listed(&self) -> bool {
        match self {
            Cache::Meta(s) => s.wait_until_ready().await.is_ok(),
            Cache::Deployments(s) => s.wait_until_ready().await.is_ok(),
        }
    }

    fn meta(&self, ar: &ApiResource, namespace: &str, name: &str) -> Option<ObjectMeta> {
        match self {
            Cache::Meta(s) => {
                s.get(&ObjectRef::new_with(name, ar.clone()).within(namespace)).map(|o| o.metadata.clone())
            }
            Cache::Deployments(s) => s.get(&ObjectRef::new(name).within(namespace)).map(|d| d.metadata.clone()),
        }
    }

    fn metas(&self) -> Vec<ObjectMeta> {
        match self {
            Cache::Meta(s) => s.state().iter().map(|o| o.metadata.clone()).collect(),
            Cache::Deployments(s) => s.state().iter().map(|d| d.metadata.clone()).collect(),
        }
    }
}

/// Children in one watched scope. One watch per kind both fills the cache and wakes the owner,
/// in that order: a woken reconcile always reads the change that woke it (with a second watch
/// for wakes, a reconcile could run on a cache that had not caught up, and nothing woke it
/// again; after an API server restart that left services NotReady for good).
pub struct Children {
    kinds: Vec<(ApiResource, Cache)>,
    wakes: Arc<Wakes>,
}

/// Fills `writer` from the watch of `api` and forwards every change to `wakes`.
fn cache_and_wake<K>(
    api: Api<K>,
    writer: reflector::store::Writer<K>,
    kind: String,
    wakes: Arc<Wakes>,
    slim: fn(&mut K),
) where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    let changes =
        reflector::reflector(writer, watcher(api, ours()).backoff(watch_backoff()).modify(slim)).touched_objects();
    tokio::spawn(async move {
        futures::pin_mut!(changes);
        while let Some(change) = changes.next().await {
            if let Ok(obj) = change {
                wakes.send(Touched::of(&kind, obj.meta())).await;
            }
        }
    });
}

/// Only what the status reads: generation, status and replicas.
fn slim(d: &mut Deployment) {
    d.metadata.managed_fields = None;
    if let Some(spec) = d.spec.as_mut() {
        spec.template = Default::default();
    }
}

impl Children {
    /// Starts the caches for one namespace (None: all).
    pub fn watch(client: &Client, namespace: Option<&str>, capabilities: Capabilities) -> Children {
        let wakes = Arc::new(Wakes::default());
        let kinds = service_child_kinds(capabilities)
            .into_iter()
            .map(|ar| {
                let cache = if ar.kind == "Deployment" {
                    let api: Api<Deployment> = match namespace {
                        Some(ns) => Api::namespaced(client.clone(), ns),
                        None => Api::all(client.clone()),
                    };
                    let (store, writer) = reflector::store();
                    cache_and_wake(api, writer, ar.kind.clone(), wakes.clone(), slim);
                    Cache::Deployments(store)
                } else {
                    let api: Api<Meta> = match namespace {
                        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
                        None => Api::all_with(client.clone(), &ar),
                    };
                    let writer = reflector::store::Writer::<Meta>::new(ar.clone());
                    let store = writer.as_reader();
                    cache_and_wake(api, writer, ar.kind.clone(), wakes.clone(), |_| {});
                    Cache::Meta(store)
                };
                (ar, cache)
            })
            .collect();
        Children { kinds, wakes }
    }

    /// The changes of these children, from now on, for the one controller of this scope.
    pub fn subscribe(&self) -> impl futures::Stream<Item = Touched> + use<> {
        let (tx, rx) = mpsc::channel(256);
        *self.wakes.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
        rx
    }

    /// Whether every cache of a built-in kind has its first full listing. Route and
    /// ServiceMonitor caches are not waited for: their CRDs may be removed after start, and a
    /// cache that cannot list must not hold every reconcile (their lookups go to the API then).
    pub async fn ready(&self) -> bool {
        for (ar, cache) in &self.kinds {
            if !optional(ar) && !cache.listed().await {
                return false;
            }
        }
        true
    }

    /// The cache of `kind`, once it has listed.
    fn cache(&self, kind: &str) -> Option<&(ApiResource, Cache)> {
        self.kinds.iter().find(|(ar, _)| ar.kind == kind).filter(|(_, c)| c.store_ready())
    }

    /// The metadata of our child, as cached: `Some(None)` when it is not there (or not labelled
    /// ours), `None` when its kind is not cached and the caller must look it up.
    pub fn meta(&self, kind: &str, namespace: &str, name: &str) -> Option<Option<ObjectMeta>> {
        let (ar, cache) = self.cache(kind)?;
        Some(cache.meta(ar, namespace, name))
    }

    /// Our children of `kind` in `namespace` controlled by the owner with `uid`; None when that
    /// kind's cache has not listed (the caller asks the API).
    pub fn owned_by(&self, kind: &str, namespace: &str, uid: &str) -> Option<Vec<String>> {
        let (_, cache) = self.cache(kind)?;
        Some(owned_names(&cache.metas(), namespace, uid))
    }

    /// The cached kinds, in a fixed order.
    pub fn kinds(&self) -> impl Iterator<Item = &ApiResource> {
        self.kinds.iter().map(|(ar, _)| ar)
    }

    /// Our Deployment of that name, without its pod template.
    pub fn deployment(&self, namespace: &str, name: &str) -> Option<Arc<Deployment>> {
        self.kinds.iter().find_map(|(_, c)| match c {
            Cache::Deployments(s) => s.get(&ObjectRef::new(name).within(namespace)),
            Cache::Meta(_) => None,
        })
    }
}

/// The names among `metas` in `namespace`, controlled by `uid` and not being deleted.
pub fn owned_names(metas: &[ObjectMeta], namespace: &str, uid: &str) -> Vec<String> {
    metas
        .iter()
        .filter(|m| m.namespace.as_deref() == Some(namespace) && m.deletion_timestamp.is_none())
        .filter(|m| controlled_by(m, uid))
        .filter_map(|m| m.name.clone())
        .collect()
}

/// Whether `meta` carries a controller owner reference to the object with `uid`.
pub fn controlled_by(meta: &ObjectMeta, uid: &str) -> bool {
    meta.owner_references.iter().flatten().any(|o| o.uid == uid && o.controller == Some(true))
}

/// The caches per watched scope, and the mark of each child as we last applied it.
#[derive(Default)]
pub struct ChildCaches {
    scopes: HashMap<Option<String>, Children>,
    applied: Mutex<HashMap<String, String>>,
}

impl ChildCaches {
    /// Caches for `scopes`.
    pub fn watch(client: &Client, scopes: &[Option<String>], capabilities: Capabilities) -> ChildCaches {
        ChildCaches {
            scopes: scopes.iter().map(|s| (s.clone(), Children::watch(client, s.as_deref(), capabilities))).collect(),
            applied: Mutex::default(),
        }
    }

    /// The caches covering `namespace`.
    pub fn of(&self, namespace: &str) -> Option<&Children> {
        self.scopes.get(&Some(namespace.to_string())).or_else(|| self.scopes.get(&None))
    }

    /// The caches of one watched scope (None: all namespaces).
    pub fn scope(&self, scope: &Option<String>) -> Option<&Children> {
        self.scopes.get(scope)
    }

    /// The mark we recorded for a child when we last applied (or first saw) it.
    pub fn recorded(&self, key: &str) -> Option<String> {
        self.applied.lock().unwrap_or_else(|e| e.into_inner()).get(key).cloned()
    }

    /// Records a child's mark after our apply.
    pub fn record(&self, key: String, mark: String) {
        self.applied.lock().unwrap_or_else(|e| e.into_inner()).insert(key, mark);
    }

    /// Forgets a deleted child.
    pub fn forget(&self, key: &str) {
        self.applied.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
    }
}
