//! Launch profiles: the schema, the catalog (directory and OCI registry sources).

pub mod catalog;
pub mod oci;
pub mod schema;

pub use schema::{Profile, ProfileError};
