//! Memory arithmetic for generated profiles (DESIGN §5; numbers and formulas from
//! hardware.md §6): weight bytes by precision, KV cache per token, a runtime reserve, the
//! tensor-parallel rule and `max-model-len`.

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

/// A model architecture from its Hugging Face `config.json`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Arch {
    /// Hugging Face ids (base and instruct) it covers.
    pub ids: &'static [&'static str],
    /// Transformer layers.
    pub layers: u32,
    /// Hidden size.
    pub hidden: u64,
    /// Attention (query) heads.
    pub q_heads: u32,
    /// Key/value heads (GQA).
    pub kv_heads: u32,
    /// Head dimension.
    pub head_dim: u64,
    /// Vocabulary size.
    pub vocab: u64,
    /// Maximum context in `config.json`.
    pub max_context: u64,
    /// Total parameters.
    pub params: f64,
    /// Input and output embeddings share weights.
    pub tied_embeddings: bool,
    /// Sliding-window layers: (window tokens, every n-th layer uses it); Gemma 2 alternates.
    pub sliding_window: Option<(u64, u32)>,
}

/// Built-in architectures: every model of hardware.md §6.3.
pub const ARCHITECTURES: &[Arch] = &[
    Arch {
        ids: &["meta-llama/Llama-3.1-8B", "meta-llama/Llama-3.1-8B-Instruct"],
        layers: 32,
        hidden: 4096,
        q_heads: 32,
        kv_heads: 8,
        head_dim: 128,
        vocab: 128256,
        max_context: 131072,
        params: 8.03e9,
        tied_embeddings: false,
        sliding_window: None,
    },
    Arch {
        ids: &["meta-llama/Llama-3.1-70B", "meta-llama/Llama-3.1-70B-Instruct"],
        layers: 80,
        hidden: 8192,
        q_heads: 64,
        kv_heads: 8,
        head_dim: 128,
        vocab: 128256,
        max_context: 131072,
        params: 70.55e9,
        tied_embeddings: false,
        sliding_window: None,
    },
    Arch {
        ids: &["mistralai/Mistral-7B-Instruct-v0.3", "mistralai/Mistral-7B-v0.3"],
        layers: 32,
        hidden: 4096,
        q_heads: 32,
        kv_heads: 8,
        head_dim: 128,
        vocab: 32768,
        max_context: 32768,
        params: 7.25e9,
        tied_embeddings: false,
        sliding_window: None,
    },
    Arch {
        ids: &["Qwen/Qwen2.5-7B-Instruct", "Qwen/Qwen2.5-7B"],
        layers: 28,
        hidden: 3584,
        q_heads: 28,
        kv_heads: 4,
        head_dim: 128,
        vocab: 152064,
        max_context: 32768,
        params: 7.62e9,
        tied_embeddings: false,
        sliding_window: None,
    },
    Arch {
        ids: &["Qwen/Qwen2.5-72B-Instruct", "Qwen/Qwen2.5-72B"],
        layers: 80,
        hidden: 8192,
        q_heads: 64,
        kv_heads: 8,
        head_dim: 128,
        vocab: 152064,
        max_context: 32768,
        params: 72.71e9,
        tied_embeddings: false,
        sliding_window: None,
    },
    Arch {
        ids: &["mistralai/Mixtral-8x7B-Instruct-v0.1", "mistralai/Mixtral-8x7B-v0.1"],
        layers: 32,
        hidden: 4096,
        q_heads: 32,
        kv_heads: 8,
        head_dim: 128,
        vocab: 32000,
        max_context: 32768,
        params: 46.70e9,
        tied_embeddings: false,
        sliding_window: None,
    },
    Arch {
        ids: &["meta-llama/Llama-3.2-1B-Instruct", "meta-llama/Llama-3.2-1B"],
        layers: 16,
        hidden: 2048,
        q_heads: 32,
        kv_heads: 8,
        head_dim: 64,
        vocab: 128256,
        max_context: 131072,
        params: 1.24e9,
        tied_embeddings: true,
        sliding_window: None,
    },
    Arch {
        ids: &["meta-llama/Llama-3.2-3B-Instruct", "meta-llama/Llama-3.2-3B"],
        layers: 28,
        hidden: 3072,
        q_heads: 24,
        kv_heads: 8,
        head_dim: 128,
        vocab: 128256,
        max_context: 131072,
        params: 3.21e9,
        tied_embeddings: true,
        sliding_window: None,
    },
    Arch {
        ids: &["google/gemma-2-9b-it", "google/gemma-2-9b"],
        layers: 42,
        hidden: 3584,
        q_heads: 16,
        kv_heads: 8,
        head_dim: 256,
        vocab: 256000,
        max_context: 8192,
        params: 9.24e9,
        tied_embeddings: true,
        sliding_window: Some((4096, 2)),
    },
    Arch {
        ids: &["google/gemma-2-27b-it", "google/gemma-2-27b"],
        layers: 46,
        hidden: 4608,
        q_heads: 32,
        kv_heads: 16,
        head_dim: 128,
        vocab: 256000,
        max_context: 8192,
        params: 27.2e9,
        tied_embeddings: true,
        sliding_window: Some((4096, 2)),
    },
];

/// The architecture of a Hugging Face model id (case-insensitive), if built in.
pub fn arch(model: &str) -> Option<&'static Arch> {
    ARCHITECTURES.iter().find(|a| a.ids.iter().any(|id| id.eq_ignore_ascii_case(model)))
}

impl Arch {
    /// Embedding parameters (input, plus output unless tied): they stay 16-bit in quantized
    /// checkpoints.
    pub fn embedding_params(&self) -> f64 {
        (self.vocab * self.hidden) as f64 * if self.tied_embeddings { 1.0 } else { 2.0 }
    }

    /// Weight bytes at a precision (hardware.md §6.1: FP8/INT8 keep embeddings 16-bit; INT4
    /// g128 adds a 16-bit scale and 4-bit zero per 128 weights; 4-bit floats a scale per 16).
    pub fn weight_bytes(&self, precision: Precision) -> f64 {
        let e = self.embedding_params().min(self.params);
        let body = self.params - e;
        match precision {
            Precision::Fp32 => self.params * 4.0,
            Precision::Bf16 | Precision::Fp16 => self.params * 2.0,
            Precision::Fp8 | Precision::Int8 => body + e * 2.0,
            Precision::Int4 => body * (4.0 + 20.0 / 128.0) / 8.0 + e * 2.0,
            Precision::Nvfp4 | Precision::Mxfp4 => body * (4.0 + 8.0 / 16.0) / 8.0 + e * 2.0,
        }
    }

    /// KV-cache bytes for `tokens` tokens of one sequence, 16-bit KV, all devices together.
    pub fn kv_bytes(&self, tokens: u64) -> f64 {
        let per_layer_token = (2 * u64::from(self.kv_heads) * self.head_dim * 2) as f64;
        match self.sliding_window {
            None => per_layer_token * f64::from(self.layers) * tokens as f64,
            Some((window, every)) => {
                let windowed = f64::from(self.layers / every);
                let full = f64::from(self.layers) - windowed;
                per_layer_token * (full * tokens as f64 + windowed * tokens.min(window) as f64)
            }
        }
    }

    /// KV bytes per token at long context (dense formula), for display.
    pub fn kv_bytes_per_token(&self) -> f64 {
        (2 * u64::from(self.layers) * u64::from(self.kv_heads) * self.head_dim * 2) as f64
    }
}

/// What a device can hold for one model at one tensor-parallel degree.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fit {
    /// Tensor-parallel degree.
    pub tensor: u32,
    /// Bytes per device left for KV cache (may be negative).
    pub kv_budget_per_device: f64,
    /// Tokens of KV capacity across the group (one sequence's worth of layers).
    pub kv_capacity_tokens: f64,
}

/// KV budget and capacity at `tensor` on devices of `device_mib`.
pub fn fit(a: &Arch, precision: Precision, device_mib: u64, tensor: u32) -> Fit {
    let usable = device_mib as f64 * 1024.0 * 1024.0 * GPU_MEMORY_UTILIZATION;
    let budget = usable - a.weight_bytes(precision) / f64::from(tensor) - runtime_reserve_bytes(tensor);
    // KV heads shard over TP ranks; beyond the KV-head count they are replicated.
    let shards = f64::from(tensor.min(a.kv_heads));
    let capacity = if budget > 0.0 { budget * shards / a.kv_bytes_per_token() } else { 0.0 };
    Fit { tensor, kv_budget_per_device: budget, kv_capacity_tokens: capacity }
}

/// Whether `tokens` of one sequence fit next to the weights and reserve at `tensor` on devices
/// of `device_mib` at 0.90 (used to check published profiles too).
pub fn holds_tokens(a: &Arch, precision: Precision, device_mib: u64, tensor: u32, tokens: u64) -> bool {
    holds(a, &fit(a, precision, device_mib, tensor), tokens)
}

/// Whether `tokens` of one sequence fit the KV budget at `tensor`.
fn holds(a: &Arch, f: &Fit, tokens: u64) -> bool {
    f.kv_budget_per_device > 0.0 && a.kv_bytes(tokens) / f64::from(f.tensor.min(a.kv_heads)) <= f.kv_budget_per_device
}

/// The generated sizing: tensor parallelism and max-model-len.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sizing {
    /// Tensor-parallel degree.
    pub tensor: u32,
    /// `--max-model-len`.
    pub max_model_len: u64,
    /// KV capacity in tokens.
    pub kv_capacity_tokens: f64,
}

/// DESIGN §5: the smallest TP in {1, 2, 4, 8} that is <= the usable devices per node, divides
/// the attention heads, and at 0.90 holds weights + reserve + KV for min(max context, 8192)
/// tokens; `max-model-len` = the largest power of two <= max context whose KV fits. Err says
/// why nothing fits, with numbers.
pub fn size(a: &Arch, precision: Precision, device_mib: u64, devices_per_node: u32) -> Result<Sizing, String> {
    let need = a.max_context.min(MIN_CONTEXT);
    let mut best: Option<Fit> = None;
    for tensor in [1u32, 2, 4, 8] {
        if tensor > devices_per_node || !a.q_heads.is_multiple_of(tensor) {
            continue;
        }
        let f = fit(a, precision, device_mib, tensor);
        best = Some(f);
        if holds(a, &f, need) {
            let mut len = a.max_context.next_power_of_two();
            if len > a.max_context {
                len /= 2;
            }
            while len > need && !holds(a, &f, len) {
                len /= 2;
            }
            return Ok(Sizing { tensor, max_model_len: len.max(need), kv_capacity_tokens: f.kv_capacity_tokens });
        }
    }
    let weights_gib = a.weight_bytes(precision) / GIB;
    Err(match best {
        None => format!(
            "no tensor-parallel degree in {{1,2,4,8}} is <= {devices_per_node} devices and divides {} heads",
            a.q_heads
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
    fn a_70b_model_on_one_l4_says_why_with_numbers() {
        let l70 = arch("meta-llama/Llama-3.1-70B-Instruct").unwrap();
        let why = size(l70, Precision::Bf16, 23034, 1).unwrap_err();
        assert!(why.contains("131.4 GiB of weights") && why.contains("1x 22.5 GiB"), "{why}");
    }
}
