//! Generated profiles for models the built-in table does not know, from their own
//! `config.json` and safetensors metadata served by a local fake of the Hugging Face hub:
//! `oim profiles select --from-hub` sizes Qwen2.5-32B, Mistral-Small-24B and Gemma-2-27B
//! soundly, reads a single-file checkpoint's header by range requests (never the weights),
//! sends the token, and refuses an architecture it cannot size with the reason.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};

use crate::fake_hub::{self, Body, full};

const TOKEN: &str = "hf_estimate_secret_42";

/// A single-file checkpoint of a tiny Llama: an 8-byte header length, the JSON header, then
/// the tensor bytes (zeros; the estimator must never ask for them).
fn tiny_safetensors() -> Vec<u8> {
    let header = serde_json::json!({
        "__metadata__": {"format": "pt"},
        "model.embed_tokens.weight": {"dtype": "BF16", "shape": [32000, 256], "data_offsets": [0, 16_384_000]},
        "lm_head.weight": {"dtype": "BF16", "shape": [32000, 256], "data_offsets": [16_384_000, 32_768_000]}
    })
    .to_string();
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(header.as_bytes());
    b.resize(8 + header.len() + 32_768_000, 0);
    b
}

#[derive(Default)]
struct Seen {
    tokens: Vec<String>,
    /// Bytes of model.safetensors served.
    weight_bytes_served: usize,
}

fn serve(req: &Request<Incoming>, seen: &Mutex<Seen>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let mut seen = seen.lock().unwrap();
    if let Some(auth) = req.headers().get("authorization").and_then(|v| v.to_str().ok()) {
        seen.tokens.push(auth.to_string());
    }
    let not_found = || {
        let mut r = Response::new(full("{\"error\": \"Entry not found\"}"));
        *r.status_mut() = StatusCode::NOT_FOUND;
        r
    };
    let Some((repo, file)) = path.trim_start_matches('/').split_once("/resolve/main/") else { return not_found() };
    let body = match (repo, file) {
        ("acme/tiny-llama", "config.json") => serde_json::json!({
            "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 256,
            "intermediate_size": 1024, "num_attention_heads": 8, "num_key_value_heads": 2,
            "num_hidden_layers": 4, "vocab_size": 32000, "max_position_embeddings": 4096,
            "torch_dtype": "bfloat16"})
        .to_string()
        .into_bytes(),
        ("acme/tiny-llama", "model.safetensors") => tiny_safetensors(),
        ("acme/mamba-ish", "config.json") => {
            br#"{"architectures": ["MambaForCausalLM"], "model_type": "mamba", "hidden_size": 768}"#.to_vec()
        }
        (repo, file) => match fake_hub::fixture(repo, file) {
            Some(b) => b,
            None => return not_found(),
        },
    };
    let range = req.headers().get("range").and_then(|v| v.to_str().ok()).and_then(|r| r.strip_prefix("bytes="));
    let body = match range.and_then(|r| r.split_once('-')) {
        Some((from, to)) => {
            let from: usize = from.parse().unwrap();
            let to: usize = to.parse::<usize>().unwrap().min(body.len() - 1);
            body[from..=to].to_vec()
        }
        None => body,
    };
    if file == "model.safetensors" {
        seen.weight_bytes_served += body.len();
    }
    let partial = range.is_some();
    let mut r = Response::new(full(body));
    if partial {
        *r.status_mut() = StatusCode::PARTIAL_CONTENT;
    }
    r
}

fn start(seen: Arc<Mutex<Seen>>) -> String {
    fake_hub::start(move |req| serve(req, &seen))
}

/// A cluster of one 8x H100 node and one dual-socket CPU node, and an empty catalog.
fn cluster(name: &str) -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("oim-estimate-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("catalog")).unwrap();
    let inventory = dir.join("nodes.yaml");
    std::fs::write(
        &inventory,
        r#"- schema: oim.opea.dev/inventory/v1
  node: h100-node
  accelerators:
    - {vendor: nvidia, product: h100-sxm-80gb, productName: NVIDIA H100 SXM5 80GB, pciVendorId: "10de",
       pciDeviceIds: ["2330"], count: 8, memoryMiB: 81559, resourceName: nvidia.com/gpu, numaNodes: [0, 1]}
  cpu: {vendor: GenuineIntel, model: x, sockets: 2, cores: 112, threads: 224, flags: [avx512f, amx_tile], numaNodeCount: 2}
  memoryMiB: 2063000
- schema: oim.opea.dev/inventory/v1
  node: cpu-node
  cpu: {vendor: GenuineIntel, model: x, sockets: 2, cores: 112, threads: 224, flags: [avx512f, amx_tile], numaNodeCount: 2}
  memoryMiB: 515000
"#,
    )
    .unwrap();
    (inventory, dir.join("catalog"))
}

fn select(endpoint: &str, model: &str, kpi: &str, inventory: &Path, catalog: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_oim"))
        .args(["profiles", "select", "--model", model, "--kpi", kpi, "--from-hub", "--inventory"])
        .arg(inventory)
        .arg("--catalog")
        .arg(catalog)
        .env("HF_ENDPOINT", endpoint)
        .env("HF_TOKEN", TOKEN)
        .output()
        .unwrap()
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
}

fn gib(q: &serde_json::Value) -> u64 {
    q.as_str().unwrap().trim_end_matches("Gi").parse().unwrap()
}

#[test]
fn models_outside_the_built_in_table_get_sound_profiles_from_their_config_json() {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let endpoint = start(seen.clone());
    let (inventory, catalog) = cluster("real");
    // (model, weights GiB from the index's total_size, max-model-len that fits one H100)
    let cases = [
        ("Qwen/Qwen2.5-32B-Instruct", 61.0, 16384),
        ("mistralai/Mistral-Small-24B-Instruct-2501", 43.9, 32768),
        ("google/gemma-2-27b-it", 50.7, 8192),
    ];
    for (model, weights_gib, len) in cases {
        for kpi in ["latency", "throughput"] {
            let out = select(&endpoint, model, kpi, &inventory, &catalog);
            assert_eq!(out.status.code(), Some(0), "{model}: {}", String::from_utf8_lossy(&out.stderr));
            let v = json(&out);
            let s = &v["selected"];
            assert_eq!(s["generated"], true);
            assert_eq!(s["accelerator"]["product"], "h100-sxm-80gb", "{model} {kpi}: {}", s["reason"]);
            assert_eq!(s["precision"], "bf16");
            let tp = s["parallelism"]["tensor"].as_u64().unwrap();
            if kpi == "latency" {
                // The smallest TP that holds weights, reserve and 8k tokens of KV: one H100 each.
                assert_eq!((tp, s["args"]["max-model-len"].as_u64()), (1, Some(len)), "{model}");
            } else {
                // Throughput weighs every TP the node allows by estimated tokens/s per device.
                let others = v["rejected"].as_array().unwrap().iter().filter(|r| {
                    r["name"].as_str().unwrap().contains("h100")
                        && r["reason"].as_str().unwrap().contains("tok/s per device")
                });
                assert!(others.count() >= 2, "{model}: {}", v["rejected"]);
                assert!(s["args"]["max-model-len"].as_u64().unwrap() >= len, "{model}");
            }
            assert_eq!(s["performance"]["source"], "estimated");
            assert!(
                s["performance"]["throughputTokensPerSec"].as_f64().unwrap() > 10.0,
                "{model}: {}",
                s["performance"]
            );
            let reason = s["reason"].as_str().unwrap();
            assert!(reason.contains(&format!("config.json of {model}")), "{reason}");
            assert!(reason.contains(&format!("{weights_gib:.1} GiB of bf16 weights")), "{model}: {reason}");
            // Host memory: the process, the worker's runtime and one staged 5 GB shard.
            assert!(gib(&s["resources"]["memory"]) >= 16, "{}", s["resources"]);
            // The CPU node was considered and lost on the estimate.
            let cpu = v["rejected"].as_array().unwrap().iter().find(|r| r["name"].as_str().unwrap().contains("-cpu-"));
            assert!(cpu.is_some(), "{model}: {}", v["rejected"]);
        }
    }
    assert!(seen.lock().unwrap().tokens.iter().all(|t| t == &format!("Bearer {TOKEN}")));
    assert_eq!(seen.lock().unwrap().weight_bytes_served, 0, "no weights were downloaded");
}

#[test]
fn a_single_file_checkpoint_is_measured_from_its_header_and_an_unknown_architecture_says_why() {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let endpoint = start(seen.clone());
    let (inventory, catalog) = cluster("tiny");
    let out = select(&endpoint, "acme/tiny-llama", "latency", &inventory, &catalog);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let v = json(&out);
    assert!(v["selected"]["reason"].as_str().unwrap().contains("safetensors metadata"), "{}", v["selected"]["reason"]);
    let served = seen.lock().unwrap().weight_bytes_served;
    assert!(served < 4096, "only the 8-byte length and the header were read, not 32 MB: {served}");

    let out = select(&endpoint, "acme/mamba-ish", "latency", &inventory, &catalog);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("model_type \"mamba\"") && err.contains("publish a profile"), "{err}");
}

/// What the operator's fake hub does and saw.
#[derive(Default)]
struct OperatorHub {
    /// Answer 500 to everything.
    down: bool,
    /// Request paths.
    paths: Vec<String>,
    /// Authorization headers.
    tokens: Vec<String>,
}

fn serve_operator(req: &Request<Incoming>, state: &Mutex<OperatorHub>) -> Response<fake_hub::Body> {
    let mut hub = state.lock().unwrap();
    hub.paths.push(req.uri().path().to_string());
    if let Some(auth) = req.headers().get("authorization").and_then(|v| v.to_str().ok()) {
        hub.tokens.push(auth.to_string());
    }
    if hub.down {
        return fake_hub::status(StatusCode::INTERNAL_SERVER_ERROR);
    }
    let path = req.uri().path().trim_start_matches('/');
    match path.split_once("/resolve/main/").and_then(|(repo, file)| fake_hub::fixture(repo, file)) {
        Some(b) => Response::new(fake_hub::full(b)),
        None => fake_hub::status(StatusCode::NOT_FOUND),
    }
}

/// The operator on the local control plane generates a profile for a model the built-in table
/// does not know from its config.json and safetensors index on the hub (with the service's token),
/// says which model, hub and cause while the hub fails, recovers when it answers again, sizes an
/// OIMCache's PVC from the exact bytes, and never asks the hub about a model the table knows.
#[tokio::test]
async fn the_operator_generates_from_the_hub_reports_its_outage_and_recovers() {
    use k8s_openapi::api::core::v1::Secret;
    use kube::Api;
    use kube::api::PostParams;
    use oim::api::OIMService;

    use crate::cluster::{self, KwokNode, TestNs};
    use crate::operator::{Operator, condition, ready, service};

    let state = Arc::new(Mutex::new(OperatorHub { down: true, ..Default::default() }));
    let hub = state.clone();
    let endpoint = fake_hub::start(move |req| serve_operator(req, &hub));
    let client = cluster::client().await;
    cluster::install_oim_crds();
    let ns = TestNs::new(&client, "op-hub", &[]).await;
    let node = KwokNode::create(&client, "op-hub", &cluster::inventory_of("h100-sxm-80gb", 8), None).await;
    let catalog = concat!(env!("CARGO_MANIFEST_DIR"), "/profiles");
    let _operator =
        Operator::with_args(&["--catalog", catalog, "--watch-namespaces", &ns.name, "--hf-endpoint", &endpoint]);
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "hf"}, "stringData": {"HF_TOKEN": TOKEN}
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), &ns.name).create(&PostParams::default(), &secret).await.unwrap();
    let svcs: Api<OIMService> = Api::namespaced(client.clone(), &ns.name);
    let mut qwen = service("qwen", "Qwen/Qwen2.5-32B-Instruct", "latency", "op-hub");
    qwen.spec.auth_secret = Some("hf".into());
    svcs.create(&PostParams::default(), &qwen).await.unwrap();
    svcs.create(&PostParams::default(), &service("llama", "meta-llama/Llama-3.1-8B-Instruct", "latency", "op-hub"))
        .await
        .unwrap();

    // The hub is down: the condition names the model, the hub and the cause; nothing is guessed.
    let blocked = cluster::wait_for(&svcs, "qwen", Duration::from_secs(60), |s| {
        condition(s, "ProfileSelected").is_some_and(|c| c.reason == "ModelConfigUnavailable")
    })
    .await;
    let c = condition(&blocked, "ProfileSelected").unwrap();
    for part in ["Qwen/Qwen2.5-32B-Instruct", endpoint.as_str(), "500"] {
        assert!(c.message.contains(part), "{part} is missing from: {}", c.message);
    }
    assert!(blocked.status.as_ref().unwrap().profile.is_none(), "no profile while the facts are unknown");
    let ns_name = ns.name.clone();
    let events = cluster::wait_until("a ModelConfigUnavailable event", Duration::from_secs(30), || {
        let ns_name = ns_name.clone();
        async move {
            let selector = ["--field-selector", "reason=ModelConfigUnavailable", "-o", "jsonpath={.items[*].message}"];
            let out = cluster::kubectl(&[&["get", "events", "-n", ns_name.as_str()][..], &selector[..]].concat());
            (!out.trim().is_empty()).then_some(out)
        }
    })
    .await;
    assert!(events.contains("Qwen/Qwen2.5-32B-Instruct") && events.contains(&endpoint), "{events}");

    // The hub answers again: the next retry generates an H100 profile from the real numbers.
    state.lock().unwrap().down = false;
    let served = cluster::wait_for(&svcs, "qwen", Duration::from_secs(120), ready).await;
    let st = served.status.clone().unwrap();
    let profile = st.profile.unwrap();
    assert!(profile.generated && profile.name.starts_with("generated-vllm-nvidia-h100-sxm-80gb-x"), "{}", profile.name);
    let reason = profile.reason.unwrap();
    // 65,527,752,704 bytes in the safetensors index: 61.0 GiB; one 80 GB H100 holds them with
    // the runtime reserve and KV cache for the shortest context at latency.
    assert!(reason.contains("config.json of Qwen/Qwen2.5-32B-Instruct"), "{reason}");
    assert!(reason.contains("61.0 GiB of bf16 weights"), "{reason}");
    assert_eq!(profile.tensor_parallelism, Some(1), "{reason}");
    assert_eq!(st.accelerator.as_deref(), Some("1x h100-sxm-80gb"));
    let memory = st.resources.unwrap().requests.unwrap()["memory"].0.clone();
    let gib: u64 = memory.trim_end_matches("Gi").parse().unwrap();
    assert!(gib >= 16, "host memory holds what loading stages: {memory}");
    cluster::wait_for(&svcs, "llama", Duration::from_secs(60), ready).await;

    // An OIMCache of the same model sizes its PVC from the exact safetensors bytes: 61.0 GiB
    // x 1.2 = 73.2, rounded up to 74, plus 5 GiB of headroom.
    let cache: oim::api::OIMCache = serde_saphyr::from_str(&format!(
        "apiVersion: oim.opea.dev/v1alpha1\nkind: OIMCache\nmetadata: {{name: qwen}}\nspec:\n  source: {{hf: {{modelName: Qwen/Qwen2.5-32B-Instruct, endpoint: '{endpoint}', authSecret: hf}}}}\n  profile: {{kpi: latency}}\n  nodeSelector: {{{}: op-hub}}\n",
        cluster::SCENARIO_LABEL
    ))
    .unwrap();
    Api::<oim::api::OIMCache>::namespaced(client.clone(), &ns.name)
        .create(&PostParams::default(), &cache)
        .await
        .unwrap();
    let pvcs: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns.name);
    let pvc = cluster::wait_until("the cache's PVC", Duration::from_secs(60), || async {
        pvcs.get_opt("qwen-weights").await.ok().flatten()
    })
    .await;
    let size = pvc.spec.unwrap().resources.unwrap().requests.unwrap()["storage"].0.clone();
    assert_eq!(size, "79Gi");

    let (tokens, paths) = {
        let hub = state.lock().unwrap();
        (hub.tokens.clone(), hub.paths.clone())
    };
    assert!(tokens.iter().all(|t| t == &format!("Bearer {TOKEN}")) && !tokens.is_empty(), "the service's token");
    assert!(paths.iter().all(|p| p.starts_with("/Qwen/")), "a model the table knows never reaches the hub: {paths:?}");
    assert!(!paths.iter().any(|p| p.ends_with("model.safetensors")), "no weights read");
    ns.cleanup().await;
    node.delete(&client).await;
}

/// `oim render` renders what the operator would for a model the table does not know when given
/// its config.json (the operator reads it from the hub): a generated H100 Deployment and a PVC
/// sized from the safetensors index; without it, nothing is guessed.
#[test]
fn offline_render_takes_the_models_config_json() {
    let (inventory, catalog) = cluster("render");
    let docs = inventory.with_file_name("qwen.yaml");
    std::fs::write(
        &docs,
        "apiVersion: oim.opea.dev/v1alpha1\nkind: OIMService\nmetadata: {name: qwen}\nspec:\n  model: {name: Qwen/Qwen2.5-32B-Instruct}\n  profile: {kpi: latency}\n---\napiVersion: oim.opea.dev/v1alpha1\nkind: OIMCache\nmetadata: {name: qwen}\nspec:\n  source: {hf: {modelName: Qwen/Qwen2.5-32B-Instruct}}\n  profile: {kpi: latency}\n",
    )
    .unwrap();
    let render = |extra: &[String]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_oim"));
        cmd.arg("render").arg("-f").arg(&docs).arg("--inventory").arg(&inventory).arg("--catalog").arg(&catalog);
        cmd.args(extra).output().unwrap()
    };
    let qwen = fake_hub::fixtures().join("Qwen/Qwen2.5-32B-Instruct");
    let out = render(&["--model-config".into(), format!("Qwen/Qwen2.5-32B-Instruct={}", qwen.display())]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let objects: Vec<serde_json::Value> = serde_saphyr::from_multiple(&stdout).unwrap();
    let kind = |k: &str| objects.iter().find(|o| o["kind"] == k).unwrap_or_else(|| panic!("no {k}: {stdout}"));
    let container = &kind("Deployment")["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["resources"]["limits"]["nvidia.com/gpu"], "1", "{container}");
    assert_eq!(kind("PersistentVolumeClaim")["spec"]["resources"]["requests"]["storage"], "79Gi");

    let out = render(&[]);
    assert_eq!(out.status.code(), Some(3), "no profile without the facts");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("config.json"), "{err}");
    let out = render(&["--model-config".into(), qwen.display().to_string()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("MODEL=DIR|FILE"));
}
