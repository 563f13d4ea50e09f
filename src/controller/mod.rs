//! The operator's reconcilers and what they share:
//! - `service`: the OIMService pipeline (dereference -> select -> resolve -> build -> apply -> status);
//! - `cache`: the OIMCache pipeline and its retention finalizer;
//! - `apply` and `children`: one apply policy for everything we write (ours only, drift
//!   repaired, a resync writes nothing) and the caches it decides from;
//! - `agent`: the node agent the operator keeps deployed;
//! - `context` (Context, Error), `events`, `status` (conditions), `source` (per-service
//!   registries), `metrics`, `health` (probes), `leader` (election and write fence), and `run`
//!   (the wiring).

pub mod agent;
pub mod apply;
pub mod cache;
pub mod children;
pub mod context;
pub mod decode;
pub mod echo;
pub mod events;
pub mod health;
pub mod intern;
pub mod leader;
pub mod limit;
pub mod metrics;
pub mod model;
pub mod placement;
pub mod priority;
pub mod run;
pub mod service;
pub mod source;
pub mod status;
pub mod watch;

pub use context::{Context, Error};
pub use run::{Settings, run};
