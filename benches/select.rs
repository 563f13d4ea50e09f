//! Prints selection time over 10,000 profiles x 1,000 nodes (target < 50 ms).

use std::time::{Duration, Instant};

use oim::api::{Kpi, Precision, Vendor};
use oim::hardware::devices;
use oim::hardware::inventory::{AcceleratorGroup, Inventory};
use oim::profile::catalog::ProfileSummary;
use oim::profile::engines::Engines;
use oim::profile::select::{NodeView, PodUse, Request, select};

const MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";

fn main() {
    let slugs = ["h100-sxm-80gb", "a100-sxm-40gb", "l4", "l40s", "mi300x", "gaudi2", "gaudi3", "max-1550"];
    let nodes: Vec<NodeView> = (0..1000)
        .map(|i| {
            let d = devices::by_slug(slugs[i % slugs.len()]).unwrap();
            let count = [1u32, 2, 4, 8][i % 4];
            let inv = Inventory {
                node: format!("node-{i}"),
                accelerators: vec![AcceleratorGroup::of(d, count)],
                ..Inventory::default()
            };
            let mut n = NodeView::offline(inv);
            n.allocatable = Some([(d.resource_name.clone(), count.to_string())].into());
            n
        })
        .collect();
    let pods: Vec<PodUse> = (0..2000)
        .map(|i| PodUse {
            node: format!("node-{}", i % 1000),
            requests: [("nvidia.com/gpu".to_string(), 1)].into(),
            service: None,
        })
        .collect();
    let kpis = [Kpi::Latency, Kpi::Throughput, Kpi::Quantization];
    let profiles: Vec<ProfileSummary> = (0..10_000)
        .map(|i| {
            let d = devices::by_slug(slugs[i % slugs.len()]).unwrap();
            let count = [1u32, 2, 4, 8][(i / 8) % 4];
            ProfileSummary {
                name: format!("vllm-{}-{}-x{count}-p{i}", d.vendor, d.slug),
                model: MODEL.into(),
                weights: MODEL.into(),
                weights_revision: None,
                kpi: kpis[i % 3],
                precision: if i % 2 == 0 { Precision::Bf16 } else { Precision::Fp8 },
                vendor: d.vendor,
                product: d.slug.clone(),
                count,
                nodes: 1,
                min_memory_mib: None,
                tensor_parallelism: count,
                pipeline_parallelism: 1,
                ttft_ms_p50: Some((i % 97) as f64),
                throughput_tokens_per_sec: Some((i % 89) as f64 * 100.0),
                concurrency: Some(16),
                estimated: false,
                digest: format!("sha256:{i}"),
                source: "bench".into(),
            }
        })
        .collect();
    let engines = Engines::builtin();
    let req =
        Request { model: MODEL.into(), kpi: Kpi::Latency, allow_generated: true, replicas: 2, ..Default::default() };
    let mut samples: Vec<Duration> = (0..20)
        .map(|_| {
            let t = Instant::now();
            let s = select(&req, &profiles, &nodes, &pods, &engines);
            std::hint::black_box(&s);
            assert!(s.selected.is_some_and(|s| s.profile.vendor != Vendor::Cpu));
            t.elapsed()
        })
        .collect();
    samples.sort();
    println!(
        "selection over {} profiles x {} nodes x {} pods: median {:.1} ms, max {:.1} ms (target < 50 ms)",
        profiles.len(),
        nodes.len(),
        pods.len(),
        samples[samples.len() / 2].as_secs_f64() * 1000.0,
        samples.last().unwrap().as_secs_f64() * 1000.0
    );
}
