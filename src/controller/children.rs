//! Caches of the children the operator labels as its own — metadata only, plus the Deployments'
//! status — and what we last applied to each. They answer "is this ours", "does it already carry
//! what we would apply", "did someone change it since" and "what do we own that is no longer
//! rendered" without a GET per child per reconcile.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::{FutureExt, StreamExt};
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

/// Children in one watched scope: metadata per kind, and the Deployments (without their pod
/// template) for the status.
pub struct Children {
    kinds: Vec<(ApiResource, Store<Meta>)>,
    deployments: Store<Deployment>,
}

fn metadata_cache(api: Api<Meta>, ar: &ApiResource) -> Store<Meta> {
    let writer = reflector::store::Writer::<Meta>::new(ar.clone());
    let store = writer.as_reader();
    let stream = reflector::reflector(writer, watcher(api, ours()).default_backoff()).touched_objects();
    tokio::spawn(stream.for_each(|_| async {}));
    store
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
        let kinds = service_child_kinds(capabilities)
            .into_iter()
            .map(|ar| {
                let api = match namespace {
                    Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
                    None => Api::all_with(client.clone(), &ar),
                };
                let store = metadata_cache(api, &ar);
                (ar, store)
            })
            .collect();
        let api: Api<Deployment> = match namespace {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        };
        let (deployments, writer) = reflector::store();
        let stream =
            reflector::reflector(writer, watcher(api, ours()).default_backoff().modify(slim)).touched_objects();
        tokio::spawn(stream.for_each(|_| async {}));
        Children { kinds, deployments }
    }

    /// Whether every cache of a built-in kind has its first full listing. Route and
    /// ServiceMonitor caches are not waited for: their CRDs may be removed after start, and a
    /// cache that cannot list must not hold every reconcile (their lookups go to the API then).
    pub async fn ready(&self) -> bool {
        for (ar, s) in &self.kinds {
            if !optional(ar) && s.wait_until_ready().await.is_err() {
                return false;
            }
        }
        self.deployments.wait_until_ready().await.is_ok()
    }

    /// The cache of `kind`, once it has listed.
    fn store(&self, kind: &str) -> Option<&(ApiResource, Store<Meta>)> {
        self.kinds
            .iter()
            .find(|(ar, _)| ar.kind == kind)
            .filter(|(_, s)| s.wait_until_ready().now_or_never().is_some_and(|r| r.is_ok()))
    }

    /// The metadata of our child, as cached: `Some(None)` when it is not there (or not labelled
    /// ours), `None` when its kind is not cached and the caller must look it up.
    pub fn meta(&self, kind: &str, namespace: &str, name: &str) -> Option<Option<ObjectMeta>> {
        let (ar, store) = self.store(kind)?;
        let key = ObjectRef::new_with(name, ar.clone()).within(namespace);
        Some(store.get(&key).map(|o| o.metadata.clone()))
    }

    /// Our children of `kind` in `namespace` controlled by the owner with `uid`; None when that
    /// kind's cache has not listed (the caller asks the API).
    pub fn owned_by(&self, kind: &str, namespace: &str, uid: &str) -> Option<Vec<String>> {
        let (_, store) = self.store(kind)?;
        let metas: Vec<ObjectMeta> = store.state().iter().map(|o| o.metadata.clone()).collect();
        Some(owned_names(&metas, namespace, uid))
    }

    /// The cached kinds, in a fixed order.
    pub fn kinds(&self) -> impl Iterator<Item = &ApiResource> {
        self.kinds.iter().map(|(ar, _)| ar)
    }

    /// Our Deployment of that name, without its pod template.
    pub fn deployment(&self, namespace: &str, name: &str) -> Option<Arc<Deployment>> {
        self.deployments.get(&ObjectRef::new(name).within(namespace))
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
