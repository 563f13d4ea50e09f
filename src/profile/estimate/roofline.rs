//! A roofline performance estimate per device (hardware.md §6.1 "single-stream decode ceiling"
//! and §7.4): a decode step streams the weights and the batch's KV cache from device memory
//! and is bounded by compute at large batches; prefill is compute-bound; tensor parallelism
//! adds two all-reduces per layer over the interconnect. Efficiencies are stated constants,
//! not fitted per case; `reference_tests` checks the result against published figures.

use crate::api::{Precision, Vendor};
use crate::hardware::devices;
use crate::hardware::inventory::CpuInfo;

use super::Arch;

/// Prompt tokens the estimated TTFT and throughput assume.
pub const PROMPT_TOKENS: u64 = 1024;
/// Output tokens per request the estimated throughput assumes.
pub const OUTPUT_TOKENS: u64 = 256;
/// Share of peak memory bandwidth a decode step achieves: hardware.md §7.4 measured 58% (H100,
/// 8B fp16) to 77% (A100-40GB, 8B bf16) of the single-stream ceiling; we take 0.7.
pub const BANDWIDTH_EFFICIENCY: f64 = 0.7;
/// Share of dense peak compute that GEMMs achieve in vLLM (typical prefill MFU is 40–60%).
pub const COMPUTE_EFFICIENCY: f64 = 0.5;
/// Latency of one all-reduce besides its bytes (NCCL small-message latency on NVLink is
/// 5–10 µs; PCIe and Ethernet-attached devices pay more).
pub const ALLREDUCE_LATENCY_S: f64 = 8e-6;
/// Scheduler, sampling and launch time per engine step.
pub const STEP_OVERHEAD_S: f64 = 0.3e-3;
/// The default `max-num-seqs` of vLLM's API server (hardware.md §5): concurrency is capped here.
pub const MAX_NUM_SEQS: u32 = 256;

/// What the roofline needs of one device (a NUMA node for the CPU engine).
#[derive(Debug, Clone, PartialEq)]
pub struct DevicePerf {
    /// What this is, for explanations.
    pub name: String,
    /// Memory bandwidth, bytes/s.
    pub bandwidth: f64,
    /// Dense 16-bit compute, FLOP/s.
    pub bf16_flops: f64,
    /// Dense FP8 compute, FLOP/s; None when the device has no FP8 W8A8 path.
    pub fp8_flops: Option<f64>,
    /// Interconnect bandwidth per device and direction, bytes/s.
    pub link: f64,
    /// Physical cores (CPU NUMA nodes; 0 for accelerators).
    pub cores: u32,
}

impl DevicePerf {
    /// The device-table entry of `slug`, when the table states its bandwidth and compute.
    pub fn of_slug(slug: &str) -> Option<DevicePerf> {
        let d = devices::by_slug(slug)?;
        Some(DevicePerf {
            name: d.product_name.clone(),
            bandwidth: f64::from(d.bandwidth_gbs?) * 1e9,
            bf16_flops: f64::from(d.bf16_tflops?) * 1e12,
            fp8_flops: d.fp8_tflops.map(|t| f64::from(t) * 1e12),
            link: f64::from(d.link_gbs.unwrap_or(32)) * 1e9,
            cores: 0,
        })
    }

    /// One NUMA node of a CPU: memory bandwidth from the ISA generation the flags reveal
    /// (AMX: Sapphire Rapids or later, 8 channels DDR5-4800 = 307 GB/s per socket; AVX-512:
    /// 8 channels DDR4-3200 = 205 GB/s; else 2 channels DDR4 = 51 GB/s), shared by the
    /// socket's NUMA nodes; compute = cores x 2 GHz x FLOP/cycle (AMX 1024 bf16, AVX-512 64,
    /// AVX2 32). UPI between sockets ~60 GB/s.
    pub fn of_cpu(cpu: &CpuInfo) -> DevicePerf {
        let numa = cpu.numa_node_count.max(1);
        let numa_per_socket = (numa / cpu.sockets.max(1)).max(1);
        let (socket_gbs, flops_per_cycle, isa) = if cpu.has_amx() {
            (307.0, 1024.0, "AMX")
        } else if cpu.has_avx512() {
            (205.0, 64.0, "AVX-512")
        } else {
            (51.0, 32.0, "AVX2")
        };
        let per_node = (cpu.cores / numa).max(1);
        let cores = f64::from(per_node);
        DevicePerf {
            name: format!("{isa} CPU NUMA node ({cores:.0} cores)"),
            bandwidth: socket_gbs * 1e9 / f64::from(numa_per_socket),
            bf16_flops: cores * 2.0e9 * flops_per_cycle,
            fp8_flops: None,
            link: 60e9,
            cores: per_node,
        }
    }

    /// The slower of two (a group of CPU nodes is as fast as its slowest).
    pub fn min(self, other: DevicePerf) -> DevicePerf {
        if other.bandwidth < self.bandwidth { other } else { self }
    }

    /// Dense compute at `precision`, FLOP/s.
    pub fn flops_of(&self, precision: Precision) -> f64 {
        self.flops(precision)
    }

    fn flops(&self, precision: Precision) -> f64 {
        match precision {
            Precision::Fp8 => self.fp8_flops.unwrap_or(self.bf16_flops),
            _ => self.bf16_flops,
        }
    }
}

/// Whether a device can serve `precision` with its own kernels: FP8 where the device table
/// lists FP8 compute (Ada/Hopper/Blackwell, MI300 and later, Gaudi); 16-bit everywhere.
pub fn supports(vendor: Vendor, perf: Option<&DevicePerf>, precision: Precision) -> bool {
    match precision {
        Precision::Bf16 | Precision::Fp16 | Precision::Fp32 => true,
        Precision::Fp8 => vendor != Vendor::Cpu && perf.is_some_and(|p| p.fp8_flops.is_some()),
        // Weight-only integer kernels exist on NVIDIA, Intel GPUs and CPUs (hardware.md §5).
        Precision::Int4 | Precision::Int8 => matches!(vendor, Vendor::Nvidia | Vendor::Intel | Vendor::Cpu),
        Precision::Nvfp4 | Precision::Mxfp4 => false,
    }
}

/// The estimate a generated profile carries.
#[derive(Debug, Clone, PartialEq)]
pub struct Estimate {
    /// Time to first token for a `PROMPT_TOKENS` prompt on an idle engine, ms.
    pub ttft_ms: f64,
    /// Inter-token latency of a single stream, ms.
    pub itl_ms: f64,
    /// Output tokens/s of a single stream.
    pub tokens_per_sec_single: f64,
    /// Concurrent requests the KV cache holds at `PROMPT_TOKENS + OUTPUT_TOKENS` (<= 256).
    pub concurrency: u32,
    /// Inter-token latency at `concurrency`, ms.
    pub itl_ms_at_concurrency: f64,
    /// Output tokens/s of the replica at `concurrency`, prefills included.
    pub tokens_per_sec: f64,
}

fn allreduce_s(a: &Arch, perf: &DevicePerf, tensor: u32, tokens: f64) -> f64 {
    if tensor <= 1 {
        return 0.0;
    }
    let t = f64::from(tensor);
    let bytes = tokens * a.hidden as f64 * 2.0;
    2.0 * f64::from(a.layers) * (ALLREDUCE_LATENCY_S + 2.0 * (t - 1.0) / t * bytes / perf.link)
}

/// One decode step of `batch` sequences at `context` tokens each, seconds.
fn decode_step_s(a: &Arch, precision: Precision, perf: &DevicePerf, tensor: u32, batch: u32, context: u64) -> f64 {
    let t = f64::from(tensor);
    let b = f64::from(batch);
    let shards = f64::from(tensor.min(a.kv_heads));
    let bytes = a.weight_bytes_read(precision, batch) / t + b * a.kv_bytes(context) / shards;
    let memory = bytes / (perf.bandwidth * BANDWIDTH_EFFICIENCY);
    let attention = 4.0 * f64::from(a.layers) * f64::from(a.q_heads) * a.head_dim as f64 * context as f64;
    let flops = b * (2.0 * a.active_params + attention) / t;
    let compute = flops / (perf.flops(precision) * COMPUTE_EFFICIENCY);
    memory.max(compute) + allreduce_s(a, perf, tensor, b) + STEP_OVERHEAD_S
}

/// Prefill of one `tokens`-token prompt, seconds.
fn prefill_s(a: &Arch, precision: Precision, perf: &DevicePerf, tensor: u32, tokens: u64) -> f64 {
    let t = f64::from(tensor);
    let n = tokens as f64;
    // Causal attention: QK^T and AV over half the n x n scores.
    let attention = 2.0 * f64::from(a.layers) * f64::from(a.q_heads) * a.head_dim as f64 * n * n;
    let compute = (2.0 * a.active_params * n + attention) / t / (perf.flops(precision) * COMPUTE_EFFICIENCY);
    let memory = a.weight_bytes_read(precision, u32::try_from(tokens).unwrap_or(u32::MAX))
        / t
        / (perf.bandwidth * BANDWIDTH_EFFICIENCY);
    compute.max(memory) + allreduce_s(a, perf, tensor, n) + STEP_OVERHEAD_S
}

/// The roofline estimate for `a` at `precision` on `tensor` devices like `perf`, whose KV cache
/// holds `kv_capacity_tokens`.
pub fn estimate(a: &Arch, precision: Precision, perf: &DevicePerf, tensor: u32, kv_capacity_tokens: f64) -> Estimate {
    let per_request = (PROMPT_TOKENS + OUTPUT_TOKENS) as f64;
    let concurrency = ((kv_capacity_tokens / per_request).floor() as u32).clamp(1, MAX_NUM_SEQS);
    let mid = PROMPT_TOKENS + OUTPUT_TOKENS / 2;
    let prefill = prefill_s(a, precision, perf, tensor, PROMPT_TOKENS);
    let itl1 = decode_step_s(a, precision, perf, tensor, 1, mid);
    let itl = decode_step_s(a, precision, perf, tensor, concurrency, mid);
    // Continuous batching: while `concurrency` requests each emit OUTPUT_TOKENS, the engine
    // also prefills `concurrency` new prompts.
    let cycle = OUTPUT_TOKENS as f64 * itl + f64::from(concurrency) * prefill;
    Estimate {
        ttft_ms: prefill * 1e3,
        itl_ms: itl1 * 1e3,
        tokens_per_sec_single: 1.0 / itl1,
        concurrency,
        itl_ms_at_concurrency: itl * 1e3,
        tokens_per_sec: f64::from(concurrency) * OUTPUT_TOKENS as f64 / cycle,
    }
}

/// Decode tokens/s of `batch` streams at `context` tokens (for comparisons with published
/// single-configuration figures).
pub fn decode_tokens_per_sec(
    a: &Arch,
    precision: Precision,
    perf: &DevicePerf,
    tensor: u32,
    batch: u32,
    context: u64,
) -> f64 {
    f64::from(batch) / decode_step_s(a, precision, perf, tensor, batch, context)
}

/// TTFT and TPOT of one request of `isl` prompt / `osl` output tokens at batch `batch`, ms
/// (the shape aiconfigurator reports).
pub fn ttft_tpot_ms(
    a: &Arch,
    precision: Precision,
    perf: &DevicePerf,
    tensor: u32,
    batch: u32,
    isl: u64,
    osl: u64,
) -> (f64, f64) {
    let prefill = prefill_s(a, precision, perf, tensor, isl) * f64::from(batch.max(1));
    (prefill * 1e3, decode_step_s(a, precision, perf, tensor, batch, isl + osl / 2) * 1e3)
}
