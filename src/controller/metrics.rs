//! The operator's `/metrics` (OpenMetrics text), `/healthz` and `/readyz`, on `--metrics-bind`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tracing::{info, warn};

use crate::controller::apply::WriteCounter;
use crate::controller::health::Health;

/// Labels of a finished reconcile: which controller, and `ok` or the error variant.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    /// `oimservice` or `oimcache`.
    pub controller: String,
    /// `ok`, or the error enum's variant (`kube`, `catalog`, ...).
    pub outcome: String,
}

/// Labels of a failed registry lookup.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RegistryFailure {
    /// The catalog (`host[:port]/prefix`, or the catalog directory).
    pub registry: String,
}

/// Everything the operator counts.
pub struct Metrics {
    registry: Registry,
    /// API writes (applies and status patches).
    pub writes: Arc<WriteCounter>,
    reconciles: Family<Outcome, Counter>,
    duration: Histogram,
    /// 1 while the node agent is held back because its admission policy cannot be applied.
    pub agent_policy_missing: Gauge,
    /// 1 while this replica holds the leader lease (always 1 without leader election).
    pub leader: Gauge,
    /// Requests the operator's client may have in flight now (see `controller::limit`).
    pub api_limit: Gauge,
    registry_errors: Family<RegistryFailure, Counter>,
    deferred: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("oim_operator");
        let writes = Arc::new(WriteCounter::default());
        registry.register(
            "api_writes",
            "Writes to the API server (server-side applies, status patches)",
            writes.counter(),
        );
        let reconciles = Family::<Outcome, Counter>::default();
        registry.register("reconciles", "Finished reconciles by controller and outcome", reconciles.clone());
        let duration = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        registry.register("reconcile_duration_seconds", "Time per reconcile", duration.clone());
        let agent_policy_missing = Gauge::default();
        registry.register(
            "agent_admission_policy_missing",
            "1 while the node agent is not deployed because its admission policy could not be applied",
            agent_policy_missing.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "Whether this replica holds the leader lease and reconciles (1) or stands by (0)",
            leader.clone(),
        );
        let api_limit = Gauge::default();
        registry.register(
            "api_concurrency_limit",
            "Requests the operator keeps in flight at the API server, sized by its latency",
            api_limit.clone(),
        );
        let registry_errors = Family::<RegistryFailure, Counter>::default();
        registry.register(
            "registry_errors",
            "Profile registry lookups that failed (unreachable, timed out, refused, over a bound)",
            registry_errors.clone(),
        );
        let deferred = Counter::default();
        registry.register(
            "deferred_rest",
            "Reconciles that wrote a workload while other services waited and left its Service and status to a revisit",
            deferred.clone(),
        );
        Metrics {
            registry,
            writes,
            reconciles,
            duration,
            agent_policy_missing,
            leader,
            api_limit,
            registry_errors,
            deferred,
        }
    }
}

impl Metrics {
    /// Counts one reconcile of `controller` ending in `outcome` after `seconds`.
    pub fn reconciled(&self, controller: &str, outcome: &str, seconds: f64) {
        self.reconciles.get_or_create(&Outcome { controller: controller.into(), outcome: outcome.into() }).inc();
        self.duration.observe(seconds);
    }

    /// Counts one reconcile that left its Service and status to a revisit.
    pub fn deferred(&self) {
        self.deferred.inc();
    }

    /// Counts one failed lookup in `registry`.
    pub fn registry_failed(&self, registry: &str) {
        self.registry_errors.get_or_create(&RegistryFailure { registry: registry.into() }).inc();
    }

    fn encode(&self) -> String {
        let mut buf = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut buf, &self.registry) {
            warn!(error = %e, "metrics not encoded");
        }
        buf
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `addr` until the process ends.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>, health: Arc<Health>) {
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            warn!(%addr, error = %e, "metrics endpoint not started");
            return;
        }
    };
    info!(addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "metrics endpoint listening");
    while let Ok((stream, _)) = listener.accept().await {
        let metrics = metrics.clone();
        let health = health.clone();
        tokio::spawn(async move {
            let handler = service_fn(move |req: Request<Incoming>| {
                let metrics = metrics.clone();
                let health = health.clone();
                async move { Ok::<_, Infallible>(respond(req.uri().path(), &metrics, &health)) }
            });
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), handler).await;
        });
    }
}

fn respond(path: &str, metrics: &Metrics, health: &Health) -> Response<Full<Bytes>> {
    let probe = |r: Result<(), String>| match r {
        Ok(()) => (StatusCode::OK, "text/plain", "ok\n".to_string()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, "text/plain", format!("{why}\n")),
    };
    let (status, content_type, body) = match path {
        "/metrics" => (StatusCode::OK, "application/openmetrics-text; version=1.0.0; charset=utf-8", metrics.encode()),
        "/healthz" => probe(health.liveness()),
        "/readyz" => probe(health.readiness()),
        _ => (StatusCode::NOT_FOUND, "text/plain", "not found; try /metrics, /healthz or /readyz\n".to_string()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        response.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_and_reconciles_appear_in_the_exposition() {
        let m = Metrics::default();
        m.writes.add();
        m.writes.add();
        m.reconciled("oimservice", "ok", 0.01);
        m.reconciled("oimservice", "kube", 0.2);
        let text = m.encode();
        assert!(text.contains("oim_operator_api_writes_total 2"), "{text}");
        assert!(text.contains(r#"oim_operator_reconciles_total{controller="oimservice",outcome="kube"} 1"#), "{text}");
        assert!(text.contains("oim_operator_reconcile_duration_seconds_count 2"), "{text}");
        m.leader.set(1);
        m.registry_failed("registry.example.com/oim/profiles");
        let text = m.encode();
        assert!(text.contains("oim_operator_leader 1"), "{text}");
        assert!(
            text.contains(r#"oim_operator_registry_errors_total{registry="registry.example.com/oim/profiles"} 1"#),
            "{text}"
        );
        let health = Health::new(std::time::Duration::from_secs(60));
        assert_eq!(respond("/readyz", &m, &health).status(), StatusCode::SERVICE_UNAVAILABLE);
        health.set_ready();
        assert_eq!(respond("/readyz", &m, &health).status(), StatusCode::OK);
        assert_eq!(respond("/healthz", &m, &health).status(), StatusCode::OK);
        assert_eq!(respond("/nope", &m, &health).status(), StatusCode::NOT_FOUND);
    }
}
