//! The seed catalog in `profiles/`: valid, named by the DESIGN grammar, and every profile fits its
//! own hardware by the estimator.

use std::path::Path;

use crate::api::Vendor;
use crate::hardware::devices;
use crate::profile::catalog::DirCatalog;
use crate::profile::estimate;
use crate::profile::oci::enum_str;

fn seed() -> DirCatalog {
    DirCatalog::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles")).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn the_seed_catalog_covers_six_models_and_every_vendor() {
    let catalog = seed();
    let mut models = std::collections::BTreeSet::new();
    let mut products = std::collections::BTreeSet::new();
    for (_, _, p) in catalog.entries() {
        models.insert(p.model.clone());
        products.insert(p.accelerator.product.clone());
    }
    assert!(models.len() >= 6, "{models:?}");
    for want in ["h100-sxm-80gb", "a100-sxm-40gb", "l4", "l40s", "mi300x", "gaudi2", "gaudi3", "max-1550", "any"] {
        assert!(products.contains(want), "no seed profile for {want}");
    }
}

#[test]
fn every_seed_profile_is_named_by_the_grammar_and_fits_its_own_hardware() {
    for (path, _, p) in seed().entries() {
        let a = &p.accelerator;
        let expected =
            format!("vllm-{}-{}-x{}-{}-{}", a.vendor, a.product, a.count, enum_str(&p.kpi), enum_str(&p.precision));
        assert_eq!(p.name, expected, "{}", path.display());
        let arch = estimate::arch(&p.model)
            .unwrap_or_else(|| panic!("{}: {} not in the architecture table", path.display(), p.model));
        let ctx = p.args.get("max-model-len").and_then(|v| v.as_u64()).unwrap_or(arch.max_context);
        assert!(ctx <= arch.max_context, "{}: max-model-len {ctx} > model max", path.display());
        if a.vendor == Vendor::Cpu {
            let kv_gib: f64 = p.env.get("VLLM_CPU_KVCACHE_SPACE").and_then(|v| v.parse().ok()).unwrap_or(4.0);
            let need = arch.weight_bytes(p.precision) / f64::from(a.count) + kv_gib * 1024f64.powi(3);
            let have = a.min_memory_mib.expect("cpu profiles state memory per NUMA node") as f64 * 1024.0 * 1024.0;
            assert!(need <= have, "{}: needs {need} bytes per NUMA node, states {have}", path.display());
            continue;
        }
        let device = devices::by_slug(&a.product).unwrap_or_else(|| panic!("{}: {}", path.display(), a.product));
        assert!(
            estimate::holds_tokens(arch, p.precision, device.memory_mib, p.parallelism.tensor, ctx),
            "{}: {} at TP{} cannot hold {ctx} tokens on {}",
            path.display(),
            enum_str(&p.precision),
            p.parallelism.tensor,
            a.product
        );
        if p.parallelism.tensor > 1 {
            assert_eq!(
                p.args.get("tensor-parallel-size").and_then(|v| v.as_u64()),
                Some(u64::from(p.parallelism.tensor)),
                "{}",
                path.display()
            );
        }
        if let Some(perf) = &p.performance {
            assert!(
                perf.source.as_deref().is_some_and(|s| !s.is_empty()),
                "{}: figures need a cited source",
                path.display()
            );
        }
    }
}
