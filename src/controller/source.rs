//! Where a service's profiles come from: the operator's default catalog, or the registry its
//! `spec.profile.source` names — only when that registry is on `--allowed-registries`, with
//! credentials from the service's own dockerconfigjson Secret.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use oci_client::secrets::RegistryAuth;

use crate::api::ProfileSource;
use crate::profile::catalog::{Catalog, OciCatalog};
use crate::profile::oci::{self, RegistryRef};

/// Why a service's source cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The spec names something the operator refuses: not retried until the spec changes.
    #[error("{0}")]
    Refused(String),
    /// Something may appear later (the Secret): retried.
    #[error("{0}")]
    Missing(String),
    /// The API server failed.
    #[error("kubernetes: {0}")]
    Kube(#[from] kube::Error),
}

/// Per-service catalogs kept at most (each holds bounded tag and digest caches); the least
/// recently used is forgotten first.
pub const MAX_SOURCES: usize = 64;

/// Registry lookups in flight at most, across all reconciles; see [`Sources::lookup`].
pub const REGISTRY_SLOTS: usize = 4;

/// How long a reconcile waits for a registry slot before it gives up its reconcile slot.
const REGISTRY_WAIT: Duration = Duration::from_secs(5);

/// The default catalog plus one catalog per distinct per-service source, kept so their tag and
/// digest caches survive between reconciles.
pub struct Sources {
    default: Arc<Catalog>,
    allowed: Vec<String>,
    ttl: Duration,
    by_source: Mutex<Lru>,
    registry_slots: tokio::sync::Semaphore,
}

/// Catalogs by source key, with their last use.
#[derive(Default)]
struct Lru(HashMap<String, (Arc<Catalog>, std::time::Instant)>);

impl Lru {
    fn get(&mut self, key: &str) -> Option<Arc<Catalog>> {
        let (c, used) = self.0.get_mut(key)?;
        *used = std::time::Instant::now();
        Some(c.clone())
    }

    fn insert(&mut self, key: String, catalog: Arc<Catalog>) {
        self.0.insert(key, (catalog, std::time::Instant::now()));
        while self.0.len() > MAX_SOURCES {
            let Some(oldest) = self.0.iter().min_by_key(|(_, (_, used))| *used).map(|(k, _)| k.clone()) else { break };
            self.0.remove(&oldest);
        }
    }
}

impl Sources {
    /// `default` serves services without a source; `allowed` is `--allowed-registries`.
    pub fn new(default: Catalog, allowed: Vec<String>, ttl: Duration) -> Sources {
        Sources {
            default: Arc::new(default),
            allowed,
            ttl,
            by_source: Mutex::default(),
            registry_slots: tokio::sync::Semaphore::new(REGISTRY_SLOTS),
        }
    }

    /// Runs registry `work` for `catalog` within the registry budget: at most [`REGISTRY_SLOTS`]
    /// lookups at once, so slow registries (each request has its own deadline) cannot hold
    /// every reconcile slot; services whose registry answers keep converging. When no slot
    /// frees within a few seconds the lookup is not made and the caller retries later.
    pub async fn lookup<T>(&self, catalog: &Catalog, work: impl std::future::Future<Output = T>) -> Result<T, String> {
        if matches!(catalog, Catalog::Dir(_)) {
            return Ok(work.await);
        }
        match tokio::time::timeout(REGISTRY_WAIT, self.registry_slots.acquire()).await {
            Ok(Ok(_slot)) => Ok(work.await),
            _ => Err(format!(
                "{}: not asked: all {REGISTRY_SLOTS} registry lookups are busy with slow registries; retried shortly",
                catalog.location()
            )),
        }
    }

    /// How often a resolved tag is looked at again; a Ready service is revisited this often so
    /// `updatePolicy` sees re-published profiles.
    pub fn refresh(&self) -> Duration {
        self.ttl
    }

    /// The catalog for a service in `namespace` with `source`.
    pub async fn for_service(
        &self,
        client: &kube::Client,
        namespace: &str,
        source: Option<&ProfileSource>,
    ) -> Result<Arc<Catalog>, SourceError> {
        let Some(src) = source else { return Ok(self.default.clone()) };
        let registry = registry_of(src)?;
        if !registry.allowed_by(&self.allowed) {
            let list = if self.allowed.is_empty() { "empty".to_string() } else { self.allowed.join(", ") };
            return Err(SourceError::Refused(format!(
                "spec.profile.source: registry {registry} is not on the operator's --allowed-registries ({list}); ask the platform team to allow it, or remove spec.profile.source to use the default registry"
            )));
        }
        let (auth, version) = match &src.credentials_secret {
            Some(name) => credentials(client, namespace, name, &registry.host).await?,
            None => (RegistryAuth::Anonymous, String::new()),
        };
        let insecure =
            registry.plain_http(src.insecure.unwrap_or(false), &self.allowed).map_err(SourceError::Refused)?;
        // A rotated Secret (new resourceVersion) gets a fresh client.
        let key =
            format!("{registry}|{insecure}|{namespace}/{}@{version}", src.credentials_secret.as_deref().unwrap_or(""));
        if let Some(c) = self.by_source.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return Ok(c);
        }
        let catalog = OciCatalog::new(registry, auth, insecure, self.ttl)
            .map_err(|e| SourceError::Refused(format!("spec.profile.source: {e}")))?;
        let catalog = Arc::new(Catalog::Oci(Box::new(catalog)));
        self.by_source.lock().unwrap_or_else(|e| e.into_inner()).insert(key, catalog.clone());
        Ok(catalog)
    }
}

fn registry_of(src: &ProfileSource) -> Result<RegistryRef, SourceError> {
    let text = match src.repository.as_deref().filter(|r| !r.is_empty()) {
        Some(repo) => format!("{}/{}", src.registry, repo.trim_matches('/')),
        None => src.registry.clone(),
    };
    RegistryRef::parse(&text).map_err(|_| {
        SourceError::Refused(format!(
            "spec.profile.source: {text:?} is not a registry reference; expected registry host[:port] and a lowercase repository prefix, e.g. registry: registry.example.com:5000, repository: oim/profiles"
        ))
    })
}

async fn credentials(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    host: &str,
) -> Result<(RegistryAuth, String), SourceError> {
    let field = "spec.profile.source.credentialsSecret";
    let secret = Api::<Secret>::namespaced(client.clone(), namespace).get_opt(name).await?.ok_or_else(|| {
        SourceError::Missing(format!(
            "{field}: Secret {namespace}/{name} does not exist; create it with `kubectl create secret docker-registry {name} --docker-server={host} ...`"
        ))
    })?;
    let json = secret.data.as_ref().and_then(|d| d.get(".dockerconfigjson")).ok_or_else(|| {
        SourceError::Refused(format!(
            "{field}: Secret {namespace}/{name} has no .dockerconfigjson key; it must be of type kubernetes.io/dockerconfigjson"
        ))
    })?;
    let auth = oci::auth_from_docker_config(&json.0, host)
        .map_err(|e| SourceError::Refused(format!("{field}: Secret {namespace}/{name}: {e}")))?;
    Ok((auth, secret.metadata.resource_version.unwrap_or_default()))
}
