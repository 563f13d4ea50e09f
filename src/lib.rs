//! oim-operator: serve a model on whatever accelerators the cluster has.
//!
//! Modules follow the pipeline of DESIGN §2: `api` (CRD types), `hardware` (device table,
//! inventory, detection), `profile` (catalog, selection), `render` (the workload objects),
//! `controller` (the reconcilers), `agent` (the node agent), `hub` (the weights downloader).

pub mod agent;
pub mod api;
pub mod bounded;
pub mod cli;
pub mod controller;
#[cfg(test)]
mod fake_http;
pub mod hardware;
pub mod hub;
pub mod profile;
pub mod redact;
pub mod render;
