#!/usr/bin/env python3
"""Writes the seed catalog: one profile per (model, hardware, KPI) that makes sense.

Sizing follows the estimator (src/profile/estimate.rs, hardware.md §6): the smallest tensor
parallelism that holds weights, the runtime reserve and KV for the profile's max-model-len at the
profile's gpu-memory-utilization; `cargo test` re-checks every profile with the Rust estimator.
Images come from the vendor engine table; performance figures only where a public source exists.
Re-run after editing the tables below, then review the diff.
"""
import os

HERE = os.path.dirname(os.path.abspath(__file__))
GIB = 1024 ** 3

# model id: (short, layers, kv_heads, head_dim, q_heads, vocab, hidden, params, tied, max_ctx)
MODELS = {
    "meta-llama/Llama-3.1-8B-Instruct": ("llama-3.1-8b", 32, 8, 128, 32, 128256, 4096, 8.03e9, False, 131072),
    "meta-llama/Llama-3.1-70B-Instruct": ("llama-3.1-70b", 80, 8, 128, 64, 128256, 8192, 70.55e9, False, 131072),
    "mistralai/Mistral-7B-Instruct-v0.3": ("mistral-7b", 32, 8, 128, 32, 32768, 4096, 7.25e9, False, 32768),
    "Qwen/Qwen2.5-7B-Instruct": ("qwen2.5-7b", 28, 4, 128, 28, 152064, 3584, 7.62e9, False, 32768),
    "Qwen/Qwen2.5-72B-Instruct": ("qwen2.5-72b", 80, 8, 128, 64, 152064, 8192, 72.71e9, False, 32768),
    "mistralai/Mixtral-8x7B-Instruct-v0.1": ("mixtral-8x7b", 32, 8, 128, 32, 32000, 4096, 46.70e9, False, 32768),
    "meta-llama/Llama-3.2-3B-Instruct": ("llama-3.2-3b", 28, 8, 128, 24, 128256, 3072, 3.21e9, True, 131072),
}

# Quantized checkpoints that exist on the Hugging Face hub.
WEIGHTS = {
    ("meta-llama/Llama-3.1-8B-Instruct", "fp8"): "neuralmagic/Meta-Llama-3.1-8B-Instruct-FP8",
    ("meta-llama/Llama-3.1-70B-Instruct", "fp8"): "neuralmagic/Meta-Llama-3.1-70B-Instruct-FP8",
    ("mistralai/Mistral-7B-Instruct-v0.3", "fp8"): "neuralmagic/Mistral-7B-Instruct-v0.3-FP8",
    ("meta-llama/Llama-3.1-8B-Instruct", "int4"): "hugging-quants/Meta-Llama-3.1-8B-Instruct-AWQ-INT4",
    ("meta-llama/Llama-3.1-70B-Instruct", "int4"): "hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4",
    ("Qwen/Qwen2.5-7B-Instruct", "int4"): "Qwen/Qwen2.5-7B-Instruct-AWQ",
    ("Qwen/Qwen2.5-72B-Instruct", "int4"): "Qwen/Qwen2.5-72B-Instruct-AWQ",
}

# vendor, product, memory MiB per device, devices per node, fp8 support, image, env, extra
HW = {
    "h100": ("nvidia", "h100-sxm-80gb", 81559, 8, True),
    "a100": ("nvidia", "a100-sxm-40gb", 40960, 8, False),
    "l4": ("nvidia", "l4", 23034, 8, True),
    "l40s": ("nvidia", "l40s", 46068, 8, True),
    "mi300x": ("amd", "mi300x", 196608, 8, True),
    "gaudi2": ("habana", "gaudi2", 98304, 8, False),
    "gaudi3": ("habana", "gaudi3", 131072, 8, False),
    "max1550": ("intel", "max-1550", 131072, 4, False),
}
IMAGES = {
    "nvidia": ("0.26.0", "vllm/vllm-openai:v0.26.0", {}),
    "amd": ("0.10.2", "rocm/vllm:rocm7.0.0_vllm_0.10.2_20251006", {"VLLM_ROCM_USE_AITER": "1"}),
    "intel": ("0.26.0", "vllm/vllm-openai-xpu:v0.26.0", {}),
    "habana": ("0.26.0", "vault.habana.ai/gaudi-docker/1.24.1/ubuntu24.04/habanalabs/vllm-v0.26.0-ptupstream-2.11.0:latest",
               {"OMPI_MCA_btl_vader_single_copy_mechanism": "none", "PT_HPU_ENABLE_LAZY_COLLECTIVES": "true", "VLLM_WORKER_MULTIPROC_METHOD": "spawn"}),
    "cpu": ("0.26.0", "vllm/vllm-openai-cpu:v0.26.0-x86_64", {}),
}

# Public figures (hardware.md §7), keyed by (model, hw, precision, kpi).
FIGURES = {
    ("meta-llama/Llama-3.1-8B-Instruct", "h100", "bf16", "latency"):
        {"ttftMsP50": 14, "itlMsP50": 6.5, "throughputTokensPerSec": 122, "concurrency": 1,
         "source": "yobitelcomm InferenceBench, vLLM 0.21.0, 1x H100-80GB-HBM3, chatbot-short, concurrency 1 (third-party)"},
    ("meta-llama/Llama-3.1-8B-Instruct", "h100", "fp8", "throughput"):
        {"itlMsP50": 19.8, "throughputTokensPerSec": 3400, "concurrency": 320,
         "source": "Lambda vllm-benchmark, vLLM 0.5.4, 1x H100-80GB SXM, Llama-3.1-8B-FP8, 320 prompts"},
}

def weight_bytes(m, precision):
    _, layers, kv, hd, q, vocab, hidden, params, tied, _ = MODELS[m]
    e = vocab * hidden * (1 if tied else 2)
    body = params - e
    return {"bf16": params * 2, "fp8": body + e * 2, "int4": body * (4 + 20 / 128) / 8 + e * 2}[precision]

def kv_bytes(m, tokens):
    _, layers, kv, hd, *_ = MODELS[m]
    return 2 * layers * kv * hd * 2 * tokens

def fits(m, precision, mem_mib, tp, tokens, util=0.90):
    kv_heads = MODELS[m][2]
    budget = mem_mib * 1024 * 1024 * util - weight_bytes(m, precision) / tp - (4 if tp > 1 else 3) * GIB
    return budget > 0 and kv_bytes(m, tokens) / min(tp, kv_heads) <= budget

def size(m, precision, mem_mib, per_node, want_ctx):
    q = MODELS[m][4]
    max_ctx = MODELS[m][9]
    for tp in (1, 2, 4, 8):
        if tp > per_node or q % tp:
            continue
        if fits(m, precision, mem_mib, tp, min(max_ctx, 8192)):
            ctx = min(max_ctx, want_ctx)
            while ctx > 8192 and not fits(m, precision, mem_mib, tp, ctx):
                ctx //= 2
            return tp, ctx
    return None

def yaml_map(d):
    return "{" + ", ".join(f"{k}: {v}" for k, v in d.items()) + "}"

def write(m, hw, kpi, precision):
    short = MODELS[m][0]
    if hw == "cpu":
        vendor, product, mem, per_node = "cpu", "any", 256 * 1024, 2
    else:
        vendor, product, mem, per_node, _ = HW[hw]
    want = {"latency": 16384, "throughput": 32768, "quantization": 32768}[kpi]
    sized = size(m, precision, mem, per_node, want)
    if sized is None:
        return False
    tp, ctx = sized
    name = f"vllm-{vendor}-{product}-x{tp}-{kpi}-{precision}"
    version, image, env = IMAGES[vendor]
    args = {"max-model-len": ctx, "gpu-memory-utilization": 0.9,
            "max-num-seqs": {"latency": 32, "throughput": 256, "quantization": 128}[kpi]}
    if tp > 1:
        args["tensor-parallel-size"] = tp
    if vendor == "habana":
        args["block-size"] = 128
    mem_gib = max(16, 4 + 3 * tp)
    shm = "8Gi" if tp > 1 else "2Gi"
    eph = int(weight_bytes(m, precision) * 1.2 / GIB) + 11
    resources = {"cpu": f'"{4 + 2 * tp}"', "memory": f"{mem_gib}Gi", "sharedMemory": shm, "ephemeralStorage": f"{eph}Gi"}
    lines = [
        "schema: oim.opea.dev/profile/v1",
        f"name: {name}",
        f"model: {m}",
    ]
    w = WEIGHTS.get((m, precision))
    if w:
        lines.append(f"weights: {w}")
    lines += [
        f"kpi: {kpi}",
        f"precision: {precision}",
        f'engine: {{name: vllm, version: "{version}", image: "{image}"}}',
    ]
    acc = {"vendor": vendor, "product": product, "count": tp}
    if vendor == "cpu":
        acc["minMemoryMiB"] = 65536
    lines.append(f"accelerator: {yaml_map(acc)}")
    lines.append(f"parallelism: {{tensor: {tp}, pipeline: 1}}")
    lines.append(f"args: {yaml_map(args)}")
    cpu_env = {"VLLM_CPU_KVCACHE_SPACE": '"16"'} if vendor == "cpu" else {}
    env_all = {**{k: f'"{v}"' for k, v in env.items()}, **cpu_env}
    lines.append(f"env: {yaml_map(env_all)}")
    extra = {"hugepages-2Mi": "9800Mi"} if vendor == "habana" else {}
    lines.append(f"resources: {{{', '.join(f'{k}: {v}' for k, v in resources.items())}, extra: {yaml_map(extra)}}}")
    fig = FIGURES.get((m, hw, precision, kpi))
    if fig:
        parts = []
        for k, v in fig.items():
            parts.append(f'{k}: "{v}"' if k == "source" else f"{k}: {v}")
        lines.append("performance: {" + ", ".join(parts) + "}")
    d = os.path.join(HERE, short)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"{name}.yaml"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return True

PLAN = [
    # model, hardware, kpi, precision
    *[("meta-llama/Llama-3.1-8B-Instruct", hw, "latency", "bf16") for hw in ("h100", "a100", "l40s", "mi300x", "gaudi2", "gaudi3", "max1550")],
    *[("meta-llama/Llama-3.1-8B-Instruct", hw, "throughput", "fp8") for hw in ("h100", "l4", "l40s", "mi300x")],
    *[("meta-llama/Llama-3.1-8B-Instruct", hw, "throughput", "bf16") for hw in ("a100", "gaudi2", "gaudi3", "max1550")],
    ("meta-llama/Llama-3.1-8B-Instruct", "l4", "quantization", "int4"),
    ("meta-llama/Llama-3.1-8B-Instruct", "a100", "quantization", "int4"),
    ("meta-llama/Llama-3.1-8B-Instruct", "cpu", "throughput", "bf16"),
    *[("meta-llama/Llama-3.1-70B-Instruct", hw, "latency", "bf16") for hw in ("h100", "mi300x", "gaudi2", "gaudi3")],
    *[("meta-llama/Llama-3.1-70B-Instruct", hw, "throughput", "fp8") for hw in ("h100", "l40s", "mi300x")],
    ("meta-llama/Llama-3.1-70B-Instruct", "a100", "throughput", "bf16"),
    ("meta-llama/Llama-3.1-70B-Instruct", "a100", "quantization", "int4"),
    *[("mistralai/Mistral-7B-Instruct-v0.3", hw, "throughput", "bf16") for hw in ("h100", "a100", "l40s", "mi300x", "gaudi2", "max1550")],
    ("mistralai/Mistral-7B-Instruct-v0.3", "l4", "throughput", "fp8"),
    *[("Qwen/Qwen2.5-7B-Instruct", hw, "throughput", "bf16") for hw in ("h100", "a100", "l4", "mi300x", "gaudi2")],
    ("Qwen/Qwen2.5-7B-Instruct", "l4", "quantization", "int4"),
    *[("Qwen/Qwen2.5-72B-Instruct", hw, "throughput", "bf16") for hw in ("h100", "mi300x", "gaudi3")],
    ("Qwen/Qwen2.5-72B-Instruct", "l40s", "quantization", "int4"),
    *[("mistralai/Mixtral-8x7B-Instruct-v0.1", hw, "throughput", "bf16") for hw in ("h100", "mi300x", "gaudi2")],
    ("meta-llama/Llama-3.2-3B-Instruct", "cpu", "throughput", "bf16"),
    ("meta-llama/Llama-3.2-3B-Instruct", "l4", "latency", "bf16"),
]

if __name__ == "__main__":
    written = 0
    for entry in PLAN:
        if write(*entry):
            written += 1
        else:
            print("does not fit, skipped:", entry)
    print(f"{written} profiles")
