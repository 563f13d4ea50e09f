//! The `oim.opea.dev/v1alpha1` API: OIMService and OIMCache (DESIGN §3).

pub mod common;
pub mod dra;
pub mod oimcache;
pub mod oimservice;
pub mod openapi;

pub use common::*;
pub use dra::*;
pub use oimcache::*;
pub use oimservice::*;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// Every CRD this operator serves, in install order.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![OIMService::crd(), OIMCache::crd()]
}

/// All CRDs as one multi-document YAML stream, exactly what `oim crds` prints and `crds/` holds.
pub fn crds_yaml() -> Result<String, serde_saphyr::SerializeError> {
    let mut out = String::new();
    for crd in crds() {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(&crd)?);
    }
    Ok(out)
}

#[cfg(test)]
mod cel_tests;

#[cfg(test)]
mod crd_tests;
