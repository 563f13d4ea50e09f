//! `oim study plan`: candidate profiles from the estimator. For each tensor-parallel degree that
//! the node offers, that divides the attention heads and that holds the weights plus KV for
//! min(max context, 8192) tokens, and for each precision the device runs natively, it proposes
//! `max-num-seqs` x `max-model-len` steps — each a complete, valid profile.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::json;

use super::{BenchPlan, STUDY_SCHEMA, Study, StudyError};
use crate::api::{Kpi, Precision, Vendor};
use crate::hardware::devices;
use crate::profile::engines::Engines;
use crate::profile::estimate::{self, Arch};
use crate::profile::oci::enum_str;
use crate::profile::schema::{Engine, Parallelism, Profile, ProfileAccelerator, ProfileResources};

/// What to plan.
#[derive(Debug, Clone)]
pub struct PlanRequest {
    /// Hugging Face id (must be in the estimator's architecture table).
    pub model: String,
    /// `vendor/product`, e.g. `nvidia/h100-sxm-80gb`.
    pub accelerator: String,
    /// Devices per node.
    pub count: u32,
    /// Memory per device when the product is not in the device table (and for `cpu`).
    pub device_memory_mib: Option<u64>,
    /// Only these precisions (default: what the device runs natively).
    pub precisions: Vec<Precision>,
    /// `max-num-seqs` steps.
    pub max_num_seqs: Vec<u32>,
    /// `max-model-len` steps (default: the minimum context and the largest that fits).
    pub max_model_len: Vec<u64>,
    /// Only these tensor-parallel degrees (default 1, 2, 4, 8 as they fit).
    pub tensor: Vec<u32>,
    /// How candidates will be measured.
    pub bench: BenchPlan,
}

/// Precisions a device runs natively in vLLM (hardware.md, quantization matrix): bf16 always;
/// FP8 W8A8 on Ada, Hopper and Blackwell and on MI300-class Instinct. INT4 needs a separate
/// AWQ/GPTQ checkpoint, which the estimator cannot name, so it is not planned by default.
pub fn native_precisions(vendor: Vendor, product: &str) -> Vec<Precision> {
    let fp8 = match vendor {
        Vendor::Nvidia => ["h100", "h200", "h20", "h800", "l4", "l40", "b100", "b200", "gb200", "rtx-6000-ada"]
            .iter()
            .any(|p| product.starts_with(p)),
        Vendor::Amd => ["mi300", "mi325", "mi350", "mi355"].iter().any(|p| product.starts_with(p)),
        _ => false,
    };
    if fp8 { vec![Precision::Bf16, Precision::Fp8] } else { vec![Precision::Bf16] }
}

/// Parses `vendor/product`; returns the vendor, the product slug and its memory.
pub fn parse_accelerator(s: &str, memory: Option<u64>) -> Result<(Vendor, String, u64), String> {
    let Some((v, product)) = s.split_once('/') else {
        return Err(format!("--accelerator {s:?}: expected VENDOR/PRODUCT, e.g. nvidia/h100-sxm-80gb"));
    };
    let vendor: Vendor = serde_json::from_value(json!(v))
        .map_err(|_| format!("--accelerator {s:?}: vendor {v:?} is not one of nvidia, amd, intel, habana, cpu"))?;
    match (devices::by_slug(product), memory) {
        (_, Some(m)) => Ok((vendor, product.to_string(), m)),
        (Some(d), None) if d.vendor == vendor => Ok((vendor, product.to_string(), d.memory_mib)),
        (Some(d), None) => Err(format!("--accelerator {s:?}: {product} is a {} product", d.vendor)),
        (None, None) => Err(format!(
            "--accelerator {s:?}: {product:?} is not in the device table; use a slug from src/hardware/devices.yaml or give --device-memory-mib"
        )),
    }
}

/// Parses `bf16,fp8`.
pub fn parse_precisions(s: &str) -> Result<Vec<Precision>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            serde_json::from_value(json!(p))
                .map_err(|_| format!("--precision {p:?}: use fp32, bf16, fp16, fp8, int8, int4, nvfp4 or mxfp4"))
        })
        .collect()
}

/// The candidates and the study spec.
pub fn plan(req: &PlanRequest, engines: &Engines) -> Result<(Study, Vec<Profile>), String> {
    let arch = estimate::arch(&req.model).ok_or_else(|| {
        format!("--model {}: not in the estimator's architecture table (src/profile/estimate.rs); write candidate profiles by hand", req.model)
    })?;
    let (vendor, product, memory_mib) = parse_accelerator(&req.accelerator, req.device_memory_mib)?;
    let engine = engines.get(vendor).ok_or_else(|| format!("no engine for vendor {vendor} in the engine table"))?;
    if req.count == 0 {
        return Err("--count 0: give the devices per node, 1 or more".into());
    }
    if !req.bench.concurrencies.contains(&1) {
        return Err("--concurrency must include 1: the latency KPI is measured at concurrency 1".into());
    }
    let precisions =
        if req.precisions.is_empty() { native_precisions(vendor, &product) } else { req.precisions.clone() };
    let tensors: Vec<u32> = if req.tensor.is_empty() { vec![1, 2, 4, 8] } else { req.tensor.clone() };
    let need = arch.max_context.min(estimate::MIN_CONTEXT);
    let mut out = vec![];
    let mut why = vec![];
    for &tp in &tensors {
        if tp > req.count || !arch.q_heads.is_multiple_of(tp) {
            continue;
        }
        for &precision in &precisions {
            if !estimate::holds_tokens(arch, precision, memory_mib, tp, need) {
                why.push(format!("TP{tp} {}: weights + KV for {need} tokens do not fit", enum_str(&precision)));
                continue;
            }
            let lens = if req.max_model_len.is_empty() {
                let mut l = vec![need, largest_len(arch, precision, memory_mib, tp)];
                l.dedup();
                l
            } else {
                req.max_model_len.clone()
            };
            for &len in &lens {
                if !estimate::holds_tokens(arch, precision, memory_mib, tp, len) {
                    why.push(format!("TP{tp} {} max-model-len {len}: KV does not fit", enum_str(&precision)));
                    continue;
                }
                for &seqs in &req.max_num_seqs {
                    let p = candidate(&req.model, arch, vendor, &product, tp, precision, len, seqs, engine);
                    p.validate(&p.name).map_err(|e| format!("planned candidate is invalid (a bug): {e}"))?;
                    out.push(p);
                }
            }
        }
    }
    if out.is_empty() {
        return Err(format!(
            "no candidate fits {}x {product} ({memory_mib} MiB): {}",
            req.count,
            if why.is_empty() {
                "no tensor-parallel degree divides the heads within --count".into()
            } else {
                why.join("; ")
            }
        ));
    }
    let created = super::now_rfc3339();
    let day: String = created.chars().filter(char::is_ascii_digit).take(14).collect();
    let model_slug = req.model.rsplit('/').next().unwrap_or(&req.model).to_ascii_lowercase();
    let study = Study {
        schema: STUDY_SCHEMA.into(),
        id: format!("{day}-{model_slug}-{product}"),
        model: req.model.clone(),
        accelerator: format!("{vendor}/{product}"),
        count: req.count,
        created,
        bench: req.bench.clone(),
    };
    Ok((study, out))
}

/// The largest power of two up to the model's context whose KV fits.
fn largest_len(a: &Arch, precision: Precision, memory_mib: u64, tp: u32) -> u64 {
    let mut len = a.max_context.next_power_of_two();
    if len > a.max_context {
        len /= 2;
    }
    let need = a.max_context.min(estimate::MIN_CONTEXT);
    while len > need && !estimate::holds_tokens(a, precision, memory_mib, tp, len) {
        len /= 2;
    }
    len.max(need)
}

fn short_len(len: u64) -> String {
    if len.is_multiple_of(1024) { format!("{}k", len / 1024) } else { len.to_string() }
}

#[allow(clippy::too_many_arguments)]
fn candidate(
    model: &str,
    arch: &Arch,
    vendor: Vendor,
    product: &str,
    tp: u32,
    precision: Precision,
    max_model_len: u64,
    max_num_seqs: u32,
    engine: &crate::profile::engines::EngineSpec,
) -> Profile {
    let gib = |bytes: f64| (bytes / (1024.0 * 1024.0 * 1024.0)).ceil() as u64;
    let mut args = BTreeMap::new();
    args.insert("max-model-len".to_string(), json!(max_model_len));
    args.insert("max-num-seqs".to_string(), json!(max_num_seqs));
    args.insert("gpu-memory-utilization".to_string(), json!(estimate::GPU_MEMORY_UTILIZATION));
    if tp > 1 {
        args.insert("tensor-parallel-size".to_string(), json!(tp));
    }
    if precision == Precision::Fp8 {
        // Online dynamic FP8 of the bf16 checkpoint: no separate weights repository needed.
        args.insert("quantization".to_string(), json!("fp8"));
    }
    let p = enum_str(&precision);
    Profile {
        schema: crate::profile::schema::PROFILE_SCHEMA.into(),
        name: format!("study-{vendor}-{product}-x{tp}-{p}-s{max_num_seqs}-l{}", short_len(max_model_len)),
        model: model.to_string(),
        weights: None,
        weights_revision: None,
        // Decided at publish time, per KPI.
        kpi: Kpi::Throughput,
        precision,
        engine: Engine { name: "vllm".into(), version: engine.version.clone(), image: engine.image.clone() },
        accelerator: ProfileAccelerator {
            vendor,
            product: if vendor == Vendor::Cpu { "any".into() } else { product.to_string() },
            count: tp,
            min_memory_mib: None,
        },
        nodes: 1,
        parallelism: Parallelism { tensor: tp, pipeline: 1 },
        args,
        env: engine.env.clone(),
        resources: ProfileResources {
            cpu: (4 + 2 * tp).to_string(),
            memory: format!("{}Gi", 16u64.max(4 + 3 * u64::from(tp))),
            shared_memory: Some(if tp > 1 { "8Gi" } else { "2Gi" }.into()),
            // The checkpoint is bf16 even for online FP8.
            ephemeral_storage: Some(format!("{}Gi", gib(arch.weight_bytes(Precision::Bf16) * 1.2) + 10)),
            extra: engine.resource_extras.clone(),
        },
        performance: None,
        generated: false,
    }
}

/// Writes `study.yaml` and `candidates/*.yaml` into `dir` (which must not hold a study yet).
pub fn write(dir: &Path, study: &Study, candidates: &[Profile]) -> Result<(), StudyError> {
    if dir.join("study.yaml").exists() {
        return Err(StudyError {
            path: dir.display().to_string(),
            problem: "already holds a study; choose another -o DIR (its results would no longer match)".into(),
        });
    }
    let cdir = dir.join("candidates");
    std::fs::create_dir_all(&cdir)
        .map_err(|e| StudyError { path: cdir.display().to_string(), problem: e.to_string() })?;
    for c in candidates {
        let yaml = serde_saphyr::to_string(c)
            .map_err(|e| StudyError { path: c.name.clone(), problem: format!("cannot serialize: {e}") })?;
        super::write_atomic(&cdir.join(format!("{}.yaml", c.name)), yaml.as_bytes())?;
    }
    let yaml = serde_saphyr::to_string(study)
        .map_err(|e| StudyError { path: "study.yaml".into(), problem: format!("cannot serialize: {e}") })?;
    super::write_atomic(&dir.join("study.yaml"), yaml.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(accelerator: &str, count: u32) -> PlanRequest {
        PlanRequest {
            model: "meta-llama/Llama-3.1-8B-Instruct".into(),
            accelerator: accelerator.into(),
            count,
            device_memory_mib: None,
            precisions: vec![],
            max_num_seqs: vec![64, 256],
            max_model_len: vec![],
            tensor: vec![],
            bench: BenchPlan { input_tokens: 128, output_tokens: 128, concurrencies: vec![1, 16], requests: None },
        }
    }

    #[test]
    fn an_h100_pair_gets_tp1_and_tp2_in_bf16_and_fp8_with_steps() {
        let (study, c) = plan(&req("nvidia/h100-sxm-80gb", 2), &Engines::builtin()).unwrap();
        assert_eq!(study.accelerator, "nvidia/h100-sxm-80gb");
        let names: Vec<&str> = c.iter().map(|p| p.name.as_str()).collect();
        assert!(names.contains(&"study-nvidia-h100-sxm-80gb-x1-bf16-s64-l8k"), "{names:?}");
        assert!(names.contains(&"study-nvidia-h100-sxm-80gb-x2-fp8-s256-l128k"), "{names:?}");
        // 2 TP x 2 precisions x 2 lengths (8k, 128k) x 2 max-num-seqs.
        assert_eq!(c.len(), 16);
        let fp8 = c.iter().find(|p| p.precision == Precision::Fp8).unwrap();
        assert_eq!(fp8.args["quantization"], "fp8");
        assert!(c.iter().all(|p| p.parallelism.tensor == p.accelerator.count && p.validate("t").is_ok()));
    }

    #[test]
    fn an_l4_gets_bf16_only_where_it_fits_and_no_fp8_on_an_a100() {
        let (_, c) = plan(&req("nvidia/l4", 1), &Engines::builtin()).unwrap();
        // 8B bf16 fits one L4 up to 16k tokens; FP8 runs natively on Ada.
        assert!(
            c.iter().any(|p| p.name == "study-nvidia-l4-x1-bf16-s64-l16k"),
            "{:?}",
            c.iter().map(|p| &p.name).collect::<Vec<_>>()
        );
        let (_, c) = plan(&req("nvidia/a100-sxm-40gb", 1), &Engines::builtin()).unwrap();
        assert!(c.iter().all(|p| p.precision == Precision::Bf16));
    }

    #[test]
    fn bad_requests_say_what_to_fix() {
        let e = plan(&req("nvidia/nope", 1), &Engines::builtin()).unwrap_err();
        assert!(e.contains("not in the device table") && e.contains("--device-memory-mib"), "{e}");
        let e = plan(&req("h100", 1), &Engines::builtin()).unwrap_err();
        assert!(e.contains("VENDOR/PRODUCT"), "{e}");
        let mut r = req("nvidia/l4", 1);
        r.model = "acme/unknown".into();
        assert!(plan(&r, &Engines::builtin()).unwrap_err().contains("architecture table"));
        let mut r = req("nvidia/l4", 1);
        r.model = "meta-llama/Llama-3.1-70B-Instruct".into();
        let e = plan(&r, &Engines::builtin()).unwrap_err();
        assert!(e.contains("no candidate fits 1x l4"), "{e}");
        let mut r = req("nvidia/l4", 1);
        r.bench.concurrencies = vec![4];
        assert!(plan(&r, &Engines::builtin()).unwrap_err().contains("include 1"));
    }
}
