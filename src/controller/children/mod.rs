//! Caches of the children the operator labels as its own — a compact [`Record`] of each, not the
//! object — and what we last applied to each. They answer "is this ours", "does it already carry
//! what we would apply", "did someone change it since" and "what do we own that is no longer
//! rendered" without a GET per child per reconcile.

mod record;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};

use futures::channel::mpsc;
use futures::{SinkExt, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{ApiResource, DynamicObject};
use kube::core::PartialObjectMeta;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};

use crate::api::OIMService;
use crate::controller::apply::key;
use crate::controller::decode;
use crate::controller::intern::Interner;
use crate::controller::watch::watch_backoff;
use crate::render::{Capabilities, FIELD_MANAGER};
use record::Record;

/// The watch filter for everything we create.
pub fn ours() -> watcher::Config {
    watcher::Config::default().labels(&format!("{MANAGED_BY}={FIELD_MANAGER}"))
}

const MANAGED_BY: &str = "app.kubernetes.io/managed-by";

/// Whether `meta` carries the label [`ours`] selects by.
fn is_ours(meta: &ObjectMeta) -> bool {
    meta.labels.as_ref().and_then(|l| l.get(MANAGED_BY)).map(String::as_str) == Some(FIELD_MANAGER)
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

/// A child's namespace (shared) and name.
type Key = (Arc<str>, Arc<str>);

/// The records of one kind, and which of them each owner controls, by owner UID: finding a
/// service's children walks no other object (every reconcile asks, and walking the cache made a
/// cold start over N services cost N² steps).
#[derive(Default)]
struct Index {
    records: HashMap<Key, Record>,
    by_owner: HashMap<Arc<str>, BTreeSet<Key>>,
}

impl Index {
    fn remove(&mut self, key: &Key) {
        let Some(old) = self.records.remove(key) else { return };
        if let Some(uid) = old.controller_uid()
            && let Some(set) = self.by_owner.get_mut(uid)
        {
            set.remove(key);
            if set.is_empty() {
                self.by_owner.remove(uid);
            }
        }
    }

    /// Files the record under its controller (its owner reference may have changed).
    fn upsert(&mut self, key: Key, record: Record) {
        self.remove(&key);
        if let Some(uid) = record.controller_uid() {
            self.by_owner.entry(uid.clone()).or_default().insert(key.clone());
        }
        self.records.insert(key, record);
    }
}

/// One kind's index as the watch fills it: a relist builds a fresh index that replaces the
/// current one when complete (until then readers see the last complete one).
#[derive(Default)]
struct Store {
    current: Index,
    relisting: Option<Index>,
}

/// One cached kind: its records, and whether it has listed once.
struct Cache {
    store: RwLock<Store>,
    listed: tokio::sync::watch::Sender<bool>,
}

impl Cache {
    fn new() -> Cache {
        Cache { store: RwLock::default(), listed: tokio::sync::watch::Sender::new(false) }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Store> {
        self.store.read().unwrap_or_else(|e| e.into_inner())
    }

    fn observe<K: kube::Resource>(&self, event: &watcher::Event<K>, record: impl Fn(&K) -> Record, strings: &Interner) {
        let key = |o: &K| -> Key {
            let meta = o.meta();
            (
                strings.get(meta.namespace.as_deref().unwrap_or_default()),
                meta.name.as_deref().unwrap_or_default().into(),
            )
        };
        let mut store = self.store.write().unwrap_or_else(|e| e.into_inner());
        match event {
            watcher::Event::Init => store.relisting = Some(Index::default()),
            watcher::Event::InitApply(o) => {
                let Store { current, relisting } = &mut *store;
                relisting.as_mut().unwrap_or(current).upsert(key(o), record(o));
            }
            watcher::Event::InitDone => {
                let old = store.relisting.take().map(|fresh| std::mem::replace(&mut store.current, fresh));
                drop(store);
                // Freed without the lock: at scale the old index is 10,000 records.
                drop(old);
                self.listed.send_replace(true);
            }
            watcher::Event::Apply(o) => store.current.upsert(key(o), record(o)),
            watcher::Event::Delete(o) => store.current.remove(&key(o)),
        }
    }

    fn has_listed(&self) -> bool {
        *self.listed.borrow()
    }

    async fn listed(&self) -> bool {
        self.listed.subscribe().wait_for(|listed| *listed).await.is_ok()
    }

    fn get<T>(&self, namespace: &str, name: &str, read: impl FnOnce(&Record) -> T) -> Option<T> {
        let store = self.read();
        // A borrowed (&str, &str) cannot look up an (Arc<str>, Arc<str>) key.
        let key: Key = (namespace.into(), name.into());
        store.current.records.get(&key).map(read)
    }

    /// Names of the children in `namespace` controlled by `uid` and not being deleted.
    fn owned(&self, namespace: &str, uid: &str) -> Vec<String> {
        let store = self.read();
        let Some(keys) = store.current.by_owner.get(uid) else { return vec![] };
        keys.iter()
            .filter(|(ns, _)| &**ns == namespace)
            .filter(|k| store.current.records.get(*k).is_some_and(|r| !r.deleting()))
            .map(|(_, name)| name.to_string())
            .collect()
    }
}

/// Children in one watched scope. One watch per kind both fills the cache and wakes the owner,
/// in that order: a woken reconcile always reads the change that woke it (with a second watch
/// for wakes, a reconcile could run on a cache that had not caught up, and nothing woke it
/// again; after an API server restart that left services NotReady for good).
pub struct Children {
    kinds: Vec<(ApiResource, Arc<Cache>)>,
    wakes: Arc<Wakes>,
}

/// The mark of each child (`apply::key`) as we last applied or first saw it.
type Marks = Mutex<HashMap<String, String>>;

/// What one kind's watch task updates besides its cache.
#[derive(Clone)]
struct Shared {
    wakes: Arc<Wakes>,
    strings: Arc<Interner>,
    marks: Arc<Marks>,
}

/// Fills `cache` from the watch of `api` and forwards every change to the owner; a deleted
/// child's mark goes with it.
fn cache_and_wake<K>(api: Api<K>, cache: Arc<Cache>, kind: String, shared: Shared, record: fn(&K, &Interner) -> Record)
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    let events = watcher(api, ours()).backoff(watch_backoff());
    tokio::spawn(async move {
        futures::pin_mut!(events);
        while let Some(event) = events.next().await {
            let Ok(event) = event else { continue };
            // Dropped before the cache changes, so a reconcile woken in between cannot record a
            // mark that is then lost. Only a real deletion: a child whose managed-by label was
            // removed leaves the watch too, and its mark must still tell that it changed.
            if let watcher::Event::Delete(o) = &event
                && is_ours(o.meta())
            {
                let meta = o.meta();
                let gone =
                    key(&kind, meta.namespace.as_deref().unwrap_or_default(), meta.name.as_deref().unwrap_or_default());
                shared.marks.lock().unwrap_or_else(|e| e.into_inner()).remove(&gone);
            }
            cache.observe(&event, |o| record(o, &shared.strings), &shared.strings);
            if let watcher::Event::Apply(o) | watcher::Event::InitApply(o) | watcher::Event::Delete(o) = &event {
                shared.wakes.send(Touched::of(&kind, o.meta())).await;
            }
        }
    });
}

impl Children {
    /// Starts the caches for one namespace (None: all).
    fn watch(client: &Client, namespace: Option<&str>, capabilities: Capabilities, marks: Arc<Marks>) -> Children {
        let wakes = Arc::new(Wakes::default());
        let shared = Shared { wakes: wakes.clone(), strings: Arc::new(Interner::default()), marks };
        let kinds = service_child_kinds(capabilities)
            .into_iter()
            .map(|ar| {
                let cache = Arc::new(Cache::new());
                let (kind, shared) = (ar.kind.clone(), shared.clone());
                if ar.kind == "Deployment" {
                    let api: Api<Deployment> = match namespace {
                        Some(ns) => Api::namespaced(client.clone(), ns),
                        None => Api::all(client.clone()),
                    };
                    cache_and_wake(api, cache.clone(), kind, shared, Record::deployment);
                } else if ar.group == crate::render::lws::LWS_GROUP {
                    let api: Api<DynamicObject> = match namespace {
                        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
                        None => Api::all_with(client.clone(), &ar),
                    };
                    cache_and_wake(api, cache.clone(), kind, shared, Record::group);
                } else {
                    let api: Api<Meta> = match namespace {
                        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
                        None => Api::all_with(client.clone(), &ar),
                    };
                    cache_and_wake(api, cache.clone(), kind, shared, |m, s| Record::meta(&m.metadata, s));
                }
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
    fn cache(&self, kind: &str) -> Option<&(ApiResource, Arc<Cache>)> {
        self.kinds.iter().find(|(ar, _)| ar.kind == kind).filter(|(_, c)| c.has_listed())
    }

    /// The metadata of our child, as cached: `Some(None)` when it is not there (or not labelled
    /// ours), `None` when its kind is not cached and the caller must look it up.
    pub fn meta(&self, kind: &str, namespace: &str, name: &str) -> Option<Option<ObjectMeta>> {
        let (_, cache) = self.cache(kind)?;
        Some(cache.get(namespace, name, |r| r.to_meta(namespace, name)))
    }

    /// Our children of `kind` in `namespace` controlled by the owner with `uid`; None when that
    /// kind's cache has not listed (the caller asks the API).
    pub fn owned_by(&self, kind: &str, namespace: &str, uid: &str) -> Option<Vec<String>> {
        let (_, cache) = self.cache(kind)?;
        Some(cache.owned(namespace, uid))
    }

    /// The cached kinds, in a fixed order.
    pub fn kinds(&self) -> impl Iterator<Item = &ApiResource> {
        self.kinds.iter().map(|(ar, _)| ar)
    }

    /// Our LeaderWorkerSet of that name, without its templates; None when the API is absent.
    pub fn group(&self, namespace: &str, name: &str) -> Option<Arc<DynamicObject>> {
        let (ar, cache) = self.kinds.iter().find(|(ar, _)| ar.group == crate::render::lws::LWS_GROUP)?;
        cache.get(namespace, name, |r| r.to_group(ar, namespace, name)).flatten().map(Arc::new)
    }

    /// Our Deployment of that name, without its pod template.
    pub fn deployment(&self, namespace: &str, name: &str) -> Option<Arc<Deployment>> {
        let (_, cache) = self.kinds.iter().find(|(ar, _)| ar.kind == "Deployment")?;
        cache.get(namespace, name, |r| r.to_deployment(namespace, name)).flatten().map(Arc::new)
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
    applied: Arc<Marks>,
}

impl ChildCaches {
    /// Caches for `scopes`.
    pub fn watch(client: &Client, scopes: &[Option<String>], capabilities: Capabilities) -> ChildCaches {
        let applied = Arc::new(Marks::default());
        let scopes =
            scopes.iter().map(|s| (s.clone(), Children::watch(client, s.as_deref(), capabilities, applied.clone())));
        ChildCaches { scopes: scopes.collect(), applied }
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

    fn names(cache: &Cache, uid: &str) -> Vec<String> {
        cache.owned("team", uid)
    }

    #[test]
    fn a_service_finds_its_children_through_relists_owner_changes_and_deletions() {
        let (cache, strings) = (Cache::new(), Interner::default());
        let observe = |e: watcher::Event<Deployment>| cache.observe(&e, |d| Record::deployment(d, &strings), &strings);
        observe(watcher::Event::Init);
        observe(watcher::Event::InitApply(child("llm", Some("u1"))));
        observe(watcher::Event::InitApply(child("chat", Some("u2"))));
        observe(watcher::Event::InitApply(child("loose", None)));
        assert!(names(&cache, "u1").is_empty(), "a relist counts once it is complete");
        assert!(!cache.has_listed());
        observe(watcher::Event::InitDone);
        assert!(cache.has_listed());
        assert_eq!(names(&cache, "u1"), ["llm"]);
        observe(watcher::Event::Apply(child("llm-hpa", Some("u1"))));
        assert_eq!(names(&cache, "u1"), ["llm", "llm-hpa"]);
        observe(watcher::Event::Apply(child("chat", Some("u1"))));
        assert_eq!(names(&cache, "u1"), ["chat", "llm", "llm-hpa"], "its owner reference moved");
        assert!(names(&cache, "u2").is_empty());
        assert!(cache.owned("elsewhere", "u1").is_empty(), "another namespace's");
        observe(watcher::Event::Delete(child("llm-hpa", Some("u1"))));
        assert_eq!(names(&cache, "u1"), ["chat", "llm"]);
        let mut leaving = child("chat", Some("u1"));
        leaving.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        observe(watcher::Event::Apply(leaving));
        assert_eq!(names(&cache, "u1"), ["llm"], "being deleted");
        // A relist after the watch broke drops what was deleted meanwhile; until it completes,
        // readers see the last complete listing.
        observe(watcher::Event::Init);
        observe(watcher::Event::InitApply(child("llm", Some("u1"))));
        assert!(cache.get("team", "loose", |_| ()).is_some());
        observe(watcher::Event::InitDone);
        assert!(cache.get("team", "loose", |_| ()).is_none());
        assert_eq!(names(&cache, "u1"), ["llm"]);
    }
}
