//! The estimator behind generated profiles (DESIGN §5). This file is the one place for the
//! memory arithmetic (numbers and formulas from hardware.md §6 and vLLM's docs): device memory
//! (weights, KV cache, runtime reserve, the tensor-parallel rule, `max-model-len`), host memory
//! of GPU engines and the whole budget of the CPU engine. `arch` reads model architectures,
//! `roofline` estimates performance.

pub mod arch;
pub mod roofline;

#[cfg(test)]
mod reference_tests;

pub use arch::{Arch, arch};

use crate::api::Precision;

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
/// `gpu-memory-utilization` generated profiles use.
pub const GPU_MEMORY_UTILIZATION: f64 = 0.90;
/// Context every generated profile must hold KV for: min(model max, this).
pub const MIN_CONTEXT: u64 = 8192;

/// Runtime reserve per device besides weights and KV: activations at the default batch budget,
/// sampler logits, CUDA/HIP graphs and communication buffers. hardware.md §6.1/§6.6 observe
/// 1–4 GiB per GPU; we take 3 GiB alone and 4 GiB with tensor parallelism (NCCL/RCCL buffers).
pub fn runtime_reserve_bytes(tensor: u32) -> f64 {
    if tensor > 1 { 4.0 * GIB } else { 3.0 * GIB }
}

/// What a device can hold for one model at one tensor-parallel (and pipeline-parallel) degree.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fit {
    /// Tensor-parallel degree.
    pub tensor: u32,
    /// Pipeline-parallel degree: each stage holds 1/pipeline of the layers, their weights and KV.
    pub pipeline: u32,
    /// Bytes per device left for KV cache (may be negative).
    pub kv_budget_per_device: f64,
    /// Tokens of KV capacity across the group (one sequence's worth of layers).
    pub kv_capacity_tokens: f64,
}

/// KV budget and capacity at `tensor` on devices of `device_mib`.
pub fn fit(a: &Arch, precision: Precision, device_mib: u64, tensor: u32) -> Fit {
    fit_pipeline(a, precision, device_mib, tensor, 1)
}

/// KV budget and capacity at `tensor` x `pipeline`: every device holds 1/(tensor x pipeline) of
/// the weights, and the KV of its stage's layers sharded over the tensor ranks.
pub fn fit_pipeline(a: &Arch, precision: Precision, device_mib: u64, tensor: u32, pipeline: u32) -> Fit {
    let pipeline = pipeline.max(1);
    let usable = device_mib as f64 * 1024.0 * 1024.0 * GPU_MEMORY_UTILIZATION;
    let devices = tensor.saturating_mul(pipeline);
    let budget = usable - a.weight_bytes(precision) / f64::from(devices) - runtime_reserve_bytes(devices);
    // KV heads shard over TP ranks; beyond the KV-head count they are replicated.
    let shards = f64::from(tensor.min(a.kv_heads)) * f64::from(pipeline);
    let capacity = if budget > 0.0 { budget * shards / a.kv_bytes_per_token() } else { 0.0 };
    Fit { tensor, pipeline, kv_budget_per_device: budget, kv_capacity_tokens: capacity }
}

/// Whether `tokens` of one sequence fit next to the weights and reserve at `tensor` on devices
/// of `device_mib` at 0.90 (used to check published profiles too).
pub fn holds_tokens(a: &Arch, precision: Precision, device_mib: u64, tensor: u32, tokens: u64) -> bool {
    holds(a, &fit(a, precision, device_mib, tensor), tokens)
}

/// Whether `tokens` of one sequence fit the KV budget at `tensor`.
fn holds(a: &Arch, f: &Fit, tokens: u64) -> bool {
    let shards = f64::from(f.tensor.min(a.kv_heads)) * f64::from(f.pipeline.max(1));
    f.kv_budget_per_device > 0.0 && a.kv_bytes(tokens) / shards <= f.kv_budget_per_device
}

/// The generated sizing: tensor parallelism and max-model-len.
#[derive(Debug, Clone, PartialEq)]
pub struct Sizing {
    /// Tensor-parallel degree.
    pub tensor: u32,
    /// Pipeline-parallel degree = nodes of a replica (1: one node).
    pub pipeline: u32,
    /// `--max-model-len`.
    pub max_model_len: u64,
    /// KV capacity in tokens.
    pub kv_capacity_tokens: f64,
    /// Why this tensor-parallel degree, with numbers.
    pub why: String,
}

/// Loading a 16-bit checkpoint and quantizing it online (`--quantization fp8`) first holds the
/// 16-bit weights on the device (vLLM fp8.md: "we load the model at original precision before
/// quantizing down to 8-bits, so you need enough memory to load the whole model").
fn loads(a: &Arch, precision: Precision, device_mib: u64, devices: u32) -> bool {
    if precision == a.native_precision() {
        return true;
    }
    let usable = device_mib as f64 * 1024.0 * 1024.0 * GPU_MEMORY_UTILIZATION;
    a.weight_bytes(a.native_precision()) / f64::from(devices) + runtime_reserve_bytes(devices) <= usable
}

/// DESIGN §5: the smallest TP in {1, 2, 4, 8} that is <= the usable devices per node, divides
/// the attention heads, and at 0.90 holds weights + reserve + KV for min(max context, 8192)
/// tokens; `max-model-len` = the largest power of two <= max context whose KV fits. Err says
/// why nothing fits, with numbers.
pub fn size(a: &Arch, precision: Precision, device_mib: u64, devices_per_node: u32) -> Result<Sizing, String> {
    let need = a.max_context.min(MIN_CONTEXT);
    let mut best: Option<Fit> = None;
    let mut smaller = vec![];
    for tensor in [1u32, 2, 4, 8] {
        if tensor > devices_per_node || !a.q_heads.is_multiple_of(tensor) {
            continue;
        }
        let f = fit(a, precision, device_mib, tensor);
        best = Some(f);
        if holds(a, &f, need) && loads(a, precision, device_mib, tensor) {
            let mut s = sizing_at(a, precision, device_mib, &f);
            if !smaller.is_empty() {
                s.why = format!("{}; {}", s.why, smaller.join("; "));
            }
            return Ok(s);
        }
        smaller.push(if loads(a, precision, device_mib, tensor) {
            format!(
                "TP{tensor} leaves {:.1} GiB per device, less than KV for {need} tokens",
                f.kv_budget_per_device / GIB
            )
        } else {
            format!("TP{tensor} cannot load the 16-bit checkpoint before quantizing it")
        });
    }
    let weights_gib = a.weight_bytes(precision) / GIB;
    Err(match best {
        None => format!(
            "no tensor-parallel degree in {{1,2,4,8}} is <= {devices_per_node} devices and divides {} heads",
            a.q_heads
        ),
        Some(f) if !loads(a, precision, device_mib, f.tensor) => format!(
            "online {} quantization loads {:.1} GiB of 16-bit weights first, more than {}x {:.1} GiB hold",
            crate::profile::oci::enum_str(&precision),
            a.weight_bytes(a.native_precision()) / GIB,
            f.tensor,
            device_mib as f64 / 1024.0
        ),
        Some(f) => format!(
            "{weights_gib:.1} GiB of weights + {:.0} GiB reserve + KV for {need} tokens do not fit {}x {:.1} GiB at 0.90 (TP{} leaves {:.1} GiB per device for KV)",
            runtime_reserve_bytes(f.tensor) / GIB,
            f.tensor,
            device_mib as f64 / 1024.0,
            f.tensor,
            f.kv_budget_per_device / GIB
        ),
    })
}

/// Most nodes a generated profile spans.
pub const MAX_GENERATED_NODES: u32 = 8;

/// When no node holds the model (`size` failed with `single`): vLLM's documented multi-node
/// layout, tensor parallelism over the whole node (the largest of {1, 2, 4, 8} <= the devices
/// per node that divides the heads) and pipeline parallelism across the fewest nodes (2 to
/// [`MAX_GENERATED_NODES`], at most the layer count) that hold weights + reserve + KV for
/// min(max context, 8192) tokens at 0.90.
pub fn size_multi_node(
    a: &Arch,
    precision: Precision,
    device_mib: u64,
    devices_per_node: u32,
    single: &str,
) -> Result<Sizing, String> {
    let need = a.max_context.min(MIN_CONTEXT);
    let Some(tensor) = [8u32, 4, 2, 1].into_iter().find(|t| *t <= devices_per_node && a.q_heads.is_multiple_of(*t))
    else {
        return Err(single.to_string());
    };
    for nodes in 2..=MAX_GENERATED_NODES.min(a.layers) {
        let f = fit_pipeline(a, precision, device_mib, tensor, nodes);
        if holds(a, &f, need) && loads(a, precision, device_mib, tensor * nodes) {
            let mut s = sizing_at(a, precision, device_mib, &f);
            s.why = format!("one node is not enough ({single}); {}", s.why);
            return Ok(s);
        }
    }
    Err(format!(
        "{single}; nor do {MAX_GENERATED_NODES} nodes of {tensor}x {:.1} GiB with pipeline parallelism",
        device_mib as f64 / 1024.0
    ))
}

/// The sizing at the fit `f` (which holds min(max context, 8192) tokens).
fn sizing_at(a: &Arch, precision: Precision, device_mib: u64, f: &Fit) -> Sizing {
    let need = a.max_context.min(MIN_CONTEXT);
    let tensor = f.tensor;
    let pipeline = f.pipeline.max(1);
    let devices = tensor * pipeline;
    let mut len = a.max_context.next_power_of_two();
    if len > a.max_context {
        len /= 2;
    }
    while len > need && !holds(a, f, len) {
        len /= 2;
    }
    let weights = a.weight_bytes(precision) / GIB;
    let layout = if pipeline > 1 {
        format!("TP{tensor} x PP{pipeline} over {pipeline} nodes of {tensor} devices")
    } else {
        format!("TP{tensor}")
    };
    let why = format!(
        "{layout}: {weights:.1} GiB of {} weights = {:.1} GiB per device + {:.0} GiB reserve leave {:.1} GiB of {:.1} GiB (at {GPU_MEMORY_UTILIZATION}) for KV, {:.0}k tokens at {:.0} KiB/token",
        crate::profile::oci::enum_str(&precision),
        weights / f64::from(devices),
        runtime_reserve_bytes(devices) / GIB,
        f.kv_budget_per_device / GIB,
        device_mib as f64 / 1024.0,
        f.kv_capacity_tokens / 1000.0,
        a.kv_bytes_per_token() / 1024.0,
    );
    Sizing { tensor, pipeline, max_model_len: len.max(need), kv_capacity_tokens: f.kv_capacity_tokens, why }
}

/// Larger tensor-parallel degrees than the smallest that fits (`s`), up to the devices per node:
/// more devices per replica buy KV capacity, hence concurrency, and can raise tokens/s per
/// device, so `throughput` ranks them by their estimates too.
pub fn larger(a: &Arch, precision: Precision, device_mib: u64, devices_per_node: u32, s: &Sizing) -> Vec<Sizing> {
    [2u32, 4, 8]
        .into_iter()
        .filter(|t| *t > s.tensor && *t <= devices_per_node && a.q_heads.is_multiple_of(*t))
        .map(|t| {
            let mut bigger = sizing_at(a, precision, device_mib, &fit(a, precision, device_mib, t));
            bigger.why = format!(
                "{}; TP{} is the smallest that fits, TP{t} buys KV for more concurrent requests",
                bigger.why, s.tensor
            );
            bigger
        })
        .collect()
}

/// Host memory of a GPU engine pod, in GiB: the API server process (~4 GB RSS, hardware.md §6.7
/// after vLLM issue #3035) plus, per tensor-parallel worker, its runtime (CUDA/ROCm context,
/// NCCL/RCCL, Python: 2–4 GiB per rank, §6.7; we take 3) and the checkpoint shard it stages
/// while loading (the hub's default `max_shard_size` is 5 GB; a smaller model stages all of
/// it). Never below §6.7's 16 GiB floor. `/dev/shm` comes on top (the renderer adds it).
pub fn gpu_host_memory_gib(a: &Arch, tensor: u32) -> u64 {
    const PROCESS: f64 = 4.0e9;
    const PER_WORKER: f64 = 3.0 * GIB;
    const SHARD: f64 = 5.0e9;
    let staged = a.weight_bytes(a.native_precision()).min(SHARD);
    let bytes = PROCESS + f64::from(tensor) * (PER_WORKER + staged);
    ((bytes / GIB).ceil() as u64).max(16)
}

/// Share of a CPU node's memory the engine may plan for; the rest is the OS, kubelet and
/// page cache (hardware.md §3.7: system-reserved memory is not allocatable).
pub const CPU_MEMORY_UTILIZATION: f64 = 0.90;
/// Runtime memory of the CPU engine besides weights and KV: the API server and engine process
/// (~4 GB RSS, §6.7) and 1 GiB per further rank (oneDNN scratch, shared-memory transport).
pub fn cpu_runtime_reserve_bytes(tensor: u32) -> f64 {
    4.0 * GIB + f64::from(tensor.saturating_sub(1)) * GIB
}
/// Longest context a generated CPU profile offers: prefill on CPUs is slow enough that longer
/// prompts are impractical, and every token of KV is host memory.
pub const CPU_MAX_CONTEXT: u64 = 32768;
/// Sequences of `max-model-len` the CPU KV space is sized for when memory allows.
pub const CPU_TARGET_SEQUENCES: f64 = 4.0;

/// The CPU engine's sizing (vLLM cpu.md: each TP rank holds its weight shard plus
/// `VLLM_CPU_KVCACHE_SPACE` GiB of KV, and a rank is a NUMA node).
#[derive(Debug, Clone, PartialEq)]
pub struct CpuSizing {
    /// NUMA nodes used (= tensor parallelism).
    pub tensor: u32,
    /// `--max-model-len`.
    pub max_model_len: u64,
    /// `VLLM_CPU_KVCACHE_SPACE`, GiB per rank.
    pub kv_space_gib: u64,
    /// The pod's memory request, GiB: weights + KV space of every rank + runtime reserve.
    pub memory_gib: u64,
    /// KV capacity in tokens.
    pub kv_capacity_tokens: f64,
    /// Why, with numbers.
    pub why: String,
}

/// Sizes the CPU engine on NUMA nodes of `numa_mib` each: the smallest TP in {1, 2, 4, 8}
/// (<= NUMA nodes, dividing the heads) where each node holds its weight shard, KV space for
/// at least min(max context, 8192) tokens and its share of the reserve, within 90% of its
/// memory. KV space is sized for 4 sequences of `max-model-len` (at most 32k) when it fits.
pub fn size_cpu(a: &Arch, precision: Precision, numa_mib: u64, numa_nodes: u32) -> Result<CpuSizing, String> {
    let need = a.max_context.min(MIN_CONTEXT);
    let usable = numa_mib as f64 * 1024.0 * 1024.0 * CPU_MEMORY_UTILIZATION;
    let weights = a.weight_bytes(precision);
    let mut tried = vec![];
    for tensor in [1u32, 2, 4, 8] {
        if tensor > numa_nodes || !a.q_heads.is_multiple_of(tensor) {
            continue;
        }
        let t = f64::from(tensor);
        let shards = f64::from(tensor.min(a.kv_heads));
        let room = usable - weights / t - cpu_runtime_reserve_bytes(tensor) / t;
        let need_gib = (a.kv_bytes(need) / shards / GIB).ceil().max(1.0);
        let room_gib = (room / GIB).floor();
        if room_gib < need_gib {
            tried.push(format!(
                "TP{tensor} leaves {:.1} GiB per NUMA node for KV, {need_gib:.0} GiB needed for {need} tokens",
                room / GIB
            ));
            continue;
        }
        let cap = a.max_context.min(CPU_MAX_CONTEXT);
        let mut len = cap.next_power_of_two();
        if len > cap {
            len /= 2;
        }
        while len > need && a.kv_bytes(len) / shards > room_gib * GIB {
            len /= 2;
        }
        let len = len.max(need);
        let target = (a.kv_bytes(len) * CPU_TARGET_SEQUENCES / shards / GIB).ceil();
        let space = target.clamp(need_gib, room_gib) as u64;
        let memory = ((weights + t * space as f64 * GIB + cpu_runtime_reserve_bytes(tensor)) / GIB).ceil() as u64;
        let capacity = space as f64 * GIB * shards / a.kv_bytes_per_token();
        let why = format!(
            "TP{tensor} on NUMA nodes of {:.0} GiB: {:.1} GiB of {} weights + {space} GiB KV space per node ({:.0}k tokens) + {:.0} GiB runtime = {memory} GiB{}",
            numa_mib as f64 / 1024.0,
            weights / GIB,
            crate::profile::oci::enum_str(&precision),
            capacity / 1000.0,
            cpu_runtime_reserve_bytes(tensor) / GIB,
            if tried.is_empty() { String::new() } else { format!("; {}", tried.join("; ")) }
        );
        return Ok(CpuSizing {
            tensor,
            max_model_len: len,
            kv_space_gib: space,
            memory_gib: memory,
            kv_capacity_tokens: capacity,
            why,
        });
    }
    Err(if tried.is_empty() {
        format!(
            "no tensor-parallel degree in {{1,2,4,8}} is <= {numa_nodes} NUMA nodes and divides {} heads",
            a.q_heads
        )
    } else {
        format!(
            "{:.1} GiB of weights + KV for {need} tokens + {:.0} GiB runtime do not fit NUMA nodes of {:.0} GiB at {CPU_MEMORY_UTILIZATION} ({})",
            weights / GIB,
            cpu_runtime_reserve_bytes(1) / GIB,
            numa_mib as f64 / 1024.0,
            tried.join("; ")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn llama8b() -> &'static Arch {
        arch("meta-llama/Llama-3.1-8B-Instruct").unwrap()
    }

    #[test]
    fn weight_bytes_match_the_reference_table() {
        let gb = |b: f64| (b / 1e9 * 10.0).round() / 10.0;
        assert_eq!(gb(llama8b().weight_bytes(Precision::Bf16)), 16.1);
        assert_eq!(gb(llama8b().weight_bytes(Precision::Fp8)), 9.1);
        assert_eq!(gb(llama8b().weight_bytes(Precision::Int4)), 5.7);
        let l70 = arch("meta-llama/Llama-3.1-70B-Instruct").unwrap();
        assert_eq!(gb(l70.weight_bytes(Precision::Bf16)), 141.1);
        assert_eq!(gb(l70.weight_bytes(Precision::Fp8)), 72.7);
        assert_eq!(gb(l70.weight_bytes(Precision::Int4)), 39.8);
        let mixtral = arch("mistralai/Mixtral-8x7B-Instruct-v0.1").unwrap();
        assert_eq!(gb(mixtral.weight_bytes(Precision::Fp8)), 47.0);
    }

    #[test]
    fn kv_per_token_matches_the_reference_and_gemma_keeps_a_window() {
        assert_eq!(llama8b().kv_bytes(1), 128.0 * 1024.0);
        assert_eq!(arch("meta-llama/Llama-3.1-70B-Instruct").unwrap().kv_bytes(1), 320.0 * 1024.0);
        assert_eq!(arch("Qwen/Qwen2.5-7B-Instruct").unwrap().kv_bytes(1), 56.0 * 1024.0);
        let gemma = arch("google/gemma-2-9b-it").unwrap();
        let dense = gemma.kv_bytes_per_token() * 8192.0;
        let windowed = gemma.kv_bytes(8192);
        assert!((windowed / dense - 0.75).abs() < 0.01, "half the layers hold at most 4096 of 8192 tokens");
        assert_eq!(gemma.kv_bytes(4096), gemma.kv_bytes_per_token() * 4096.0);
    }

    #[test]
    fn capacities_match_the_worked_table() {
        let k = |model: &str, p, mib, tp| (fit(arch(model).unwrap(), p, mib, tp).kv_capacity_tokens / 1000.0).round();
        // hardware.md §6.6: Llama-3.1-8B bf16 on H100 TP1 440k, on L4 TP2 144k; 70B fp8 on H100 TP2 222k.
        assert_eq!(k("meta-llama/Llama-3.1-8B-Instruct", Precision::Bf16, 81559, 1), 440.0);
        assert_eq!(k("meta-llama/Llama-3.1-8B-Instruct", Precision::Bf16, 23034, 2), 144.0);
        assert_eq!(k("meta-llama/Llama-3.1-70B-Instruct", Precision::Fp8, 81559, 2), 222.0);
        assert_eq!(k("meta-llama/Llama-3.1-70B-Instruct", Precision::Bf16, 196608, 1), 126.0);
    }

    #[test]
    fn tensor_parallelism_and_max_model_len_follow_the_design_rule() {
        // 8B bf16 on an L4: TP1 holds 8192 tokens (about 18k fit), so max-model-len 16384.
        let s = size(llama8b(), Precision::Bf16, 23034, 1).unwrap();
        assert_eq!((s.tensor, s.max_model_len), (1, 16384));
        // On an H100 the whole 128k context fits at TP1.
        assert_eq!(size(llama8b(), Precision::Bf16, 81559, 8).unwrap().max_model_len, 131072);
        // 70B bf16 on H100s: TP2 leaves 2.0 GiB per device, enough for 8192 tokens (12.9k fit),
        // so TP2 with max-model-len 8192; the §6.6 table asks 32k and so shows TP4.
        let l70 = arch("meta-llama/Llama-3.1-70B-Instruct").unwrap();
        let s = size(l70, Precision::Bf16, 81559, 8).unwrap();
        assert_eq!((s.tensor, s.max_model_len), (2, 8192));
        assert_eq!(size(l70, Precision::Bf16, 81559, 1).map(|s| s.tensor).ok(), None, "one H100 is not enough");
        // FP8 70B: TP1 leaves 1.0 GiB for 2.5 GiB of KV, so TP2.
        assert_eq!(size(l70, Precision::Fp8, 81559, 8).unwrap().tensor, 2);
        // Qwen2.5-7B has 28 heads: TP8 never divides them.
        let qwen = arch("Qwen/Qwen2.5-7B-Instruct").unwrap();
        assert!(size(qwen, Precision::Bf16, 8192, 8).is_err());
    }

    #[test]
    fn llama_405b_in_bf16_spans_two_h100_nodes_with_tensor_inside_and_pipeline_across() {
        let a = arch("meta-llama/Llama-3.1-405B-Instruct").unwrap();
        let single = size(a, Precision::Bf16, 81559, 8).unwrap_err();
        assert!(single.contains("do not fit 8x 79.6 GiB"), "{single}");
        let s = size_multi_node(a, Precision::Bf16, 81559, 8, &single).unwrap();
        assert_eq!((s.tensor, s.pipeline), (8, 2), "{}", s.why);
        assert!(s.max_model_len >= 8192);
        // Each of the 16 devices holds 1/16 of the 756 GiB of weights.
        let f = fit_pipeline(a, Precision::Bf16, 81559, 8, 2);
        assert!(
            (f.kv_budget_per_device / GIB
                - (81559.0 / 1024.0 * 0.9 - a.weight_bytes(Precision::Bf16) / GIB / 16.0 - 4.0))
                .abs()
                < 0.01
        );
        // A node of 8x MI300X holds it alone.
        assert_eq!(size(a, Precision::Bf16, 196608, 8).unwrap().tensor, 8);
    }

    #[test]
    fn a_70b_model_on_one_l4_says_why_with_numbers() {
        let l70 = arch("meta-llama/Llama-3.1-70B-Instruct").unwrap();
        let why = size(l70, Precision::Bf16, 23034, 1).unwrap_err();
        assert!(why.contains("131.4 GiB of weights") && why.contains("1x 22.5 GiB"), "{why}");
    }
}
