//! Prints the registry requests needed to list a model with 50 profiles, cold and warm: our own
//! API calls (tag pages, HEADs, manifest GETs, blob GETs) and the HTTP requests the registry
//! logged (oci-client adds `/v2/` pings). Needs the local registry: run with `make bench`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use oci_client::secrets::RegistryAuth;
use oim::profile::catalog::{DirCatalog, OciCatalog, list_oci};
use oim::profile::oci::RegistryRef;

const MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";

/// 50 valid, distinct profiles: products x counts x KPIs.
fn write_catalog(dir: &std::path::Path) {
    let products = [
        ("nvidia", "h100-sxm-80gb"),
        ("nvidia", "a100-sxm-80gb"),
        ("nvidia", "l40s"),
        ("amd", "mi300x"),
        ("habana", "gaudi2"),
    ];
    let mut n = 0;
    'outer: for (vendor, product) in products {
        for count in [1u32, 2, 4, 8] {
            for kpi in ["latency", "throughput", "quantization"] {
                if n == 50 {
                    break 'outer;
                }
                let name = format!("vllm-{vendor}-{product}-x{count}-{kpi}-bf16");
                let text = format!(
                    "schema: oim.opea.dev/profile/v1\nname: {name}\nmodel: {MODEL}\nkpi: {kpi}\nprecision: bf16\n\
                     engine: {{name: vllm, version: \"0.11.0\", image: \"vllm/vllm-openai:v0.11.0\"}}\n\
                     accelerator: {{vendor: {vendor}, product: {product}, count: {count}}}\n\
                     parallelism: {{tensor: {count}, pipeline: 1}}\nargs: {{max-model-len: 8192}}\n\
                     resources: {{cpu: \"8\", memory: 64Gi, sharedMemory: 8Gi}}\n\
                     performance: {{ttftMsP50: {}, throughputTokensPerSec: {}, concurrency: 16}}\n",
                    20 + n,
                    1000 + 10 * n
                );
                std::fs::write(dir.join(format!("{name}.yaml")), text).unwrap();
                n += 1;
            }
        }
    }
}

fn registry_log_lines() -> usize {
    let state = std::env::var("OIM_CLUSTER_STATE").unwrap();
    let log = std::fs::read_to_string(PathBuf::from(state).join("log/registry.log")).unwrap_or_default();
    log.lines().filter(|l| l.contains("response completed")).count()
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let Ok(registry) = std::env::var("OIM_REGISTRY") else {
        eprintln!("catalog bench: OIM_REGISTRY is not set; run `make bench` (it starts the local registry)");
        std::process::exit(1);
    };
    let dir = std::env::temp_dir().join(format!("oim-bench-catalog-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    write_catalog(&dir);
    let prefix = format!("{registry}/bench-{}", std::process::id());
    let reg = RegistryRef::parse(&prefix).unwrap();
    let publisher = OciCatalog::new(reg.clone(), RegistryAuth::Anonymous, false, Duration::ZERO).unwrap();
    publisher.push(&DirCatalog::load(&dir).unwrap()).await.unwrap();

    // TTL zero: the warm listing re-resolves tags (the operator's behaviour after its TTL).
    let catalog = OciCatalog::new(reg, RegistryAuth::Anonymous, false, Duration::ZERO).unwrap();
    println!(
        "{:<6} {:>8} {:>10} {:>6} {:>9} {:>6} {:>14} {:>10}",
        "list", "profiles", "tag pages", "HEADs", "manifests", "blobs", "HTTP requests", "time"
    );
    for round in ["cold", "warm"] {
        let before = catalog.counts();
        let logged = registry_log_lines();
        let t = Instant::now();
        let n = list_oci(&catalog, MODEL).await.unwrap().len();
        let elapsed = t.elapsed();
        tokio::time::sleep(Duration::from_millis(200)).await; // let the registry flush its log
        let after = catalog.counts();
        println!(
            "{round:<6} {n:>8} {:>10} {:>6} {:>9} {:>6} {:>14} {:>8.1}ms",
            after.tag_pages - before.tag_pages,
            after.heads - before.heads,
            after.manifests - before.manifests,
            after.blobs - before.blobs,
            registry_log_lines() - logged,
            elapsed.as_secs_f64() * 1000.0
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
