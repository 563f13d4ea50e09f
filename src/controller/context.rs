//! What every reconcile shares (the `Context`), and why a reconcile fails (`Error`, whose
//! variants name the step and the object, and double as metric labels).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Client;
use kube::runtime::events::Recorder;
use kube::runtime::reflector::Store;

use crate::controller::children::ChildCaches;
use crate::controller::health::Health;
use crate::controller::metrics::Metrics;
use crate::controller::source::Sources;
use crate::profile::catalog::CatalogError;
use crate::profile::engines::Engines;
use crate::render::{Capabilities, Platform};

/// Why a reconcile failed: the step, the object and the API server's answer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading an object or a list failed.
    #[error("reading {what}: {source}")]
    Read {
        /// What was read, e.g. `OIMCache team/llama`.
        what: String,
        /// The API server's answer.
        source: kube::Error,
    },
    /// Applying a child was refused or failed.
    #[error("applying {kind} {name}: {source}")]
    Apply {
        /// Kind of the child.
        kind: String,
        /// Its name.
        name: String,
        /// The API server's answer.
        source: kube::Error,
    },
    /// Deleting a child that is no longer rendered (or a replaced Job) failed.
    #[error("deleting {kind} {name}: {source}")]
    Delete {
        /// Kind of the child.
        kind: String,
        /// Its name.
        name: String,
        /// The API server's answer.
        source: kube::Error,
    },
    /// Writing the status failed.
    #[error("patching the status of {kind} {name}: {source}")]
    StatusPatch {
        /// OIMService or OIMCache.
        kind: &'static str,
        /// Its name.
        name: String,
        /// The API server's answer.
        source: kube::Error,
    },
    /// The profile catalog could not be read.
    #[error("profiles: {0}")]
    Catalog(#[from] CatalogError),
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
            Error::Read { .. } => "read",
            Error::Apply { .. } => "apply",
            Error::Delete { .. } => "delete",
            Error::StatusPatch { .. } => "status_patch",
            Error::Catalog(_) => "catalog",
            Error::Finalizer(_) => "finalizer",
            Error::InUse(_) => "in_use",
        }
    }

    /// Whether retrying soon can help. A refusal of what we sent (invalid, forbidden by
    /// admission or quota) only changes when the spec or the cluster does: retried slowly. A
    /// read refused as unauthorised is not about what we sent: an API server that just restarted
    /// refuses everything until its RBAC cache has synced, so it backs off like any transient error.
    pub fn transient(&self) -> bool {
        if let Error::Read { source: kube::Error::Api(s), .. } = self
            && matches!(s.code, 401 | 403)
        {
            return true;
        }
        let api = match self {
            Error::Read { source, .. }
            | Error::Apply { source, .. }
            | Error::Delete { source, .. }
            | Error::StatusPatch { source, .. } => source,
            Error::InUse(_) => return false,
            _ => return true,
        };
        match api {
            kube::Error::Api(s) => matches!(s.code, 409 | 429) || s.code >= 500,
            _ => true,
        }
    }

    /// The API server's own message, for conditions and Events.
    pub fn server_message(&self) -> String {
        match self {
            Error::Apply { source: kube::Error::Api(s), .. } | Error::Delete { source: kube::Error::Api(s), .. } => {
                s.message.clone()
            }
            other => other.to_string(),
        }
    }
}

/// Reads name their object in the error.
pub trait ReadContext<T> {
    /// Tags a read error with what was read.
    fn reading(self, what: impl FnOnce() -> String) -> Result<T, Error>;
}

impl<T> ReadContext<T> for Result<T, kube::Error> {
    fn reading(self, what: impl FnOnce() -> String) -> Result<T, Error> {
        self.map_err(|source| Error::Read { what: what(), source })
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
    /// ResourceSlices, watched where the cluster serves `resource.k8s.io/v1` (DRA devices).
    pub slices: Option<Store<crate::hardware::slices::ResourceSlice>>,
    /// ResourceClaims, watched beside the slices (allocated DRA devices are not free).
    pub claims: Option<Store<crate::hardware::slices::ResourceClaim>>,
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
    /// Model facts from the hub, for models the built-in table does not know.
    pub hub: crate::controller::model::HubFacts,
    /// Caches of our children, and what we last applied to them.
    pub children: ChildCaches,
    /// Consecutive failures per object, for the backoff.
    pub failures: Backoff,
    /// Readiness and the stuck-reconcile watchdog.
    pub health: Arc<Health>,
    /// The shared node and pod view selection reads.
    pub placement: crate::controller::placement::Snapshots,
    /// Our own writes, so their watch events do not wake their owners again.
    pub echoes: crate::controller::echo::Echoes,
    /// The client's requests in flight, sized by the API server's latency.
    pub api_limit: crate::controller::limit::ApiLimit,
    /// Services waiting for a first look: while any wait, workloads are written first.
    pub backlog: crate::controller::priority::Backlog,
}

impl Context {
    /// Nodes and pods as selection sees them now (shared, rebuilt only after a change).
    pub fn placement(&self) -> Arc<crate::controller::placement::Placement> {
        self.placement.get(&self.nodes, &self.pods, self.slices.as_ref().zip(self.claims.as_ref()))
    }
}

impl Context {
    /// The image a cache's download Job runs: its `modelPuller`, else the operator's own.
    pub fn puller_image(&self, cache: &crate::api::OIMCache) -> String {
        cache.spec.source.hf.model_puller.clone().unwrap_or_else(|| self.own_image.clone())
    }
}

/// Consecutive failures per object: a transient error backs off exponentially with jitter (1 s
/// doubling to 5 min); a refusal waits 5 min (a spec change wakes the object sooner).
#[derive(Default)]
pub struct Backoff(Mutex<HashMap<String, u32>>);

impl Backoff {
    /// The delay before the next try of `key` after `err`, counting the failure.
    pub fn failed(&self, key: &str, err: &Error) -> Duration {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(key.to_string()).or_insert(0);
        *n = n.saturating_add(1);
        delay(*n, err.transient(), fastrand::f64())
    }

    /// The count recorded for `key` (0 when none).
    pub fn count(&self, key: &str) -> u32 {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).get(key).copied().unwrap_or(0)
    }

    /// Records `n` for `key` (e.g. the next attempt of a download).
    pub fn set_count(&self, key: &str, n: u32) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).insert(key.to_string(), n);
    }

    /// Forgets the failures of `key` after a successful reconcile.
    pub fn succeeded(&self, key: &str) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if !map.is_empty() {
            map.remove(key);
        }
    }
}

/// The delay after the `n`-th consecutive failure; `jitter` in [0, 1) spreads retries over
/// 50–150% of the nominal delay so many objects failing together do not retry together.
pub fn delay(n: u32, transient: bool, jitter: f64) -> Duration {
    const MAX: f64 = 300.0;
    let nominal = if transient { 2f64.powi(n.saturating_sub(1).min(16) as i32).min(MAX) } else { MAX };
    Duration::from_secs_f64((nominal * (0.5 + jitter)).min(MAX * 1.5))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(code: u16) -> Error {
        let status = kube::core::Status::failure("refused", "Invalid").with_code(code);
        Error::Apply { kind: "Deployment".into(), name: "llm".into(), source: kube::Error::Api(Box::new(status)) }
    }

    #[test]
    fn transient_errors_back_off_exponentially_with_jitter_and_refusals_wait() {
        assert!(api_error(503).transient() && api_error(409).transient());
        assert!(!api_error(422).transient() && !api_error(403).transient(), "the spec or the cluster must change");
        let status = kube::core::Status::failure("forbidden", "Forbidden").with_code(403);
        let read =
            Error::Read { what: "ConfigMap team/llm-profile".into(), source: kube::Error::Api(Box::new(status)) };
        assert!(read.transient(), "a read refused while RBAC syncs after a restart is retried soon");
        assert_eq!(delay(1, true, 0.5), Duration::from_secs(1));
        assert_eq!(delay(4, true, 0.5), Duration::from_secs(8));
        assert_eq!(delay(30, true, 0.5), Duration::from_secs(300), "capped at 5 minutes");
        assert_eq!(delay(1, true, 0.0), Duration::from_millis(500));
        assert_eq!(delay(1, false, 0.5), Duration::from_secs(300));
        let b = Backoff::default();
        let first = b.failed("team/llm", &api_error(503));
        let second = b.failed("team/llm", &api_error(503));
        assert!(first <= Duration::from_millis(1500) && second >= Duration::from_secs(1));
        b.succeeded("team/llm");
        assert!(b.failed("team/llm", &api_error(503)) <= Duration::from_millis(1500), "success resets");
    }

    #[test]
    fn errors_name_their_step_and_object() {
        let e = api_error(403);
        assert_eq!(e.label(), "apply");
        assert!(e.to_string().starts_with("applying Deployment llm: "));
        assert_eq!(e.server_message(), "refused");
    }
}
