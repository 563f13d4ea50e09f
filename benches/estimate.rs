//! Prints the roofline estimate beside NVIDIA's aiconfigurator (PyPI) for the NVIDIA cases it
//! models, so the gap is visible. `make bench` installs aiconfigurator into a cached venv and
//! passes its path in `OIM_AICONFIGURATOR`; without it (or when it fails offline) the column
//! shows the published figure quoted in issue 17 where there is one, marked `(published)`.

use std::path::{Path, PathBuf};
use std::process::Command;

use oim::api::Precision;
use oim::profile::estimate::Arch;
use oim::profile::estimate::roofline::{DevicePerf, ttft_tpot_ms};

struct Case {
    model: &'static str,
    config: &'static str,
    precision: Precision,
    system: &'static str,
    slug: &'static str,
    tp: u32,
    batch: u32,
    isl: u64,
    osl: u64,
    /// (TTFT ms, TPOT ms) published for this case, if any.
    published: Option<(f64, f64)>,
}

const LLAMA70B: &str = r#"{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 8192,
 "intermediate_size": 28672, "num_attention_heads": 64, "num_hidden_layers": 80, "num_key_value_heads": 8,
 "vocab_size": 128256, "max_position_embeddings": 131072, "rope_theta": 500000.0, "rms_norm_eps": 1e-05,
 "hidden_act": "silu", "tie_word_embeddings": false, "torch_dtype": "bfloat16",
 "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
   "original_max_position_embeddings": 8192, "rope_type": "llama3"}}"#;
const LLAMA8B: &str = r#"{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
 "intermediate_size": 14336, "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
 "vocab_size": 128256, "max_position_embeddings": 131072, "rope_theta": 500000.0, "rms_norm_eps": 1e-05,
 "hidden_act": "silu", "tie_word_embeddings": false, "torch_dtype": "bfloat16",
 "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
   "original_max_position_embeddings": 8192, "rope_type": "llama3"}}"#;

fn cases() -> Vec<Case> {
    let c = |model, config, precision, system, slug, tp, batch, published| Case {
        model,
        config,
        precision,
        system,
        slug,
        tp,
        batch,
        isl: 1024,
        osl: 256,
        published,
    };
    vec![
        // Issue 17: aiconfigurator cli estimate, h100_sxm, vllm, TP4, batch 1 -> 131 ms / 14.9 ms.
        c(
            "meta-llama/Llama-3.1-70B-Instruct",
            LLAMA70B,
            Precision::Bf16,
            "h100_sxm",
            "h100-sxm-80gb",
            4,
            1,
            Some((131.0, 14.9)),
        ),
        c("meta-llama/Llama-3.1-70B-Instruct", LLAMA70B, Precision::Bf16, "h100_sxm", "h100-sxm-80gb", 8, 1, None),
        c("meta-llama/Llama-3.1-70B-Instruct", LLAMA70B, Precision::Bf16, "h200_sxm", "h200-sxm-141gb", 2, 1, None),
        c("meta-llama/Llama-3.1-8B-Instruct", LLAMA8B, Precision::Bf16, "h100_sxm", "h100-sxm-80gb", 1, 1, None),
        c("meta-llama/Llama-3.1-8B-Instruct", LLAMA8B, Precision::Bf16, "h100_sxm", "h100-sxm-80gb", 1, 16, None),
        c("meta-llama/Llama-3.1-8B-Instruct", LLAMA8B, Precision::Bf16, "a100_sxm", "a100-sxm-80gb", 1, 1, None),
    ]
}

/// A folder holding the case's config.json, as aiconfigurator's `--model-path` wants.
fn model_dir(case: &Case) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("oim-bench-estimate/{}", case.model));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.json"), case.config).unwrap();
    dir
}

/// TTFT and TPOT (ms) from aiconfigurator's output, or why there are none.
fn aiconfigurator(bin: &Path, case: &Case, dir: &Path) -> Result<(f64, f64), String> {
    let out = Command::new(bin)
        .args(["cli", "estimate", "--model-path"])
        .arg(dir)
        .args(["--system", case.system, "--backend", "vllm"])
        .args(["--tp-size", &case.tp.to_string(), "--batch-size", &case.batch.to_string()])
        .args(["--isl", &case.isl.to_string(), "--osl", &case.osl.to_string()])
        .output()
        .map_err(|e| format!("{}: {e}", bin.display()))?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    // The summary block prints `  TTFT:   131.378 ms` and `  TPOT:   14.876 ms`.
    let find = |key: &str| -> Option<f64> {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
    };
    match (find("TTFT:"), find("TPOT:")) {
        (Some(t), Some(p)) if out.status.success() => Ok((t, p)),
        _ => Err(text
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("no output")
            .trim()
            .chars()
            .take(100)
            .collect()),
    }
}

fn main() {
    let bin = std::env::var_os("OIM_AICONFIGURATOR").map(PathBuf::from);
    println!("roofline estimate vs NVIDIA aiconfigurator (isl 1024 / osl 256)");
    println!(
        "{:<36} {:<6} {:<9} {:>3} {:>5} | {:>9} {:>9} | {:>9} {:>9} {:<12} | {:>6} {:>6}",
        "model",
        "prec",
        "system",
        "tp",
        "batch",
        "ttft ms",
        "tpot ms",
        "ttft ms",
        "tpot ms",
        "(source)",
        "ttft x",
        "tpot x"
    );
    for case in cases() {
        let arch = Arch::from_config_json(case.model, case.config.as_bytes()).unwrap();
        let perf = DevicePerf::of_slug(case.slug).unwrap();
        let (ttft, tpot) = ttft_tpot_ms(&arch, case.precision, &perf, case.tp, case.batch, case.isl, case.osl);
        let dir = model_dir(&case);
        let theirs = match &bin {
            Some(b) => aiconfigurator(b, &case, &dir).map(|f| (f, "aiconfigurator")),
            None => Err("OIM_AICONFIGURATOR not set".to_string()),
        };
        let theirs = theirs.or_else(|why| case.published.map(|f| (f, "(published)")).ok_or(why));
        let cols = match theirs {
            Ok(((t, p), source)) => format!("{t:>9.1} {p:>9.2} {source:<12} | {:>6.2} {:>6.2}", ttft / t, tpot / p),
            Err(why) => format!("{:>9} {:>9} {:<12} | {why}", "-", "-", "(none)"),
        };
        println!(
            "{:<36} {:<6} {:<9} {:>3} {:>5} | {ttft:>9.1} {tpot:>9.2} | {cols}",
            case.model,
            format!("{:?}", case.precision).to_lowercase(),
            case.system,
            case.tp,
            case.batch
        );
    }
}
