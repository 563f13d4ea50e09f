//! Launch profiles: the schema, the catalog (directory and OCI registry sources).

pub mod catalog;
pub mod engines;
pub mod estimate;
pub mod oci;
pub mod reference;
pub mod registry;
pub mod schema;
pub mod select;
pub mod weights;

pub use schema::{Profile, ProfileError};

#[cfg(test)]
mod bounds_tests;
#[cfg(test)]
mod seed_tests;
