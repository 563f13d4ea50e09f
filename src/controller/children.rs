//! Caches of the children the operator labels as its own — metadata only, plus the Deployments'
//! and LeaderWorkerSets' status — and what we last applied to each. They answer "is this ours", "does it already carry
//! what we would apply", "did someone change it since" and "what do we own that is no longer
//! rendered" without a GET per child per reconcile.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use futures::channel::mpsc;
use futures::{FutureExt, SinkExt, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{ApiResource, DynamicObject};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};

use crate::api::OIMService;
use crate::controller::apply::slim_managed_fields;
use crate::controller::decode;
use crate::controller::watch::watch_backoff;
use crate::render::{Capabilities, FIELD_MANAGER};

/// The watch filter for everything we create.
pub fn ours() -> watcher::Config {
    watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={FIELD_MANAGER}"))
}

/// The kinds an OIMService may own, by their typed API metadata; Route, ServiceMonitor,
/// HTTPRoute, InferencePool and InferenceService only where their APIs exist. PVCs are never
/// among them: their retention is deliberate. The ServiceAccount and profile ConfigMap that
/// earlier versions made per service are not watched any more: they carry the service's owner
/// reference and go with it.
pub fn service_child_kinds(capabilities: Capabilities) -> Vec<ApiResource> {
    let mut kinds = vec![
        ApiResource::erase::<Deployment>(&()),
        ApiResource::erase::<Service>(&()),
        ApiResource::erase::<HorizontalPodAutoscaler>(&()),
        ApiResource::erase::<Ingress>(&()),
    ];
    if capabilities.routes {
        kinds.push(crate::render::route_resource());
    }
    if capabilities.service_monitors {
        kinds.push(crate::render::service_monitor_resource());
    }
    if capabilities.gateway {
        kinds.push(crate::render::routing::http_route_resource());
    }
    if capabilities.inference_pools {
        kinds.push(crate::render::routing::inference_pool_resource());
    }
    if capabilities.kserve {
        kinds.push(crate::render::routing::inference_service_resource());
    }
    if capabilities.leader_worker_sets {
        kinds.push(crate::render::leader_worker_set_resource());
    }
    if capabilities.dra {
        kinds.push(ApiResource::erase::<crate::render::dra::ResourceClaimTemplate>(&()));
    }
    kinds
}

type Meta = PartialObjectMeta<DynamicObject>;

/// Kinds from CRDs of other projects (Route, ServiceMonitor, HTTPRoute, InferencePool,
/// InferenceService), which may come and go.
fn optional(ar: &ApiResource) -> bool {
    matches!(
        ar.group.as_str(),
        "route.openshift.io"
            | "monitoring.coreos.com"
            | "gateway.networking.k8s.io"
            | "inference.networking.k8s.io"
            | "serving.kserve.io"
            | crate::render::lws::LWS_GROUP
            | "resource.k8s.io"
    )
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

/// Which cached children each owner controls, by owner UID, kept beside the cache: finding a
/// service's children walks no other object (every reconcile asks, and walking the cache made a
/// cold start over N services cost N² steps).
#[derive(Default)]
struct Owners {
    current: OwnerIndex,
    /// Built during a relist, replacing `current` when it is complete (as the store does).
    relisting: Option<OwnerIndex>,
}

type Key = (String, String);

#[derive(Default)]
struct OwnerIndex {
    by_owner: HashMap<String, BTreeSet<Key>>,
    owner_of: HashMap<Key, String>,
}

impl OwnerIndex {
    fn key(meta: &ObjectMeta) -> Key {
        (meta.namespace.clone().unwrap_or_default(), meta.name.clone().unwrap_or_default())
    }

    fn remove(&mut self, key: &Key) {
        if let Some(uid) = self.owner_of.remove(key)
            && let Some(set) = self.by_owner.get_mut(&uid)
        {
            set.remove(key);
            if set.is_empty() {
                self.by_owner.remove(&uid);
            }
        }
    }

    /// Files the object under its controller (its owner reference may have changed).
    fn upsert(&mut self, meta: &ObjectMeta) {
        let key = OwnerIndex::key(meta);
        self.remove(&key);
        if let Some(o) = meta.owner_references.iter().flatten().find(|o| o.controller == Some(true)) {
            self.by_owner.entry(o.uid.clone()).or_default().insert(key.clone());
            self.owner_of.insert(key, o.uid.clone());
        }
    }
}

impl Owners {
    fn observe<K: kube::Resource>(&mut self, event: &watcher::Event<K>) {
        match event {
            watcher::Event::Init => self.relisting = Some(OwnerIndex::default()),
            watcher::Event::InitApply(o) => self.relisting.as_mut().unwrap_or(&mut self.current).upsert(o.meta()),
            watcher::Event::InitDone => {
                if let Some(fresh) = self.relisting.take() {
                    self.current = fresh;
                }
            }
            watcher::Event::Apply(o) => self.current.upsert(o.meta()),
            watcher::Event::Delete(o) => self.current.remove(&OwnerIndex::key(o.meta())),
        }
    }

    fn of(&self, uid: &str) -> Vec<Key> {
        self.current.by_owner.get(uid).map(|s| s.iter().cloned().collect()).unwrap_or_default()
    }
}

/// One cached kind: metadata only, or (Deployments, LeaderWorkerSets) the object without its pod
/// templates, which the status reads; and who owns what in it.
struct Cache {
    store: CacheStore,
    owners: Arc<Mutex<Owners>>,
}

enum CacheStore {
    Meta(Store<Meta>),
    Deployments(Store<Deployment>),
    Groups(Store<DynamicObject>),
}

impl Cache {
    fn store_ready(&self) -> bool {
        let ready = match &self.store {
            CacheStore::Meta(s) => s.wait_until_ready().now_or_never(),
            CacheStore::Deployments(s) => s.wait_until_ready().now_or_never(),
            CacheStore::Groups(s) => s.wait_until_ready().now_or_never(),
        };
        ready.is_some_and(|r| r.is_ok())
    }

    async fn listed(&self) -> bool {
        match &self.store {
            CacheStore::Meta(s) => s.wait_until_ready().await.is_ok(),
            CacheStore::Deployments(s) => s.wait_until_ready().await.is_ok(),
            CacheStore::Groups(s) => s.wait_until_ready().await.is_ok(),
        }
    }

    fn meta(&self, ar: &ApiResource, namespace: &str, name: &str) -> Option<ObjectMeta> {
        match &self.store {
            CacheStore::Meta(s) => {
                s.get(&ObjectRef::new_with(name, ar.clone()).within(namespace)).map(|o| o.metadata.clone())
            }
            CacheStore::Deployments(s) => s.get(&ObjectRef::new(name).within(namespace)).map(|d| d.metadata.clone()),
            CacheStore::Groups(s) => {
                s.get(&ObjectRef::new_with(name, ar.clone()).within(namespace)).map(|o| o.metadata.clone())
            }
        }
    }

    /// Names of the children in `namespace` controlled by `uid` and not being deleted.
    fn owned(&self, ar: &ApiResource, namespace: &str, uid: &str) -> Vec<String> {
        let candidates = self.owners.lock().unwrap_or_else(|e| e.into_inner()).of(uid);
        let metas: Vec<ObjectMeta> = candidates
            .into_iter()
            .filter(|(ns, _)| ns == namespace)
            .filter_map(|(ns, name)| self.meta(ar, &ns, &name))
            .collect();
        owned_names(&metas, namespace, uid)
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
    owners: Arc<Mutex<Owners>>,
    slim: fn(&mut K),
) where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    let events = reflector::reflector(writer, watcher(api, ours()).backoff(watch_backoff()).modify(slim));
    tokio::spawn(async move {
        futures::pin_mut!(events);
        while let Some(event) = events.next().await {
            let Ok(event) = event else { continue };
            owners.lock().unwrap_or_else(|e| e.into_inner()).observe(&event);
            if let watcher::Event::Apply(o) | watcher::Event::InitApply(o) | watcher::Event::Delete(o) = &event {
                wakes.send(Touched::of(&kind, o.meta())).await;
            }
        }
    });
}

/// Only what the status reads of a LeaderWorkerSet: metadata (managedFields slimmed),
/// generation, status and replicas.
fn slim_group(o: &mut DynamicObject) {
    slim_managed_fields(&mut o.metadata);
    if let Some(spec) = o.data.get_mut("spec").and_then(|s| s.as_object_mut()) {
        spec.retain(|k, _| k == "replicas");
    }
}

/// Only what the status and the apply verdict read: metadata (managedFields slimmed), status
/// and replicas.
fn slim(d: &mut Deployment) {
    slim_managed_fields(&mut d.metadata);
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
                let owners = Arc::new(Mutex::new(Owners::default()));
                let store = if ar.kind == "Deployment" {
                    let api: Api<Deployment> = match namespace {
                        Some(ns) => Api::namespaced(client.clone(), ns),
                        None => Api::all(client.clone()),
                    };
                    let (store, writer) = reflector::store();
                    cache_and_wake(api, writer, ar.kind.clone(), wakes.clone(), owners.clone(), slim);
                    CacheStore::Deployments(store)
                } else if ar.group == crate::render::lws::LWS_GROUP {
                    let api: Api<DynamicObject> = match namespace {
                        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
                        None => Api::all_with(client.clone(), &ar),
                    };
                    let writer = reflector::store::Writer::<DynamicObject>::new(ar.clone());
                    let store = writer.as_reader();
                    cache_and_wake(api, writer, ar.kind.clone(), wakes.clone(), owners.clone(), slim_group);
                    CacheStore::Groups(store)
                } else {
                    let api: Api<Meta> = match namespace {
                        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
                        None => Api::all_with(client.clone(), &ar),
                    };
                    let writer = reflector::store::Writer::<Meta>::new(ar.clone());
                    let store = writer.as_reader();
                    cache_and_wake(api, writer, ar.kind.clone(), wakes.clone(), owners.clone(), |m| {
                        slim_managed_fields(&mut m.metadata)
                    });
                    CacheStore::Meta(store)
                };
                (ar, Cache { store, owners })
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
        let (ar, cache) = self.cache(kind)?;
        Some(cache.owned(ar, namespace, uid))
    }

    /// The cached kinds, in a fixed order.
    pub fn kinds(&self) -> impl Iterator<Item = &ApiResource> {
        self.kinds.iter().map(|(ar, _)| ar)
    }

    /// Our LeaderWorkerSet of that name, without its templates; None when the API is absent.
    pub fn group(&self, namespace: &str, name: &str) -> Option<Arc<DynamicObject>> {
        self.kinds.iter().find_map(|(ar, c)| match &c.store {
            CacheStore::Groups(s) => s.get(&ObjectRef::new_with(name, ar.clone()).within(namespace)),
            CacheStore::Meta(_) | CacheStore::Deployments(_) => None,
        })
    }

    /// Our Deployment of that name, without its pod template.
    pub fn deployment(&self, namespace: &str, name: &str) -> Option<Arc<Deployment>> {
        self.kinds.iter().find_map(|(_, c)| match &c.store {
            CacheStore::Deployments(s) => s.get(&ObjectRef::new(name).within(namespace)),
            CacheStore::Meta(_) | CacheStore::Groups(_) => None,
        })
    }
}

/// The names among `metas` in `namespace`, controlled by `uid` and not being deleted.
pub fn owned_names<'a>(metas: impl IntoIterator<Item = &'a ObjectMeta>, namespace: &str, uid: &str) -> Vec<String> {
    metas
        .into_iter()
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

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    fn child(name: &str, owner: Option<&str>) -> Deployment {
        let mut m = Deployment::default();
        m.metadata.name = Some(name.into());
        m.metadata.namespace = Some("team".into());
        m.metadata.owner_references =
            owner.map(|uid| vec![OwnerReference { uid: uid.into(), controller: Some(true), ..Default::default() }]);
        m
    }

    fn names(owners: &Owners, uid: &str) -> Vec<String> {
        owners.of(uid).into_iter().map(|(_, n)| n).collect()
    }

    #[test]
    fn a_service_finds_its_children_through_relists_owner_changes_and_deletions() {
        let mut owners = Owners::default();
        owners.observe(&watcher::Event::<Deployment>::Init);
        owners.observe(&watcher::Event::InitApply(child("llm", Some("u1"))));
        owners.observe(&watcher::Event::InitApply(child("chat", Some("u2"))));
        owners.observe(&watcher::Event::InitApply(child("loose", None)));
        assert!(names(&owners, "u1").is_empty(), "a relist counts once it is complete");
        owners.observe(&watcher::Event::<Deployment>::InitDone);
        assert_eq!(names(&owners, "u1"), ["llm"]);
        owners.observe(&watcher::Event::Apply(child("llm-hpa", Some("u1"))));
        assert_eq!(names(&owners, "u1"), ["llm", "llm-hpa"]);
        owners.observe(&watcher::Event::Apply(child("chat", Some("u1"))));
        assert_eq!(names(&owners, "u1"), ["chat", "llm", "llm-hpa"], "its owner reference moved");
        assert!(names(&owners, "u2").is_empty());
        owners.observe(&watcher::Event::Delete(child("llm-hpa", Some("u1"))));
        assert_eq!(names(&owners, "u1"), ["chat", "llm"]);
        // A relist after the watch broke drops what was deleted meanwhile.
        owners.observe(&watcher::Event::<Deployment>::Init);
        owners.observe(&watcher::Event::InitApply(child("llm", Some("u1"))));
        owners.observe(&watcher::Event::<Deployment>::InitDone);
        assert_eq!(names(&owners, "u1"), ["llm"]);
    }
}
