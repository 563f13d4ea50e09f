use proptest::prelude::*;

use super::*;

pub(crate) const H100_LATENCY: &str = r#"
schema: oim.opea.dev/profile/v1
name: vllm-nvidia-h100-sxm-80gb-x1-latency-bf16
model: meta-llama/Llama-3.1-8B-Instruct
weights: meta-llama/Llama-3.1-8B-Instruct
weightsRevision: 0e9e39f249a16976918f6564b8830bc894c89659
kpi: latency
precision: bf16
engine: {name: vllm, version: "0.26.0", image: "vllm/vllm-openai:v0.26.0"}
accelerator: {vendor: nvidia, product: h100-sxm-80gb, count: 1, minMemoryMiB: 81000}
parallelism: {tensor: 1, pipeline: 1}
args: {max-model-len: 16384, gpu-memory-utilization: 0.9, max-num-seqs: 64, enable-prefix-caching: true}
env: {}
resources: {cpu: "8", memory: 64Gi, sharedMemory: 8Gi, ephemeralStorage: 40Gi, extra: {}}
performance: {ttftMsP50: 38, itlMsP50: 7.1, throughputTokensPerSec: 2400, concurrency: 16, source: "vLLM benchmark_serving"}
"#;

fn with(replace: &str, by: &str) -> String {
    assert!(H100_LATENCY.contains(replace), "fixture lacks {replace}");
    H100_LATENCY.replacen(replace, by, 1)
}

#[track_caller]
fn rejected(text: &str, field: &str, fix_part: &str) {
    let e = Profile::parse(text.as_bytes(), "profiles/x.yaml").expect_err("profile should be refused");
    assert_eq!(e.file, "profiles/x.yaml");
    assert_eq!(e.field, field, "{e}");
    assert!(e.fix.contains(fix_part) || e.problem.contains(fix_part), "{e}");
}

#[test]
fn the_design_example_parses() {
    let p = Profile::parse(H100_LATENCY.as_bytes(), "x.yaml").unwrap();
    assert_eq!((p.kpi, p.precision, p.accelerator.count), (Kpi::Latency, Precision::Bf16, 1));
    assert_eq!(p.performance.unwrap().ttft_ms_p50, Some(38.0));
}

#[test]
fn args_render_to_engine_flags_as_design_says() {
    let mut args = BTreeMap::new();
    args.insert("max-model-len".to_string(), serde_json::json!(16384));
    args.insert("gpu-memory-utilization".to_string(), serde_json::json!(0.9));
    args.insert("enable-prefix-caching".to_string(), serde_json::json!(true));
    args.insert("enable-chunked-prefill".to_string(), serde_json::json!(false));
    args.insert("dtype".to_string(), serde_json::json!("bfloat16"));
    args.insert("cuda-graph-sizes".to_string(), serde_json::json!([1, 2, 4]));
    args.insert("compilation-config".to_string(), serde_json::json!({"level": 3}));
    assert_eq!(
        render_args(&args),
        [
            "--compilation-config",
            r#"{"level":3}"#,
            "--cuda-graph-sizes",
            "1",
            "2",
            "4",
            "--dtype",
            "bfloat16",
            "--no-enable-chunked-prefill",
            "--enable-prefix-caching",
            "--gpu-memory-utilization",
            "0.9",
            "--max-model-len",
            "16384",
        ]
    );
}

#[test]
fn unknown_kpi_and_precision_name_the_field_and_the_choices() {
    rejected(&with("kpi: latency", "kpi: fastest"), "kpi", "latency, throughput or quantization");
    rejected(&with("precision: bf16", "precision: fp6"), "precision", "fp32, bf16");
}

#[test]
fn parallelism_must_multiply_to_the_device_count() {
    rejected(
        &with("parallelism: {tensor: 1, pipeline: 1}", "parallelism: {tensor: 2, pipeline: 1}"),
        "parallelism",
        "tensor x pipeline",
    );
}

#[test]
fn images_must_be_pinned() {
    rejected(&with("image: \"vllm/vllm-openai:v0.26.0\"", "image: \"vllm/vllm-openai\""), "engine.image", "pin it");
    rejected(
        &with("image: \"vllm/vllm-openai:v0.26.0\"", "image: \"vllm/vllm-openai:latest\""),
        "engine.image",
        "pin it",
    );
    rejected(&with("image: \"vllm/vllm-openai:v0.26.0\"", "image: \"localhost:5000/vllm\""), "engine.image", "pin it");
    let digest = format!("image: \"vllm/vllm-openai@sha256:{}\"", "a".repeat(64));
    Profile::parse(with("image: \"vllm/vllm-openai:v0.26.0\"", &digest).as_bytes(), "x").unwrap();
}

#[test]
fn any_product_needs_min_memory_and_products_come_from_the_device_table() {
    rejected(
        &with("product: h100-sxm-80gb, count: 1, minMemoryMiB: 81000", "product: any, count: 1"),
        "accelerator.minMemoryMiB",
        "minMemoryMiB",
    );
    Profile::parse(with("product: h100-sxm-80gb", "product: any").as_bytes(), "x").unwrap();
    rejected(&with("product: h100-sxm-80gb", "product: h100"), "accelerator.product", "devices.yaml");
    rejected(&with("vendor: nvidia", "vendor: amd"), "accelerator.vendor", "set vendor: nvidia");
}

#[test]
fn other_mistakes_name_their_field() {
    rejected(&with("name: vllm-nvidia-h100-sxm-80gb-x1-latency-bf16", "name: Big_Name"), "name", "[a-z0-9]");
    rejected(&with("schema: oim.opea.dev/profile/v1", "schema: oim.opea.dev/profile/v9"), "schema", "set schema");
    rejected(&with("memory: 64Gi", "memory: lots"), "resources.memory", "quantity");
    rejected(&with("max-num-seqs: 64", "port: 9000"), "args.port", "remove it");
    rejected(&with("env: {}", "env: {}\ncolour: blue"), "colour", "unknown field");
    rejected(&with("ttftMsP50: 38", "ttftMsP50: -1"), "performance.ttftMsP50", "non-negative");
    rejected("schema: [", ".", "YAML");
}

#[test]
fn oversized_blobs_are_refused_before_parsing() {
    let big = format!("{H100_LATENCY}\n#{}\n", "x".repeat(MAX_PROFILE_BYTES));
    rejected(&big, ".", "limit");
}

#[test]
fn directory_scanning_recognises_profiles_by_schema() {
    assert!(looks_like_profile(H100_LATENCY.as_bytes()));
    assert!(!looks_like_profile(b"apiVersion: v1\nkind: ConfigMap\n"));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = Profile::parse(&bytes, "fuzz");
    }

    #[test]
    fn mutated_profiles_never_panic(pos in 0usize..H100_LATENCY.len(), len in 0usize..40, junk in "[ -~\n]{0,40}") {
        let mut text = H100_LATENCY.to_string();
        let end = (pos + len).min(text.len());
        if text.is_char_boundary(pos) && text.is_char_boundary(end) {
            text.replace_range(pos..end, &junk);
        }
        let _ = Profile::parse(text.as_bytes(), "fuzz");
    }
}

#[test]
fn a_profile_spanning_nodes_counts_devices_per_node_and_keeps_tensor_parallelism_inside_one() {
    let text =
        std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/profiles-405b/h100-x8-n2.yaml")).unwrap();
    let p = Profile::parse(&text, "h100-x8-n2.yaml").unwrap();
    assert_eq!((p.accelerator.count, p.nodes, p.devices_per_pod(), p.multi_node()), (8, 2, 8, true));
    // Written back, `nodes` survives; a single-node profile does not grow the field.
    assert!(serde_saphyr::to_string(&p).unwrap().contains("nodes: 2"));
    let single = Profile::parse(H100_LATENCY.as_bytes(), "x.yaml").unwrap();
    assert_eq!((single.nodes, single.devices_per_pod()), (1, 1));
    assert!(!serde_saphyr::to_string(&single).unwrap().contains("nodes:"));

    let text = String::from_utf8(text).unwrap();
    let bad = text.replace("parallelism: {tensor: 8, pipeline: 2}", "parallelism: {tensor: 8, pipeline: 1}");
    rejected(&bad, "parallelism", "tensor = count, pipeline = nodes");
    let across = text.replace("parallelism: {tensor: 8, pipeline: 2}", "parallelism: {tensor: 16, pipeline: 1}");
    rejected(&across, "parallelism.tensor", "keep tensor parallelism inside a node");
    rejected(&text.replace("nodes: 2", "nodes: 0"), "nodes", "use 1 to 64");
    let cpu = with("parallelism: {tensor: 1, pipeline: 1}", "nodes: 2\nparallelism: {tensor: 1, pipeline: 2}").replace(
        "{vendor: nvidia, product: h100-sxm-80gb, count: 1, minMemoryMiB: 81000}",
        "{vendor: cpu, product: any, count: 1}",
    );
    rejected(&cpu, "nodes", "CPU profiles run on one node");
}
