//! `OIMCache`: model weights pre-downloaded into a PVC that outlives it unless asked otherwise.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{EnvVar, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::common::{
    NAME_MESSAGE, NAME_RULE, ProfileSelector, ProxySpec, QUANTITY_RULE, RetentionPolicy, VolumeAccessMode,
};

/// Desired state of a weights cache.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "oim.opea.dev",
    version = "v1alpha1",
    kind = "OIMCache",
    plural = "oimcaches",
    shortname = "oimcache",
    category = "oim",
    namespaced,
    cel,
    status = "OIMCacheStatus",
    derive = "PartialEq",
    derive = "Default",
    doc = "Model weights for the hardware present, downloaded into a PVC that OIMServices mount read-only.",
    validation = Rule::new(NAME_RULE).message(NAME_MESSAGE),
    printcolumn(name = "State", type_ = "string", json_path = ".status.state", description = "Pending, InProgress, Ready or Failed"),
    printcolumn(name = "PVC", type_ = "string", json_path = ".status.pvc", description = "PVC holding the weights"),
    printcolumn(name = "Size", type_ = "string", json_path = ".status.size", description = "PVC size"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct OIMCacheSpec {
    /// Where the weights come from. Immutable: create a new OIMCache for another model.
    #[x_kube(validation = Rule::new("self == oldSelf")
        .message("spec.source is immutable: the PVC holds weights of this source; create a new OIMCache for another model or revision"))]
    pub source: CacheSource,
    /// Which profiles' weights to fetch, chosen for the hardware present (same selector as
    /// OIMService). Unset = every profile that fits the cluster for the default KPI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<ProfileSelector>,
    /// The PVC holding the weights.
    #[serde(default)]
    pub storage: CacheStorage,
    /// `Retain` (default) keeps the PVC, labelled back to this cache, when the OIMCache is
    /// deleted; `Delete` removes it, but never while a live OIMService uses it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_policy: Option<RetentionPolicy>,
    /// CPU and memory of the download Job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<CacheResources>,
    /// Extra node selector for the download Job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    /// Extra tolerations for the download Job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub tolerations: Option<Vec<Toleration>>,
    /// Extra environment for the download Job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub env: Option<Vec<EnvVar>>,
    /// HTTP proxy for the download Job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxySpec>,
}

impl OIMCacheSpec {
    /// The Hugging Face repository the cache downloads: `namespace/modelName` or `modelName`.
    pub fn model(&self) -> String {
        let hf = &self.source.hf;
        match hf.namespace.as_deref().filter(|n| !n.is_empty()) {
            Some(ns) => format!("{ns}/{}", hf.model_name),
            None => hf.model_name.clone(),
        }
    }
}

/// Source of the weights.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct CacheSource {
    /// A Hugging Face hub (or a mirror speaking its API).
    pub hf: HfSource,
}

/// Hugging Face source.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[x_kube(validation = Rule::new("(has(self.__namespace__) && self.__namespace__ != '') ? self.modelName.matches('^[A-Za-z0-9][A-Za-z0-9._-]*$') : self.modelName.matches('^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$')")
    .message("spec.source.hf.modelName: give org/name (e.g. meta-llama/Llama-3.1-70B-Instruct), or set namespace to the org and modelName to the bare name"))]
#[serde(rename_all = "camelCase")]
pub struct HfSource {
    /// Hub endpoint (`HF_ENDPOINT`); default `https://huggingface.co`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    pub endpoint: Option<String>,
    /// Organisation; empty when `modelName` is `org/name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub namespace: Option<String>,
    /// Model name: `org/name`, or the bare name when `namespace` is set.
    #[schemars(length(min = 1, max = 256))]
    pub model_name: String,
    /// Revision (branch, tag or commit); default = each selected profile's `weightsRevision`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub revision: Option<String>,
    /// Secret holding `HF_TOKEN`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub auth_secret: Option<String>,
    /// Downloader image; default the operator's own image running `oim download`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    pub model_puller: Option<String>,
    /// Secret for pulling the downloader image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub pull_secret: Option<String>,
    /// Only download files matching these globs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), inner(length(max = 256)))]
    pub allow_patterns: Option<Vec<String>>,
    /// Skip files matching these globs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), inner(length(max = 256)))]
    pub ignore_patterns: Option<Vec<String>>,
}

/// Storage of a cache.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct CacheStorage {
    /// The PVC.
    #[serde(default)]
    pub pvc: CachePvc,
}

/// The cache PVC.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[x_kube(
    validation = Rule::new("has(self.storageClass) == has(oldSelf.storageClass) && (!has(self.storageClass) || self.storageClass == oldSelf.storageClass)")
        .message("spec.storage.pvc.storageClass is immutable; create a new OIMCache to change it"),
    validation = Rule::new("has(self.volumeAccessMode) == has(oldSelf.volumeAccessMode) && (!has(self.volumeAccessMode) || self.volumeAccessMode == oldSelf.volumeAccessMode)")
        .message("spec.storage.pvc.volumeAccessMode is immutable; create a new OIMCache to change it"),
    validation = Rule::new("!has(oldSelf.size) || (has(self.size) && quantity(self.size).compareTo(quantity(oldSelf.size)) >= 0)")
        .message("spec.storage.pvc.size can only grow; set it to at least the previous size"),
    validation = Rule::new("(has(self.create) && !self.create) ? has(self.name) : true")
        .message("spec.storage.pvc: with create=false set name to an existing PVC")
)]
#[serde(rename_all = "camelCase")]
pub struct CachePvc {
    /// Create the PVC (default true) or use the existing one named `name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create: Option<bool>,
    /// PVC name; default `<cache>-weights`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub name: Option<String>,
    /// StorageClass. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub storage_class: Option<String>,
    /// Size; default = estimated weight bytes plus headroom. Can only grow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(QUANTITY_RULE).message("spec.storage.pvc.size must be a quantity such as 200Gi"))]
    #[schemars(length(max = 32))]
    pub size: Option<String>,
    /// Access mode; ReadWriteMany lets replicas on several nodes share it. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_access_mode: Option<VolumeAccessMode>,
}

/// CPU and memory of the download Job.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct CacheResources {
    /// CPU request and limit, e.g. `2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(QUANTITY_RULE).message("spec.resources.cpu must be a quantity such as 2 or 500m"))]
    #[schemars(length(max = 32))]
    pub cpu: Option<String>,
    /// Memory request and limit, e.g. `4Gi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(QUANTITY_RULE).message("spec.resources.memory must be a quantity such as 4Gi"))]
    #[schemars(length(max = 32))]
    pub memory: Option<String>,
}

/// Observed state of a cache.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct OIMCacheStatus {
    /// Pending, InProgress, Ready or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<CacheState>,
    /// PVC holding the weights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pvc: Option<String>,
    /// PVC size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    /// Weights held, per selected profile.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub profiles: Vec<CachedProfile>,
    /// Conditions with machine reasons and human messages.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// When the download started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the download finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
}

/// State of a cache.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum CacheState {
    /// Waiting for a PVC, a profile or a size.
    Pending,
    /// Downloading.
    InProgress,
    /// Every selected profile's weights are complete.
    Ready,
    /// The download failed; the message says why.
    Failed,
}

/// Weights of one profile in the cache.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct CachedProfile {
    /// Profile name.
    pub name: String,
    /// Weights repository.
    pub weights: String,
    /// Commit of the weights.
    pub weights_revision: String,
    /// Path inside the PVC, `/<weights>/<commit>`.
    pub path: String,
}
