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
    /// A ReadWriteOnce cache shared by several replicas.
    pub shared_rwo: Option<String>,
    /// A re-published digest not followed (`updatePolicy: Pinned`).
    pub update: Option<String>,
    /// `updatePolicy: Auto`.
    pub auto: bool,
    /// The API server refused a child: its message.
    pub apply_error: Option<String>,
}

/// What a reconcile came to.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Stopped at a step.
    Blocked(Blocked),
    /// Serving (or rolling out) a chosen profile.
    Serving(Box<Serving>),
}
