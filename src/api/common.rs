//! Types shared by OIMService and OIMCache: the profile selector, proxy settings and enums.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// API group of every oim custom resource.
pub const GROUP: &str = "oim.opea.dev";
/// The one served version.
pub const VERSION: &str = "v1alpha1";

/// What the service is optimised for; decides which profile ranks first.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Kpi {
    /// Lowest time to first token and inter-token latency.
    Latency,
    /// Most tokens per second per accelerator.
    #[default]
    Throughput,
    /// Smallest weights: the fewest bytes that still serve the model.
    Quantization,
}

/// Numeric precision of the weights a profile loads.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Precision {
    /// 32-bit float.
    Fp32,
    /// bfloat16.
    Bf16,
    /// IEEE half precision.
    Fp16,
    /// 8-bit float (W8A8 on Ada, Hopper, Blackwell, MI300).
    Fp8,
    /// 8-bit integer weights.
    Int8,
    /// 4-bit integer weights (AWQ, GPTQ).
    Int4,
    /// NVIDIA 4-bit float (Blackwell).
    Nvfp4,
    /// OCP microscaling 4-bit float.
    Mxfp4,
}

/// Accelerator vendor as published in the node inventory.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub enum Vendor {
    /// NVIDIA GPUs (`nvidia.com/gpu`).
    Nvidia,
    /// AMD Instinct GPUs (`amd.com/gpu`).
    Amd,
    /// Intel Data Center and Arc GPUs (`gpu.intel.com/i915` or `gpu.intel.com/xe`).
    Intel,
    /// Intel Gaudi accelerators (`habana.ai/gaudi`).
    Habana,
    /// No accelerator: the CPU backend.
    #[default]
    Cpu,
}

impl Vendor {
    /// The lowercase name used in labels, slugs and profile names.
    pub fn as_str(self) -> &'static str {
        match self {
            Vendor::Nvidia => "nvidia",
            Vendor::Amd => "amd",
            Vendor::Intel => "intel",
            Vendor::Habana => "habana",
            Vendor::Cpu => "cpu",
        }
    }
}

impl std::fmt::Display for Vendor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a resolved profile follows re-published tags.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, schemars::JsonSchema)]
pub enum UpdatePolicy {
    /// Keep the resolved digest until `model` or `profile` changes; a newer tag raises
    /// the `ProfileUpdateAvailable` condition instead.
    #[default]
    Pinned,
    /// Roll to a re-published tag's new digest automatically.
    Auto,
}

/// What happens to a PVC holding model weights when its owner is deleted.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, schemars::JsonSchema)]
pub enum RetentionPolicy {
    /// Keep the PVC (and the weights in it); it can be adopted again later.
    #[default]
    Retain,
    /// Delete the PVC with its owner.
    Delete,
}

/// PersistentVolume access mode.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, schemars::JsonSchema)]
pub enum VolumeAccessMode {
    /// Mounted read-write by one node.
    #[default]
    ReadWriteOnce,
    /// Mounted read-only by many nodes.
    ReadOnlyMany,
    /// Mounted read-write by many nodes.
    ReadWriteMany,
    /// Mounted read-write by one pod.
    ReadWriteOncePod,
}

/// Which profiles to consider and how to rank them. OIMService and OIMCache share it, so a
/// cache fetches exactly the weights its services will load.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProfileSelector {
    /// Pin one profile by name. Skips ranking but never the feasibility check: a pinned profile
    /// that does not fit the free hardware reports `PinnedProfileInfeasible`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub name: Option<String>,
    /// What to optimise for: `latency`, `throughput` (default) or `quantization`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kpi: Option<Kpi>,
    /// Only consider profiles of this weight precision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<Precision>,
    /// Inference engine; only `vllm` today.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == 'vllm'").message("profile.engine: only 'vllm' is supported; remove the field or set it to vllm"))]
    #[schemars(length(max = 32))]
    pub engine: Option<String>,
    /// Only consider profiles with this tensor-parallel degree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 64))]
    pub tensor_parallelism: Option<i32>,
    /// Constrain the accelerator vendor and product.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accelerator: Option<AcceleratorConstraint>,
    /// Use an estimated (generated) profile when no published one fits. Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_generated: Option<bool>,
    /// `Pinned` (default): keep the resolved digest until `model` or `profile` changes.
    /// `Auto`: follow a re-published tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_policy: Option<UpdatePolicy>,
    /// Where profiles come from; unset = the operator's default registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<ProfileSource>,
}

/// Accelerator constraints for profile selection.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AcceleratorConstraint {
    /// Only this vendor: `nvidia`, `amd`, `intel`, `habana` or `cpu`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor: Option<Vendor>,
    /// Only this product, as a device-table slug (e.g. `h100-sxm-80gb`, `mi300x`, `gaudi2`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), regex(pattern = r"^[a-z0-9][a-z0-9-]*$"))]
    pub product: Option<String>,
}

/// An OCI registry holding profiles.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProfileSource {
    /// Registry host and optional port, e.g. `registry.example.com:5000`. Must be on the
    /// operator's `--allowed-registries` list.
    #[schemars(length(min = 1, max = 253))]
    pub registry: String,
    /// Repository prefix under which `<hf-org>/<hf-name>` repositories live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 255))]
    pub repository: Option<String>,
    /// Secret of type `kubernetes.io/dockerconfigjson` with credentials for the registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub credentials_secret: Option<String>,
    /// Use plain HTTP. Honoured only when the operator's `--allowed-registries` entry for this
    /// registry is written `http://...`; otherwise the service is refused. Loopback registries
    /// always use plain HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insecure: Option<bool>,
}

/// CEL rule for a proxy URL: no userinfo (credentials belong in `proxy.credentialsSecret`).
pub const PROXY_NO_CREDENTIALS_RULE: &str = "!self.matches('^([a-zA-Z][a-zA-Z0-9+.-]*://)?[^/@]*@')";

/// HTTP proxy settings for pods that reach the network.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!has(self.credentialsSecret) || (!has(self.httpProxy) && !has(self.httpsProxy))")
        .message("spec.proxy: set either httpProxy/httpsProxy or credentialsSecret, not both")
)]
pub struct ProxySpec {
    /// Value for `HTTP_PROXY` / `http_proxy`. No credentials: a proxy that needs them goes in
    /// `credentialsSecret`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    #[x_kube(validation = Rule::new(PROXY_NO_CREDENTIALS_RULE).message("spec.proxy.httpProxy must not contain user:password@; put the proxy URL in a Secret (keys HTTP_PROXY, HTTPS_PROXY) and name it in spec.proxy.credentialsSecret"))]
    pub http_proxy: Option<String>,
    /// Value for `HTTPS_PROXY` / `https_proxy`. No credentials (see `credentialsSecret`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    #[x_kube(validation = Rule::new(PROXY_NO_CREDENTIALS_RULE).message("spec.proxy.httpsProxy must not contain user:password@; put the proxy URL in a Secret (keys HTTP_PROXY, HTTPS_PROXY) and name it in spec.proxy.credentialsSecret"))]
    pub https_proxy: Option<String>,
    /// Value for `NO_PROXY` / `no_proxy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub no_proxy: Option<String>,
    /// Secret in the same namespace whose `HTTP_PROXY` and `HTTPS_PROXY` keys (either may be
    /// absent) hold proxy URLs with credentials; the pod reads them from the Secret, so they
    /// never appear in the rendered objects. Exclusive with `httpProxy`/`httpsProxy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub credentials_secret: Option<String>,
    /// ConfigMap with extra CA certificates (PEM) trusted by the pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub cert_config_map: Option<String>,
}

/// CEL rule shared by both kinds: the object name is reused for the Service and in labels.
pub const NAME_RULE: &str =
    "self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$') && size(self.metadata.name) <= 52";
/// Message for [`NAME_RULE`].
pub const NAME_MESSAGE: &str = "metadata.name must be a DNS-1035 label of at most 52 characters (lowercase letters, digits and '-', starting with a letter, ending with a letter or digit), because it is reused as the Service name and in labels; rename the object";
/// CEL rule for fields holding a Kubernetes quantity as a string.
pub const QUANTITY_RULE: &str = "isQuantity(self)";
