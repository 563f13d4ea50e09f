//! Reconcilers: the OIMService controller (dereference -> select -> build -> apply -> status),
//! the node agent it owns, per-service profile sources and the operator's metrics.

pub mod agent;
pub mod apply;
pub mod cache;
pub mod children;
pub mod metrics;
pub mod run;
pub mod service;
pub mod source;
pub mod status;

pub use run::{Settings, run};
pub use service::Context;
