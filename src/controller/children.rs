//! Metadata-only caches of the children the operator labels as its own, so deciding "this object
//! already carries what we would apply" needs no GET per child per reconcile.

use std::collections::HashMap;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};

use crate::controller::apply::APPLIED_HASH;
use crate::render::FIELD_MANAGER;

/// Children of every service, by kind: metadata only, and only ours (by label).
pub struct Children {
    deployments: Store<PartialObjectMeta<Deployment>>,
    services: Store<PartialObjectMeta<Service>>,
    config_maps: Store<PartialObjectMeta<ConfigMap>>,
    service_accounts: Store<PartialObjectMeta<ServiceAccount>>,
}

fn cache<K>(api: Api<PartialObjectMeta<K>>) -> Store<PartialObjectMeta<K>>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let (store, writer) = reflector::store();
    let config = watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={FIELD_MANAGER}"));
    let stream = reflector::reflector(writer, watcher(api, config)).touched_objects();
    tokio::spawn(stream.for_each(|_| async {}));
    store
}

impl Children {
    /// Starts the caches for one namespace (None: all).
    pub fn watch(client: &Client, namespace: Option<&str>) -> Children {
        fn api<K>(client: &Client, ns: Option<&str>) -> Api<PartialObjectMeta<K>>
        where
            K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
        {
            match ns {
                Some(ns) => Api::namespaced(client.clone(), ns),
                None => Api::all(client.clone()),
            }
        }
        Children {
            deployments: cache(api::<Deployment>(client, namespace)),
            services: cache(api::<Service>(client, namespace)),
            config_maps: cache(api::<ConfigMap>(client, namespace)),
            service_accounts: cache(api::<ServiceAccount>(client, namespace)),
        }
    }

    /// Whether every cache has its first full listing.
    pub async fn ready(&self) -> bool {
        self.deployments.wait_until_ready().await.is_ok()
            && self.services.wait_until_ready().await.is_ok()
            && self.config_maps.wait_until_ready().await.is_ok()
            && self.service_accounts.wait_until_ready().await.is_ok()
    }

    /// The applied hash of a child as cached: `Some(None)` when it does not exist (or carries
    /// no hash), `None` when its kind is not cached and the caller must look it up.
    pub fn applied_hash(&self, kind: &str, namespace: &str, name: &str) -> Option<Option<String>> {
        fn hash<K>(s: &Store<PartialObjectMeta<K>>, ns: &str, name: &str) -> Option<String>
        where
            K: Resource<DynamicType = ()> + Clone,
        {
            s.get(&ObjectRef::new(name).within(ns))
                .and_then(|o| o.metadata.annotations.as_ref().and_then(|a| a.get(APPLIED_HASH)).cloned())
        }
        Some(match kind {
            "Deployment" => hash(&self.deployments, namespace, name),
            "Service" => hash(&self.services, namespace, name),
            "ConfigMap" => hash(&self.config_maps, namespace, name),
            "ServiceAccount" => hash(&self.service_accounts, namespace, name),
            _ => return None,
        })
    }
}

/// The caches per watched scope: one entry keyed None for all namespaces, or one per namespace.
#[derive(Default)]
pub struct ChildCaches(HashMap<Option<String>, Children>);

impl ChildCaches {
    /// Caches for `scopes`.
    pub fn watch(client: &Client, scopes: &[Option<String>]) -> ChildCaches {
        ChildCaches(scopes.iter().map(|s| (s.clone(), Children::watch(client, s.as_deref()))).collect())
    }

    /// The caches covering `namespace`.
    pub fn of(&self, namespace: &str) -> Option<&Children> {
        self.0.get(&Some(namespace.to_string())).or_else(|| self.0.get(&None))
    }
}
