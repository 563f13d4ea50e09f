//! What a reconcile of a service came to: blocked at a step (and why), or serving a chosen
//! profile. The status is made from this value alone ([`super::status::build`]).

use std::time::Duration;

use k8s_openapi::api::core::v1::ResourceRequirements;

use crate::api::RejectedProfile;
use crate::controller::service::select::Chosen;

/// The step a reconcile stopped at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// `spec.profile.source` is refused: the spec must change.
    SourceRefused,
    /// `spec.profile.source` needs something that may still appear (its Secret).
    SourceMissing,
    /// The OIMCache is missing, not Ready, or does not hold the chosen weights.
    Cache,
    /// No profile fits.
    Selection,
    /// The registry could not be read and nothing was selected before.
    Registry,
    /// The model's `config.json` is needed to generate a profile and cannot be read (yet).
    ModelConfig,
    /// The spec cannot be rendered (e.g. resources that contradict the profile).
    Render,
    /// An object of a child's name exists and is not ours.
    Conflict,
    /// The spec asks for a platform whose API the cluster lacks (KServe).
    Platform,
}

/// Why nothing (new) runs.
#[derive(Debug, Clone)]
pub struct Blocked {
    /// Where.
    pub step: Step,
    /// The condition reason.
    pub reason: String,
    /// The message, with the fix.
    pub message: String,
    /// Profiles rejected, when selection found none.
    pub rejected: Vec<RejectedProfile>,
    /// When to look again, when the step's usual delay does not fit (the hub's backoff).
    pub retry_after: Option<Duration>,
}

impl Blocked {
    /// Blocked at `step` for `reason`.
    pub fn new(step: Step, reason: &str, message: String) -> Blocked {
        Blocked { step, reason: reason.into(), message, rejected: vec![], retry_after: None }
    }

    /// Only a change to the spec (or a rename of someone else's object) helps: state Failed.
    pub fn spec_error(&self) -> bool {
        matches!(self.step, Step::SourceRefused | Step::Render | Step::Conflict)
    }

    /// When to look again; None waits for a change to the service (or what it watches).
    pub fn retry(&self) -> Option<Duration> {
        if let Some(after) = self.retry_after {
            return Some(after);
        }
        match self.step {
            Step::SourceRefused | Step::Render => None,
            // Someone else's object is not watched: look again now and then.
            Step::Conflict => Some(Duration::from_secs(60)),
            Step::Selection => Some(Duration::from_secs(300)),
            Step::SourceMissing | Step::Cache | Step::Registry | Step::ModelConfig => Some(Duration::from_secs(30)),
            Step::Platform => Some(Duration::from_secs(60)),
        }
    }
}

/// A chosen profile, rendered and applied (or refused by the API server).
#[derive(Debug, Clone)]
pub struct Serving {
    /// The choice.
    pub chosen: Chosen,
    /// The container's resources as rendered.
    pub resources: Option<ResourceRequirements>,
    /// `http://<name>.<ns>.svc:<port>`.
    pub cluster_endpoint: String,
    /// From the Route, Ingress or load balancer.
    pub external_endpoint: Option<String>,
    /// With an OIMCache: where the weights come from.
    pub cache: Option<String>,
    /// Serving, but not as asked: (reason, message) for `Degraded` — a ReadWriteOnce volume
    /// shared across nodes, a router whose API the cluster lacks.
    pub warning: Option<(&'static str, String)>,
    /// A re-published digest not followed (`updatePolicy: Pinned`).
    pub update: Option<String>,
    /// `updatePolicy: Auto`.
    pub auto: bool,
    /// The API server refused a child: its message.
    pub apply_error: Option<String>,
    /// With `inferencePlatform: kserve`: what the InferenceService reports.
    pub kserve: Option<KServeState>,
}

/// What a KServe InferenceService reports: its Ready condition and addresses, and the
/// replicas of the predictor Deployment KServe made from it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KServeState {
    /// Its Ready condition is True.
    pub ready: bool,
    /// The Ready condition's reason (or why there is none yet).
    pub reason: String,
    /// The Ready condition's message.
    pub message: String,
    /// `status.url`: the external URL KServe assigned, if any.
    pub url: Option<String>,
    /// `status.address.url`: the in-cluster URL.
    pub address: Option<String>,
    /// Available replicas of the predictor Deployment (0 when KServe made none yet).
    pub available: i32,
}

impl KServeState {
    /// From the live InferenceService (None: not there yet) and its predictor's available replicas.
    pub fn of(isvc: Option<&serde_json::Value>, available: i32) -> KServeState {
        let Some(isvc) = isvc else {
            return KServeState {
                reason: "InferenceServicePending".into(),
                message: "the InferenceService is not created yet".into(),
                available,
                ..Default::default()
            };
        };
        let status = &isvc["status"];
        let ready = status["conditions"].as_array().and_then(|c| c.iter().find(|c| c["type"] == "Ready"));
        let text = |v: &serde_json::Value| v.as_str().filter(|s| !s.is_empty()).map(str::to_string);
        let (ok, reason, message) = match ready {
            Some(c) => (
                c["status"] == "True",
                text(&c["reason"])
                    .unwrap_or_else(|| if c["status"] == "True" { "Ready".into() } else { "NotReady".into() }),
                text(&c["message"]).unwrap_or_default(),
            ),
            None => (
                false,
                "InferenceServicePending".into(),
                "KServe has not reported a Ready condition yet (is its controller running?)".into(),
            ),
        };
        KServeState {
            ready: ok,
            reason,
            message,
            url: text(&status["url"]),
            address: text(&status["address"]["url"]),
            available,
        }
    }
}

/// What a reconcile came to.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Stopped at a step.
    Blocked(Blocked),
    /// Serving (or rolling out) a chosen profile.
    Serving(Box<Serving>),
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn kserve_state_follows_the_ready_condition_and_the_urls_of_the_inference_service() {
        let none = KServeState::of(None, 0);
        assert!(!none.ready);
        assert_eq!(none.reason, "InferenceServicePending");
        let unreported = KServeState::of(Some(&json!({"status": {}})), 0);
        assert_eq!(unreported.reason, "InferenceServicePending");
        assert!(unreported.message.contains("is its controller running"), "{}", unreported.message);
        let ready = json!({"status": {
            "url": "http://llm-team.example.com",
            "address": {"url": "http://llm-predictor.team.svc.cluster.local"},
            "conditions": [{"type": "PredictorReady", "status": "False"}, {"type": "Ready", "status": "True"}],
        }});
        let k = KServeState::of(Some(&ready), 2);
        assert!(k.ready);
        assert_eq!((k.reason.as_str(), k.available), ("Ready", 2));
        assert_eq!(k.url.as_deref(), Some("http://llm-team.example.com"));
        assert_eq!(k.address.as_deref(), Some("http://llm-predictor.team.svc.cluster.local"));
        let broken = json!({"status": {"conditions": [
            {"type": "Ready", "status": "False", "reason": "PredictorNotReady", "message": "pods crash"},
        ]}});
        let k = KServeState::of(Some(&broken), 0);
        assert!(!k.ready);
        assert_eq!((k.reason.as_str(), k.message.as_str()), ("PredictorNotReady", "pods crash"));
        assert_eq!(k.url, None);
    }
}
