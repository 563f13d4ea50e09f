//! The profile document (DESIGN §5, contract): one launch recipe for one model on one kind of
//! hardware. Profiles come from files and registries, so parsing treats the bytes as untrusted:
//! size-capped, never panicking, and every error names the file, the field and the fix.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::api::{Kpi, Precision, Vendor};
use crate::hardware::devices;

fn one() -> u32 {
    1
}

fn is_one(n: &u32) -> bool {
    *n == 1
}

/// Most nodes one replica may span.
pub const MAX_NODES: u32 = 64;

/// Value of the `schema` field.
pub const PROFILE_SCHEMA: &str = "oim.opea.dev/profile/v1";
/// Largest profile document accepted, from a file or a registry blob.
pub const MAX_PROFILE_BYTES: usize = 1024 * 1024;
/// Engine flags the operator sets itself; a profile must not.
const RESERVED_ARGS: &[&str] = &["port", "host", "served-model-name", "model"];

/// A launch profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Profile {
    /// Always [`PROFILE_SCHEMA`].
    pub schema: String,
    /// `[a-z0-9][a-z0-9._-]{0,127}`, unique per model; the OCI tag.
    pub name: String,
    /// Exact Hugging Face id this profile serves.
    pub model: String,
    /// Repository actually loaded (e.g. an FP8 variant); default `model`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<String>,
    /// Commit of the weights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights_revision: Option<String>,
    /// What it is optimised for.
    pub kpi: Kpi,
    /// Weight precision.
    pub precision: Precision,
    /// Engine name, version and image.
    pub engine: Engine,
    /// Accelerators per node (per pod).
    pub accelerator: ProfileAccelerator,
    /// Nodes one replica spans (default 1). Above 1 the replica is a LeaderWorkerSet group of
    /// that many pods, each with `accelerator.count` devices, joined over Ray.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub nodes: u32,
    /// Tensor and pipeline parallelism; tensor x pipeline = accelerator.count x nodes.
    pub parallelism: Parallelism,
    /// Engine args: `key: value` -> `--key value`, `true` -> `--key`, `false` -> `--no-key`,
    /// a list -> `--key a b`, an object -> `--key <json>`.
    #[serde(default)]
    pub args: BTreeMap<String, Value>,
    /// Engine environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Exact resources of the engine process.
    pub resources: ProfileResources,
    /// Measured performance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub performance: Option<Performance>,
    /// Estimated by the operator rather than published.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub generated: bool,
}

/// Engine of a profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Engine {
    /// `vllm`.
    pub name: String,
    /// Engine version.
    pub version: String,
    /// Image with a tag or digest.
    pub image: String,
}

/// Accelerators of a profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProfileAccelerator {
    /// Vendor.
    pub vendor: Vendor,
    /// Device-table slug, or `any` (with `minMemoryMiB`).
    pub product: String,
    /// Devices per node of a replica (NUMA nodes for `cpu`).
    pub count: u32,
    /// Memory each device needs.
    #[serde(default, rename = "minMemoryMiB", skip_serializing_if = "Option::is_none")]
    pub min_memory_mib: Option<u64>,
}

/// Parallelism of a profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Parallelism {
    /// Tensor-parallel degree.
    pub tensor: u32,
    /// Pipeline-parallel degree.
    pub pipeline: u32,
}

/// Resources of a profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProfileResources {
    /// CPU request.
    pub cpu: String,
    /// Memory of the engine process.
    pub memory: String,
    /// `/dev/shm` size, on top of `memory`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_memory: Option<String>,
    /// Local disk for weights downloaded at start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ephemeral_storage: Option<String>,
    /// Extra resources as given, e.g. `hugepages-2Mi` on Gaudi.
    #[serde(default)]
    pub extra: BTreeMap<String, String>,
}

/// Measured performance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Performance {
    /// Median time to first token, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttft_ms_p50: Option<f64>,
    /// Median inter-token latency, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub itl_ms_p50: Option<f64>,
    /// Output tokens per second at `concurrency`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throughput_tokens_per_sec: Option<f64>,
    /// Concurrent requests during measurement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    /// Where the figures come from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// A profile that cannot be used, with the file, the field and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {field}: {problem}; {fix}")]
pub struct ProfileError {
    /// File path or OCI reference.
    pub file: String,
    /// Dotted field path (`.` for the whole document).
    pub field: String,
    /// What is wrong.
    pub problem: String,
    /// What to do.
    pub fix: String,
}

impl ProfileError {
    fn new(file: &str, field: &str, problem: impl Into<String>, fix: impl Into<String>) -> Self {
        ProfileError { file: file.into(), field: field.into(), problem: problem.into(), fix: fix.into() }
    }
}

/// Whether bytes claim to be a profile (`schema:` names ours); used when scanning a directory
/// that also holds other YAML. A quick look for a `schema:` line first; otherwise the document
/// is parsed, so a profile written in JSON form (valid YAML) is not skipped.
pub fn looks_like_profile(bytes: &[u8]) -> bool {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(4096)]);
    let quick = text.lines().any(|l| {
        let l = l.trim();
        l.strip_prefix("schema:").is_some_and(|v| v.trim().trim_matches(['"', '\'']) == PROFILE_SCHEMA)
    });
    if quick || bytes.len() > MAX_PROFILE_BYTES {
        return quick;
    }
    let Ok(text) = std::str::from_utf8(bytes) else { return false };
    serde_saphyr::from_str::<Value>(text)
        .ok()
        .is_some_and(|v| v.get("schema").and_then(Value::as_str) == Some(PROFILE_SCHEMA))
}

impl Profile {
    /// Parses and validates one profile document. `file` names its origin in errors.
    pub fn parse(bytes: &[u8], file: &str) -> Result<Profile, ProfileError> {
        if bytes.len() > MAX_PROFILE_BYTES {
            return Err(ProfileError::new(
                file,
                ".",
                format!("{} bytes is over the {MAX_PROFILE_BYTES}-byte limit", bytes.len()),
                "a profile is a small YAML document; remove what is not a profile field",
            ));
        }
        let text = std::str::from_utf8(bytes)
            .map_err(|e| ProfileError::new(file, ".", format!("not UTF-8 ({e})"), "save the file as UTF-8 YAML"))?;
        let value: Value = serde_saphyr::from_str(text)
            .map_err(|e| ProfileError::new(file, ".", format!("not YAML: {e}"), "fix the YAML syntax"))?;
        let profile: Profile = serde_path_to_error::deserialize(value).map_err(|e| {
            let field = e.path().to_string();
            ProfileError::new(file, &field, e.inner().to_string(), fix_for(&field))
        })?;
        profile.validate(file)?;
        Ok(profile)
    }

    /// Checks the rules serde cannot express.
    pub fn validate(&self, file: &str) -> Result<(), ProfileError> {
        let err = |field: &str, problem: String, fix: &str| Err(ProfileError::new(file, field, problem, fix));
        if self.schema != PROFILE_SCHEMA {
            return err("schema", format!("is {:?}", self.schema), &format!("set schema: {PROFILE_SCHEMA}"));
        }
        if !valid_name(&self.name) {
            return err(
                "name",
                format!("{:?} is not a valid profile name", self.name),
                "use [a-z0-9][a-z0-9._-]{0,127}, e.g. vllm-nvidia-h100-sxm-80gb-x1-latency-bf16",
            );
        }
        if !valid_hf_id(&self.model) {
            return err(
                "model",
                format!("{:?} is not a Hugging Face id", self.model),
                "use org/name, e.g. meta-llama/Llama-3.1-8B-Instruct",
            );
        }
        if let Some(w) = self.weights.as_deref().filter(|w| !valid_hf_id(w)) {
            return err("weights", format!("{w:?} is not a Hugging Face id"), "use org/name of the repository to load");
        }
        if self.engine.name != "vllm" {
            return err("engine.name", format!("{:?} is not supported", self.engine.name), "only vllm is supported");
        }
        if !image_is_pinned(&self.engine.image) {
            return err(
                "engine.image",
                format!("{:?} has no tag or digest (or uses latest)", self.engine.image),
                "pin it, e.g. vllm/vllm-openai:v0.26.0 or repo@sha256:...",
            );
        }
        self.validate_accelerator(file)?;
        for (field, q) in
            [("resources.cpu", Some(&self.resources.cpu)), ("resources.memory", Some(&self.resources.memory))]
                .into_iter()
                .chain([
                    ("resources.sharedMemory", self.resources.shared_memory.as_ref()),
                    ("resources.ephemeralStorage", self.resources.ephemeral_storage.as_ref()),
                ])
        {
            if let Some(q) = q.filter(|q| !is_quantity(q)) {
                return err(
                    field,
                    format!("{q:?} is not a quantity"),
                    "use a Kubernetes quantity such as 8, 500m, 64Gi",
                );
            }
        }
        for (k, v) in &self.resources.extra {
            if !is_quantity(v) {
                return err(
                    &format!("resources.extra.{k}"),
                    format!("{v:?} is not a quantity"),
                    "use a Kubernetes quantity such as 95000Mi",
                );
            }
        }
        self.validate_args(file)?;
        if let Some(p) = &self.performance {
            for (field, v) in [
                ("performance.ttftMsP50", p.ttft_ms_p50),
                ("performance.itlMsP50", p.itl_ms_p50),
                ("performance.throughputTokensPerSec", p.throughput_tokens_per_sec),
            ] {
                if let Some(v) = v.filter(|v| !v.is_finite() || *v < 0.0) {
                    return err(
                        field,
                        format!("{v} is not a measurement"),
                        "give a non-negative number or leave it out",
                    );
                }
            }
        }
        Ok(())
    }

    fn validate_accelerator(&self, file: &str) -> Result<(), ProfileError> {
        let err = |field: &str, problem: String, fix: &str| Err(ProfileError::new(file, field, problem, fix));
        let a = &self.accelerator;
        if a.count == 0 {
            return err("accelerator.count", "is 0".into(), "use 1 or more devices (NUMA nodes for cpu)");
        }
        if self.nodes == 0 || self.nodes > MAX_NODES {
            return err("nodes", format!("is {}", self.nodes), &format!("use 1 to {MAX_NODES} nodes per replica"));
        }
        if self.nodes > 1 && a.vendor == Vendor::Cpu {
            return err(
                "nodes",
                format!("is {} for vendor cpu", self.nodes),
                "CPU profiles run on one node: use nodes: 1",
            );
        }
        let p = self.parallelism;
        let devices = a.count.checked_mul(self.nodes);
        if p.tensor == 0 || p.pipeline == 0 || p.tensor.checked_mul(p.pipeline) != devices {
            return err(
                "parallelism",
                if self.nodes == 1 {
                    format!("tensor {} x pipeline {} != accelerator.count {}", p.tensor, p.pipeline, a.count)
                } else {
                    format!(
                        "tensor {} x pipeline {} != accelerator.count {} x nodes {}",
                        p.tensor, p.pipeline, a.count, self.nodes
                    )
                },
                if self.nodes == 1 {
                    "make tensor x pipeline equal the device count"
                } else {
                    "make tensor x pipeline equal the devices of all nodes (e.g. tensor = count, pipeline = nodes)"
                },
            );
        }
        if self.nodes > 1 && p.tensor > a.count {
            return err(
                "parallelism.tensor",
                format!("{} is more than the {} devices of one node", p.tensor, a.count),
                "keep tensor parallelism inside a node and span nodes with pipeline parallelism (tensor = count, pipeline = nodes)",
            );
        }
        if a.product == "any" {
            if a.min_memory_mib.is_none() && a.vendor != Vendor::Cpu {
                return err(
                    "accelerator.minMemoryMiB",
                    "is missing for product any".into(),
                    "give the memory each device needs, e.g. minMemoryMiB: 40000",
                );
            }
        } else if a.vendor != Vendor::Cpu {
            match devices::by_slug(&a.product) {
                Some(d) if d.vendor == a.vendor => {}
                Some(d) => {
                    return err(
                        "accelerator.vendor",
                        format!("{} is a {} product", a.product, d.vendor),
                        &format!("set vendor: {}", d.vendor),
                    );
                }
                None if a.product.starts_with("pci-") => {}
                None => {
                    return err(
                        "accelerator.product",
                        format!("{:?} is not in the device table", a.product),
                        "use a slug from src/hardware/devices.yaml (e.g. h100-sxm-80gb, mi300x, gaudi2) or any",
                    );
                }
            }
        }
        Ok(())
    }

    fn validate_args(&self, file: &str) -> Result<(), ProfileError> {
        for (k, v) in &self.args {
            let field = format!("args.{k}");
            if !k.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                || k.is_empty()
                || k.starts_with('-')
            {
                return Err(ProfileError::new(
                    file,
                    &field,
                    "is not an engine flag name",
                    "write flags without dashes in lowercase, e.g. max-model-len",
                ));
            }
            if RESERVED_ARGS.contains(&k.as_str()) {
                return Err(ProfileError::new(file, &field, "is set by the operator", "remove it from the profile"));
            }
            if v.is_null()
                || v.as_array().is_some_and(|a| a.iter().any(|x| x.is_null() || x.is_array() || x.is_object()))
            {
                return Err(ProfileError::new(
                    file,
                    &field,
                    "has no usable value",
                    "give a string, number, boolean, list of scalars or object",
                ));
            }
        }
        Ok(())
    }

    /// The repository actually loaded.
    pub fn weights(&self) -> &str {
        self.weights.as_deref().unwrap_or(&self.model)
    }

    /// Devices each pod of a replica requests: tensor x pipeline over the nodes (= accelerator.count).
    pub fn devices_per_pod(&self) -> u32 {
        self.parallelism.tensor.saturating_mul(self.parallelism.pipeline) / self.nodes.max(1)
    }

    /// Whether a replica spans several nodes (a LeaderWorkerSet group).
    pub fn multi_node(&self) -> bool {
        self.nodes > 1
    }

    /// Engine flags from `args`, in key order.
    pub fn engine_args(&self) -> Vec<String> {
        render_args(&self.args)
    }
}

/// Renders an args map to engine flags (DESIGN §5).
pub fn render_args(args: &BTreeMap<String, Value>) -> Vec<String> {
    let mut out = vec![];
    for (k, v) in args {
        match v {
            Value::Bool(true) => out.push(format!("--{k}")),
            Value::Bool(false) => out.push(format!("--no-{k}")),
            Value::Array(items) => {
                out.push(format!("--{k}"));
                out.extend(items.iter().map(scalar));
            }
            Value::Object(_) => {
                out.push(format!("--{k}"));
                out.push(v.to_string());
            }
            Value::Null => {}
            other => {
                out.push(format!("--{k}"));
                out.push(scalar(other));
            }
        }
    }
    out
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn fix_for(field: &str) -> String {
    match field {
        "kpi" => "use latency, throughput or quantization".into(),
        "precision" => "use fp32, bf16, fp16, fp8, int8, int4, nvfp4 or mxfp4".into(),
        "accelerator.vendor" => "use nvidia, amd, intel, habana or cpu".into(),
        "." | "" => "see the profile document in docs/profiles-and-selection.md".into(),
        f => format!("check {f} against docs/profiles-and-selection.md (unknown fields are refused)"),
    }
}

/// `[a-z0-9][a-z0-9._-]{0,127}`.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 128
        && chars.next().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'))
}

fn valid_hf_id(id: &str) -> bool {
    let part = |p: &str| {
        !p.is_empty()
            && p.len() <= 96
            && p.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
            && p.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    };
    match id.split_once('/') {
        Some((org, name)) => part(org) && part(name),
        None => part(id),
    }
}

fn image_is_pinned(image: &str) -> bool {
    if let Some((_, digest)) = image.split_once('@') {
        return digest.starts_with("sha256:") && digest.len() == 71;
    }
    crate::profile::engines::pinned(image)
}

/// A Kubernetes quantity: a decimal number with an optional suffix.
pub fn is_quantity(q: &str) -> bool {
    const SUFFIXES: &[&str] = &["Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "n", "u", "m", "k", "M", "G", "T", "P", "E", ""];
    let num_end = q.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(q.len());
    let (num, suffix) = q.split_at(num_end);
    !num.is_empty() && num.parse::<f64>().is_ok() && SUFFIXES.contains(&suffix)
}

#[cfg(test)]
mod tests;
