//! Model architectures: what the estimator knows about a model, read from its Hugging Face
//! `config.json` (plus the exact weight bytes of its safetensors metadata when known), or from
//! the built-in table of hardware.md §6.3 when the hub cannot be asked.

use std::path::Path;
use std::sync::OnceLock;

use serde_json::Value;

use crate::api::Precision;

/// The largest `config.json` read (real ones are a few KiB).
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Model types whose parameter layout the estimator knows: decoder-only transformers with
/// gated MLPs (SwiGLU/GeGLU), grouped-query attention and, for the MoE ones, routed experts.
pub const SUPPORTED_MODEL_TYPES: &[&str] =
    &["llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "mixtral", "qwen3_moe", "granite"];

/// A model architecture.
#[derive(Debug, Clone, PartialEq)]
pub struct Arch {
    /// Hugging Face ids it covers (built-in) or the one it was read for.
    pub ids: Vec<String>,
    /// `model_type` of `config.json`.
    pub model_type: String,
    /// Transformer layers.
    pub layers: u32,
    /// Hidden size.
    pub hidden: u64,
    /// MLP intermediate size (per expert for MoE).
    pub intermediate: u64,
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
    /// Parameters one token passes through (= params for dense models).
    pub active_params: f64,
    /// MoE: (experts, experts per token).
    pub experts: Option<(u32, u32)>,
    /// Input and output embeddings share weights.
    pub tied_embeddings: bool,
    /// Sliding-window layers: (window tokens, every n-th layer uses it); Gemma 2 alternates.
    pub sliding_window: Option<(u64, u32)>,
    /// The checkpoint as published: its precision and, from safetensors metadata, its bytes.
    pub checkpoint: Checkpoint,
    /// Where these facts come from (`config.json of X`, `built-in table`).
    pub source: String,
}

/// The published checkpoint.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Checkpoint {
    /// Precision of the stored weights (quantized checkpoints: the quantized one).
    pub precision: Precision,
    /// Exact bytes of all safetensors tensors, when the metadata was read.
    pub bytes: Option<f64>,
}

impl Arch {
    /// Embedding parameters (input, plus output unless tied): they stay 16-bit in quantized
    /// checkpoints.
    pub fn embedding_params(&self) -> f64 {
        (self.vocab * self.hidden) as f64 * if self.tied_embeddings { 1.0 } else { 2.0 }
    }

    /// Weight bytes at a precision: the checkpoint's exact bytes when that is its precision,
    /// else hardware.md §6.1 (FP8/INT8 keep embeddings 16-bit; INT4 g128 adds a 16-bit scale
    /// and 4-bit zero per 128 weights; 4-bit floats a scale per 16).
    pub fn weight_bytes(&self, precision: Precision) -> f64 {
        if let Some(b) = self.checkpoint.bytes.filter(|_| self.checkpoint.precision == precision) {
            return b;
        }
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

    /// Bytes of weights one decode step reads for a batch of `batch` sequences: dense models
    /// read everything; MoE models read the shared part plus the experts the batch's tokens
    /// route to (expected distinct experts of `batch` draws of `k` of `n`).
    pub fn weight_bytes_read(&self, precision: Precision, batch: u32) -> f64 {
        let all = self.weight_bytes(precision);
        match self.experts {
            None => all,
            Some((n, k)) => {
                let expert_share =
                    (self.params - self.active_params) / (1.0 - f64::from(k) / f64::from(n)) / self.params;
                let touched = 1.0 - (1.0 - f64::from(k) / f64::from(n)).powi(batch.max(1) as i32);
                all * (1.0 - expert_share) + all * expert_share * touched
            }
        }
    }

    /// KV-cache bytes for `tokens` tokens of one sequence, 16-bit KV, all devices together.
    pub fn kv_bytes(&self, tokens: u64) -> f64 {
        let per_layer_token = (2 * u64::from(self.kv_heads) * self.head_dim * 2) as f64;
        match self.sliding_window {
            None => per_layer_token * f64::from(self.layers) * tokens as f64,
            Some((window, every)) => {
                let windowed = f64::from(self.layers / every.max(1));
                let full = f64::from(self.layers) - windowed;
                per_layer_token * (full * tokens as f64 + windowed * tokens.min(window) as f64)
            }
        }
    }

    /// KV bytes per token at long context (dense formula), for display and capacity.
    pub fn kv_bytes_per_token(&self) -> f64 {
        (2 * u64::from(self.layers) * u64::from(self.kv_heads) * self.head_dim * 2) as f64
    }

    /// The precision the weights are served at by default: the checkpoint's when quantized,
    /// bf16 for 16/32-bit checkpoints (vLLM serves fp32 checkpoints in 16 bits).
    pub fn native_precision(&self) -> Precision {
        match self.checkpoint.precision {
            Precision::Fp32 | Precision::Fp16 | Precision::Bf16 => Precision::Bf16,
            p => p,
        }
    }

    /// The checkpoint is quantized (fp8, int8, int4, fp4): it is served at that precision only.
    pub fn quantized(&self) -> bool {
        !matches!(self.checkpoint.precision, Precision::Fp32 | Precision::Fp16 | Precision::Bf16)
    }

    /// Reads a `config.json` document for model `id`. Every missing or odd field is named.
    pub fn from_config_json(id: &str, text: &[u8]) -> Result<Arch, String> {
        let v: Value = serde_json::from_slice(text).map_err(|e| format!("config.json of {id} is not JSON: {e}"))?;
        let where_ = format!("config.json of {id}");
        let model_type = v.get("model_type").and_then(Value::as_str).unwrap_or("").to_string();
        let archs: Vec<&str> =
            v.get("architectures").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect();
        if !SUPPORTED_MODEL_TYPES.contains(&model_type.as_str()) {
            let nested =
                if v.get("text_config").is_some() { " (a multimodal model: its text_config is not sized)" } else { "" };
            return Err(format!(
                "{where_}: model_type {model_type:?} (architectures {archs:?}){nested} is not one the estimator can size ({}); publish a profile for it",
                SUPPORTED_MODEL_TYPES.join(", ")
            ));
        }
        // Bounds far above any real model keep the arithmetic below from overflowing on a
        // hostile or broken file.
        let int = |k: &str| -> Result<u64, String> {
            let n = v
                .get(k)
                .and_then(Value::as_u64)
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("{where_}: {k} is missing or not a positive integer"))?;
            let max = match k {
                "max_position_embeddings" => 1 << 30,
                "vocab_size" | "intermediate_size" | "moe_intermediate_size" | "hidden_size" => 1 << 24,
                _ => 1 << 16,
            };
            if n > max {
                return Err(format!("{where_}: {k} {n} is larger than {max}; is this a language model's config.json?"));
            }
            Ok(n)
        };
        let small = |k: &str| -> Result<u32, String> {
            int(k).and_then(|n| u32::try_from(n).map_err(|_| format!("{where_}: {k} {n} is out of range")))
        };
        let layers = small("num_hidden_layers")?;
        let hidden = int("hidden_size")?;
        let q_heads = small("num_attention_heads")?;
        let kv_heads = match v.get("num_key_value_heads") {
            None | Some(Value::Null) => q_heads,
            Some(_) => small("num_key_value_heads")?,
        };
        let head_dim = match v.get("head_dim") {
            None | Some(Value::Null) => hidden / u64::from(q_heads),
            Some(_) => int("head_dim")?,
        };
        let vocab = int("vocab_size")?;
        let max_context = int("max_position_embeddings")?;
        let tied_default = matches!(model_type.as_str(), "gemma" | "gemma2");
        let tied_embeddings = v.get("tie_word_embeddings").and_then(Value::as_bool).unwrap_or(tied_default);
        let experts = match model_type.as_str() {
            "mixtral" => Some((small("num_local_experts")?, small("num_experts_per_tok")?)),
            "qwen3_moe" => Some((small("num_experts")?, small("num_experts_per_tok")?)),
            _ => None,
        };
        let intermediate = match model_type.as_str() {
            "qwen3_moe" => int("moe_intermediate_size")?,
            _ => int("intermediate_size")?,
        };
        if kv_heads == 0 || !q_heads.is_multiple_of(kv_heads) {
            return Err(format!(
                "{where_}: num_attention_heads {q_heads} is not a multiple of num_key_value_heads {kv_heads}"
            ));
        }
        let window = v.get("sliding_window").and_then(Value::as_u64);
        let sliding_window = match model_type.as_str() {
            "gemma2" => window.map(|w| (w, 2)),
            "mistral" | "mixtral" => window.filter(|w| *w < max_context).map(|w| (w, 1)),
            // Qwen2 keeps the window off unless use_sliding_window says so.
            "qwen2" | "qwen3" if v.get("use_sliding_window").and_then(Value::as_bool) == Some(true) => {
                window.filter(|w| *w < max_context).map(|w| (w, 1))
            }
            _ => None,
        };
        let checkpoint = Checkpoint { precision: checkpoint_precision(&v, &where_)?, bytes: None };
        let mut a = Arch {
            ids: vec![id.to_string()],
            model_type: model_type.clone(),
            layers,
            hidden,
            intermediate,
            q_heads,
            kv_heads,
            head_dim,
            vocab,
            max_context,
            params: 0.0,
            active_params: 0.0,
            experts,
            tied_embeddings,
            sliding_window,
            checkpoint,
            source: where_,
        };
        (a.params, a.active_params) = a.count_params(&model_type);
        Ok(a)
    }

    /// Parameters from the shapes: embeddings, attention, (gated) MLP or experts, norms.
    fn count_params(&self, model_type: &str) -> (f64, f64) {
        let h = self.hidden as f64;
        let q = (u64::from(self.q_heads) * self.head_dim) as f64;
        let kv = (u64::from(self.kv_heads) * self.head_dim) as f64;
        let mut attn = h * q + 2.0 * h * kv + q * h;
        match model_type {
            "qwen2" => attn += q + 2.0 * kv,                             // q/k/v biases
            "qwen3" | "qwen3_moe" => attn += 2.0 * self.head_dim as f64, // q/k norms
            _ => {}
        }
        let mlp = 3.0 * h * self.intermediate as f64;
        let norms = if model_type == "gemma2" { 4.0 * h } else { 2.0 * h };
        let (ffn_total, ffn_active) = match self.experts {
            None => (mlp, mlp),
            Some((n, k)) => (f64::from(n) * mlp + h * f64::from(n), f64::from(k) * mlp + h * f64::from(n)),
        };
        let layers = f64::from(self.layers);
        let shared = self.embedding_params() + h + layers * (attn + norms);
        (shared + layers * ffn_total, shared + layers * ffn_active)
    }

    /// Takes the exact stored bytes from safetensors metadata; for a 16/32-bit checkpoint they
    /// also give the exact parameter count.
    pub fn with_checkpoint_bytes(mut self, bytes: u64) -> Arch {
        let b = bytes as f64;
        let per_param = match self.checkpoint.precision {
            Precision::Fp32 => Some(4.0),
            Precision::Bf16 | Precision::Fp16 => Some(2.0),
            _ => None,
        };
        if let Some(pp) = per_param {
            let scale = b / pp / self.params;
            // Only when the shapes agree (within 5%): a checkpoint with extra tensors (vision
            // towers, MTP heads) must not inflate the language model.
            if (0.95..1.05).contains(&scale) {
                self.active_params *= scale;
                self.params = b / pp;
            }
        }
        self.checkpoint.bytes = Some(if self.checkpoint.precision == Precision::Fp32 { b / 2.0 } else { b });
        if self.checkpoint.precision == Precision::Fp32 {
            // Served in 16 bits: the stored bytes halve.
            self.checkpoint.precision = Precision::Bf16;
        }
        self
    }

    /// Reads `--model-config DIR|FILE`: a `config.json` (or a folder holding one, and maybe
    /// `model.safetensors.index.json` for the exact bytes).
    pub fn from_path(id: &str, path: &Path) -> Result<Arch, String> {
        let (config, dir) =
            if path.is_dir() { (path.join("config.json"), Some(path)) } else { (path.to_path_buf(), path.parent()) };
        let text = read_bounded(&config)?;
        let mut a = Arch::from_config_json(id, &text)?;
        a.source = format!("{}", config.display());
        if let Some(index) = dir.map(|d| d.join("model.safetensors.index.json")).filter(|p| p.is_file()) {
            let bytes =
                safetensors_index_bytes(&read_bounded(&index)?).map_err(|e| format!("{}: {e}", index.display()))?;
            a = a.with_checkpoint_bytes(bytes);
        }
        Ok(a)
    }
}

fn read_bounded(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| format!("--model-config {}: {e}", path.display()))?;
    let mut buf = vec![];
    f.take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(|e| format!("--model-config {}: {e}", path.display()))?;
    if buf.len() as u64 > MAX_CONFIG_BYTES {
        return Err(format!(
            "--model-config {}: larger than {MAX_CONFIG_BYTES} bytes; pass the model's config.json",
            path.display()
        ));
    }
    Ok(buf)
}

/// `metadata.total_size` of a `model.safetensors.index.json`: the bytes of all tensors.
pub fn safetensors_index_bytes(text: &[u8]) -> Result<u64, String> {
    let v: Value = serde_json::from_slice(text).map_err(|e| format!("not JSON: {e}"))?;
    v.pointer("/metadata/total_size")
        .and_then(|t| t.as_u64().or_else(|| t.as_f64().filter(|f| *f > 0.0 && f.is_finite()).map(|f| f as u64)))
        .filter(|n| *n > 0)
        .ok_or_else(|| "metadata.total_size is missing or not a positive number".to_string())
}

/// Bytes of the tensors a safetensors header describes (the header is `{name: {dtype, shape,
/// data_offsets: [begin, end]}, "__metadata__": {...}}`).
pub fn safetensors_header_bytes(header: &[u8]) -> Result<u64, String> {
    let v: serde_json::Map<String, Value> =
        serde_json::from_slice(header).map_err(|e| format!("safetensors header is not JSON: {e}"))?;
    let mut end = 0u64;
    for (name, t) in v.iter().filter(|(k, _)| *k != "__metadata__") {
        let e = t
            .pointer("/data_offsets/1")
            .and_then(Value::as_u64)
            .ok_or_else(|| format!("safetensors header: tensor {name} has no data_offsets"))?;
        end = end.max(e);
    }
    Ok(end)
}

/// The stored precision from `quantization_config` or `torch_dtype`; unknown schemes are
/// errors, not guesses.
fn checkpoint_precision(v: &Value, where_: &str) -> Result<Precision, String> {
    if let Some(q) = v.get("quantization_config").filter(|q| !q.is_null()) {
        let method = q.get("quant_method").and_then(Value::as_str).unwrap_or("");
        let bits = q.get("bits").and_then(Value::as_u64);
        let p = match (method, bits) {
            ("fp8" | "fbgemm_fp8", _) => Some(Precision::Fp8),
            ("awq" | "gptq" | "awq_marlin" | "gptq_marlin", Some(4)) => Some(Precision::Int4),
            ("awq" | "gptq", Some(8)) => Some(Precision::Int8),
            ("mxfp4", _) => Some(Precision::Mxfp4),
            ("modelopt", _) => match q.get("quant_algo").and_then(Value::as_str) {
                Some("FP8") => Some(Precision::Fp8),
                Some("NVFP4") => Some(Precision::Nvfp4),
                _ => None,
            },
            ("compressed-tensors", _) => {
                let w = q.pointer("/config_groups/group_0/weights");
                let nb = w.and_then(|w| w.get("num_bits")).and_then(Value::as_u64);
                let ty = w.and_then(|w| w.get("type")).and_then(Value::as_str);
                match (nb, ty) {
                    (Some(8), Some("float")) => Some(Precision::Fp8),
                    (Some(8), Some("int")) => Some(Precision::Int8),
                    (Some(4), Some("int")) => Some(Precision::Int4),
                    (Some(4), Some("float")) => Some(Precision::Nvfp4),
                    _ => None,
                }
            }
            _ => None,
        };
        return p.ok_or_else(|| {
            format!("{where_}: quantization_config quant_method {method:?} is not one the estimator can size (fp8, awq, gptq, compressed-tensors, modelopt, mxfp4)")
        });
    }
    match v.get("torch_dtype").or_else(|| v.get("dtype")).and_then(Value::as_str) {
        None | Some("bfloat16") => Ok(Precision::Bf16),
        Some("float16") => Ok(Precision::Fp16),
        Some("float32") => Ok(Precision::Fp32),
        Some(other) => Err(format!("{where_}: torch_dtype {other:?} is not bfloat16, float16 or float32")),
    }
}

#[allow(clippy::too_many_arguments)]
fn builtin(
    ids: &[&str],
    model_type: &str,
    shape: [u64; 8],
    params: f64,
    active: f64,
    tied: bool,
    sliding_window: Option<(u64, u32)>,
    experts: Option<(u32, u32)>,
) -> Arch {
    let [layers, hidden, intermediate, q, kv, head_dim, vocab, ctx] = shape;
    Arch {
        ids: ids.iter().map(|s| s.to_string()).collect(),
        model_type: model_type.into(),
        layers: layers as u32,
        hidden,
        intermediate,
        q_heads: q as u32,
        kv_heads: kv as u32,
        head_dim,
        vocab,
        max_context: ctx,
        params,
        active_params: active,
        experts,
        tied_embeddings: tied,
        sliding_window,
        checkpoint: Checkpoint { precision: Precision::Bf16, bytes: None },
        source: "the built-in architecture table".into(),
    }
}

/// Built-in architectures: every model of hardware.md §6.3 (layers, hidden, intermediate,
/// q heads, kv heads, head dim, vocab, max context; published parameter totals).
pub fn builtin_table() -> &'static [Arch] {
    static TABLE: OnceLock<Vec<Arch>> = OnceLock::new();
    TABLE.get_or_init(|| {
        vec![
            builtin(
                &["meta-llama/Llama-3.1-8B", "meta-llama/Llama-3.1-8B-Instruct"],
                "llama",
                [32, 4096, 14336, 32, 8, 128, 128256, 131072],
                8.03e9,
                8.03e9,
                false,
                None,
                None,
            ),
            builtin(
                &["meta-llama/Llama-3.1-70B", "meta-llama/Llama-3.1-70B-Instruct"],
                "llama",
                [80, 8192, 28672, 64, 8, 128, 128256, 131072],
                70.55e9,
                70.55e9,
                false,
                None,
                None,
            ),
            // Beyond §6.3, the model that needs more than one 8x80 GB node in bf16 (its
            // config.json: 126 layers, 128 heads, 8 KV heads; 405.85e9 parameters).
            builtin(
                &["meta-llama/Llama-3.1-405B", "meta-llama/Llama-3.1-405B-Instruct"],
                "llama",
                [126, 16384, 53248, 128, 8, 128, 128256, 131072],
                405.85e9,
                405.85e9,
                false,
                None,
                None,
            ),
            builtin(
                &["mistralai/Mistral-7B-Instruct-v0.3", "mistralai/Mistral-7B-v0.3"],
                "mistral",
                [32, 4096, 14336, 32, 8, 128, 32768, 32768],
                7.25e9,
                7.25e9,
                false,
                None,
                None,
            ),
            builtin(
                &["Qwen/Qwen2.5-7B-Instruct", "Qwen/Qwen2.5-7B"],
                "qwen2",
                [28, 3584, 18944, 28, 4, 128, 152064, 32768],
                7.62e9,
                7.62e9,
                false,
                None,
                None,
            ),
            builtin(
                &["Qwen/Qwen2.5-72B-Instruct", "Qwen/Qwen2.5-72B"],
                "qwen2",
                [80, 8192, 29568, 64, 8, 128, 152064, 32768],
                72.71e9,
                72.71e9,
                false,
                None,
                None,
            ),
            builtin(
                &["mistralai/Mixtral-8x7B-Instruct-v0.1", "mistralai/Mixtral-8x7B-v0.1"],
                "mixtral",
                [32, 4096, 14336, 32, 8, 128, 32000, 32768],
                46.70e9,
                12.88e9,
                false,
                None,
                Some((8, 2)),
            ),
            builtin(
                &["meta-llama/Llama-3.2-1B-Instruct", "meta-llama/Llama-3.2-1B"],
                "llama",
                [16, 2048, 8192, 32, 8, 64, 128256, 131072],
                1.24e9,
                1.24e9,
                true,
                None,
                None,
            ),
            builtin(
                &["meta-llama/Llama-3.2-3B-Instruct", "meta-llama/Llama-3.2-3B"],
                "llama",
                [28, 3072, 8192, 24, 8, 128, 128256, 131072],
                3.21e9,
                3.21e9,
                true,
                None,
                None,
            ),
            builtin(
                &["google/gemma-2-9b-it", "google/gemma-2-9b"],
                "gemma2",
                [42, 3584, 14336, 16, 8, 256, 256000, 8192],
                9.24e9,
                9.24e9,
                true,
                Some((4096, 2)),
                None,
            ),
            builtin(
                &["google/gemma-2-27b-it", "google/gemma-2-27b"],
                "gemma2",
                [46, 4608, 36864, 32, 16, 128, 256000, 8192],
                27.2e9,
                27.2e9,
                true,
                Some((4096, 2)),
                None,
            ),
        ]
    })
}

/// The built-in architecture of a Hugging Face model id (case-insensitive), if any.
pub fn arch(model: &str) -> Option<&'static Arch> {
    builtin_table().iter().find(|a| a.ids.iter().any(|id| id.eq_ignore_ascii_case(model)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_counted_from_config_json_match_the_published_sizes() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models");
        // Published parameter counts (the hub's safetensors badge): 32.8B, 23.6B, 27.2B.
        for (id, published) in [
            ("Qwen/Qwen2.5-32B-Instruct", 32.76e9),
            ("mistralai/Mistral-Small-24B-Instruct-2501", 23.57e9),
            ("google/gemma-2-27b-it", 27.23e9),
        ] {
            let text = std::fs::read(dir.join(id).join("config.json")).unwrap();
            let a = Arch::from_config_json(id, &text).unwrap();
            assert!((a.params / published - 1.0).abs() < 0.005, "{id}: {:.3e}", a.params);
        }
        let gemma = Arch::from_config_json("g", &std::fs::read(dir.join("google/gemma-2-27b-it/config.json")).unwrap())
            .unwrap();
        assert_eq!((gemma.head_dim, gemma.sliding_window, gemma.tied_embeddings), (128, Some((4096, 2)), true));
        // The built-in table agrees with what config.json gives for the same model.
        let builtin = arch("google/gemma-2-27b-it").unwrap();
        assert!((gemma.params / builtin.params - 1.0).abs() < 0.01);
    }

    #[test]
    fn moe_and_quantized_checkpoints_are_read_and_unknown_ones_refused() {
        let mixtral = br#"{"model_type": "mixtral", "hidden_size": 4096, "intermediate_size": 14336,
            "num_attention_heads": 32, "num_key_value_heads": 8, "num_hidden_layers": 32, "vocab_size": 32000,
            "max_position_embeddings": 32768, "num_local_experts": 8, "num_experts_per_tok": 2}"#;
        let a = Arch::from_config_json("mistralai/Mixtral-8x7B-Instruct-v0.1", mixtral).unwrap();
        assert!((a.params / 46.70e9 - 1.0).abs() < 0.01 && (a.active_params / 12.88e9 - 1.0).abs() < 0.01, "{a:?}");
        assert!(a.weight_bytes_read(Precision::Bf16, 1) < 0.35 * a.weight_bytes(Precision::Bf16));
        let fp8 = br#"{"model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336,
            "num_attention_heads": 32, "num_key_value_heads": 8, "num_hidden_layers": 32, "vocab_size": 128256,
            "max_position_embeddings": 131072, "quantization_config": {"quant_method": "fp8"}}"#;
        let a = Arch::from_config_json("x/llama-fp8", fp8).unwrap();
        assert_eq!((a.native_precision(), a.quantized()), (Precision::Fp8, true));
        let bnb = br#"{"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
            "num_hidden_layers": 2, "vocab_size": 100, "max_position_embeddings": 512,
            "quantization_config": {"quant_method": "bitsandbytes"}}"#;
        let why = Arch::from_config_json("x/bnb", bnb).unwrap_err();
        assert!(why.contains("quant_method \"bitsandbytes\""), "{why}");
        let missing = br#"{"model_type": "llama", "hidden_size": 64}"#;
        assert!(Arch::from_config_json("x/m", missing).unwrap_err().contains("num_hidden_layers is missing"));
        let huge = br#"{"model_type": "llama", "hidden_size": 18446744073709551615, "intermediate_size": 1,
            "num_attention_heads": 1, "num_hidden_layers": 1, "vocab_size": 1, "max_position_embeddings": 1}"#;
        assert!(Arch::from_config_json("x/h", huge).unwrap_err().contains("hidden_size"));
        assert!(Arch::from_config_json("x/j", b"not json").unwrap_err().contains("not JSON"));
    }

    #[test]
    fn safetensors_metadata_gives_exact_bytes() {
        assert_eq!(safetensors_index_bytes(br#"{"metadata": {"total_size": 65527752704}}"#), Ok(65_527_752_704));
        assert!(safetensors_index_bytes(br#"{"weight_map": {}}"#).is_err());
        let header =
            br#"{"__metadata__": {"format": "pt"}, "a": {"dtype": "BF16", "shape": [2, 2], "data_offsets": [0, 8]},
            "b": {"dtype": "BF16", "shape": [4], "data_offsets": [8, 16]}}"#;
        assert_eq!(safetensors_header_bytes(header), Ok(16));
        assert!(safetensors_header_bytes(br#"{"a": {"dtype": "BF16"}}"#).is_err());
    }
}
