//! oim-operator: serve a model on whatever accelerators the cluster has.
//!
//! Modules follow the pipeline of DESIGN §2: `api` (CRD types), `hardware` (device table,
//! inventory, detection), then profile, render, controller and agent as they land.

pub mod agent;
pub mod api;
pub mod cli;
pub mod controller;
pub mod hardware;
pub mod profile;
pub mod render;
