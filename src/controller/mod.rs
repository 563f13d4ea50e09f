//! Reconcilers: the OIMService controller (dereference -> select -> build -> apply -> status).

pub mod apply;
pub mod service;
pub mod status;

pub use service::{Context, run};
