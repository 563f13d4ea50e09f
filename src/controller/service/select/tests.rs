//! Selection decisions as pure functions: sticky, re-published, fresh and every way it stops.

use std::sync::Arc;

use super::*;
use crate::api::{CacheState, OIMCacheStatus};
use crate::controller::service::dereference::{CacheRef, Stored, World};
use crate::hardware::devices;
use crate::hardware::inventory::{AcceleratorGroup, Inventory};
use crate::profile::catalog::{Catalog, DirCatalog, digest_of};
use crate::profile::select::NodeView;

const H100_LATENCY: &str = "vllm-nvidia-h100-sxm-80gb-x1-latency-bf16";

fn service(kpi: &str, policy: &str) -> OIMService {
    let mut s: OIMService = serde_saphyr::from_str(&format!(
        "apiVersion: oim.opea.dev/v1alpha1\nkind: OIMService\nmetadata: {{name: llm, namespace: team, uid: u1}}\nspec:\n  model: {{name: meta-llama/Llama-3.1-8B-Instruct}}\n  profile: {{kpi: {kpi}, updatePolicy: {policy}}}\n"
    ))
    .unwrap();
    s.metadata.generation = Some(1);
    s
}

fn node(slug: &str, count: u32) -> NodeView {
    NodeView::offline(Inventory {
        node: format!("{slug}-0"),
        accelerators: vec![AcceleratorGroup::of(devices::by_slug(slug).unwrap(), count)],
        ..Inventory::default()
    })
}

fn catalog() -> DirCatalog {
    DirCatalog::load(std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/profiles"))).unwrap()
}

fn listed(dir: &DirCatalog) -> Vec<ProfileSummary> {
    dir.entries()
        .filter(|(_, _, p)| p.model == "meta-llama/Llama-3.1-8B-Instruct")
        .map(|(path, bytes, p)| ProfileSummary::of(p, digest_of(bytes), path.display().to_string()))
        .collect()
}

fn stored(svc: &OIMService, dir: &DirCatalog, name: &str) -> Stored {
    let (_, bytes, p) = dir.entries().find(|(_, _, p)| p.name == name).unwrap();
    Stored {
        key: selection_key(svc),
        profile: p.clone(),
        digest: digest_of(bytes),
        source: "profiles".into(),
        reason: "the fastest that fits".into(),
        rejected: vec![],
    }
}

fn world(nodes: Vec<NodeView>, stored: Option<Stored>, listed: Result<Vec<ProfileSummary>, String>) -> World {
    World {
        catalog: Arc::new(Catalog::Dir(catalog())),
        listed,
        nodes: nodes.into(),
        unparseable: vec![],
        pods: Arc::new([]),
        cache: CacheRef::None,
        stored,
        distrusted: None,
        deployment: None,
        group: None,
        leader_worker_sets: true,
        arch: None,
    }
}

#[test]
fn a_stored_selection_is_kept_while_its_key_and_node_group_hold() {
    let svc = service("latency", "Pinned");
    let dir = catalog();
    let w = world(vec![node("h100-sxm-80gb", 8)], Some(stored(&svc, &dir, H100_LATENCY)), Ok(listed(&dir)));
    let Decision::Keep { chosen, update } = decide(&svc, &w, &Engines::builtin()) else { panic!("not kept") };
    assert_eq!(chosen.profile.name, H100_LATENCY);
    assert_eq!(chosen.reason, "the fastest that fits", "the stored reason is reported again");
    assert_eq!(update, None);
}

#[test]
fn a_changed_spec_or_a_vanished_node_group_selects_afresh() {
    let svc = service("latency", "Pinned");
    let dir = catalog();
    let old = stored(&svc, &dir, H100_LATENCY);
    let throughput = service("throughput", "Pinned");
    let w = world(vec![node("h100-sxm-80gb", 8)], Some(old.clone()), Ok(listed(&dir)));
    assert!(matches!(decide(&throughput, &w, &Engines::builtin()), Decision::Fresh { .. }), "the KPI changed");
    let w = world(vec![node("mi300x", 8)], Some(old), Ok(listed(&dir)));
    let Decision::Fresh { selected, .. } = decide(&svc, &w, &Engines::builtin()) else { panic!("not fresh") };
    assert_eq!(selected.group.product, "mi300x", "the H100 node is gone: the MI300X node serves");
}

#[test]
fn a_republished_profile_is_reported_when_pinned_and_followed_when_auto() {
    let dir = catalog();
    let mut republished = listed(&dir);
    republished.iter_mut().filter(|p| p.name == H100_LATENCY).for_each(|p| p.digest = "sha256:new".into());
    let pinned = service("latency", "Pinned");
    let w = world(vec![node("h100-sxm-80gb", 8)], Some(stored(&pinned, &dir, H100_LATENCY)), Ok(republished.clone()));
    let Decision::Keep { update, .. } = decide(&pinned, &w, &Engines::builtin()) else { panic!("not kept") };
    assert_eq!(update.as_deref(), Some("sha256:new"));
    let auto = service("latency", "Auto");
    let w = world(vec![node("h100-sxm-80gb", 8)], Some(stored(&auto, &dir, H100_LATENCY)), Ok(republished));
    let Decision::Fresh { selected, followed, .. } = decide(&auto, &w, &Engines::builtin()) else { panic!() };
    assert_eq!(selected.profile.digest, "sha256:new");
    assert!(followed.unwrap().contains("updatePolicy: Auto"));
}

#[test]
fn a_registry_outage_keeps_what_runs_and_blocks_only_a_first_selection() {
    let svc = service("latency", "Pinned");
    let dir = catalog();
    let down = || Err("registry.example.com: connection refused".to_string());
    let w = world(vec![node("h100-sxm-80gb", 8)], Some(stored(&svc, &dir, H100_LATENCY)), down());
    assert!(matches!(decide(&svc, &w, &Engines::builtin()), Decision::Keep { update: None, .. }));
    let w = world(vec![node("h100-sxm-80gb", 8)], None, down());
    let Decision::Blocked(b) = decide(&svc, &w, &Engines::builtin()) else { panic!() };
    assert_eq!((b.step, b.reason.as_str()), (Step::Registry, "RegistryUnavailable"));
    assert!(b.message.contains("connection refused"));
}

#[test]
fn nothing_that_fits_blocks_with_every_rejected_profile_and_why() {
    let mut svc = service("latency", "Pinned");
    svc.spec.profile.as_mut().unwrap().allow_generated = Some(false);
    let dir = catalog();
    let w = world(vec![node("t4", 1)], None, Ok(listed(&dir)));
    let Decision::Blocked(b) = decide(&svc, &w, &Engines::builtin()) else { panic!("selected on a T4 only") };
    assert_eq!(b.step, Step::Selection);
    assert!(!b.rejected.is_empty() && b.rejected.len() <= 10);
    assert!(b.message.contains("none fits"), "{}", b.message);
    assert!(!b.message.contains("left out"), "{}", b.message);
    // A node whose inventory does not parse is named in the explanation, not silently missing.
    let mut w = w;
    w.unparseable = vec!["node gpu-7 has an unparseable oim.opea.dev/inventory annotation (expected value)".into()];
    let Decision::Blocked(b) = decide(&svc, &w, &Engines::builtin()) else { panic!("selected on a T4 only") };
    assert!(b.message.contains("left out: node gpu-7 has an unparseable"), "{}", b.message);
}

#[test]
fn a_cache_that_is_not_ready_blocks_before_selection_and_a_ready_one_narrows_it() {
    let mut svc = service("latency", "Pinned");
    let dir = catalog();
    let mut w = world(vec![node("h100-sxm-80gb", 8)], None, Ok(listed(&dir)));
    w.cache = CacheRef::Waiting { reason: "CacheNotReady", message: "OIMCache c is InProgress: downloading".into() };
    let Decision::Blocked(b) = decide(&svc, &w, &Engines::builtin()) else { panic!() };
    assert_eq!((b.step, b.reason.as_str()), (Step::Cache, "CacheNotReady"));
    let (_, _, held) = dir.entries().find(|(_, _, p)| p.name == H100_LATENCY).unwrap();
    let mut cache: crate::api::OIMCache = serde_saphyr::from_str(
        "apiVersion: oim.opea.dev/v1alpha1\nkind: OIMCache\nmetadata: {name: c}\nspec:\n  source: {hf: {modelName: m}}\n",
    )
    .unwrap();
    cache.status = Some(OIMCacheStatus {
        state: Some(CacheState::Ready),
        profiles: vec![CachedProfile {
            name: held.name.clone(),
            weights: held.weights().to_string(),
            weights_revision: "c0ffee".into(),
            path: format!("/{}/c0ffee", held.weights()),
        }],
        ..Default::default()
    });
    w.cache = CacheRef::Ready(Box::new(cache));
    svc.spec.profile.as_mut().unwrap().kpi = Some(crate::api::Kpi::Throughput);
    let Decision::Fresh { selected, .. } = decide(&svc, &w, &Engines::builtin()) else { panic!() };
    assert_eq!(selected.profile.weights, held.weights(), "only weights the cache holds are candidates");
}

fn held(name: &str, weights: &str, commit: &str) -> CachedProfile {
    CachedProfile {
        name: name.into(),
        weights: weights.into(),
        weights_revision: commit.into(),
        path: format!("/{weights}/{commit}"),
    }
}

#[test]
fn only_weights_the_cache_holds_are_candidates_and_they_run_from_its_path() {
    let h = vec![held("a", "org/model-fp8", "c0ffee")];
    assert!(in_cache(&h, "org/model-fp8", None), "an unpinned profile takes whatever commit the cache has");
    assert!(in_cache(&h, "org/model-fp8", Some("c0ffee")));
    assert!(!in_cache(&h, "org/model-fp8", Some("deadbeef")), "a pinned revision must match");
    assert!(!in_cache(&h, "org/model", None), "another variant is not in the cache");
    let dir = catalog();
    let mut p = dir.entries().next().unwrap().2.clone();
    p.name = "b".into();
    p.weights = Some("org/model-fp8".into());
    p.weights_revision = None;
    assert_eq!(cached_path(&h, &p).as_deref(), Some("/org/model-fp8/c0ffee"), "the same weights serve another profile");
    p.weights = Some("org/model".into());
    assert_eq!(cached_path(&h, &p), None);
}

fn qwen_service(extra: &str) -> OIMService {
    serde_saphyr::from_str(&format!(
        "apiVersion: oim.opea.dev/v1alpha1\nkind: OIMService\nmetadata: {{name: qwen, namespace: team, uid: u2}}\nspec:\n  model: {{name: Qwen/Qwen2.5-32B-Instruct}}\n  profile: {{kpi: throughput{extra}}}\n"
    ))
    .unwrap()
}

fn qwen_arch() -> Arc<crate::profile::estimate::Arch> {
    let dir =
        std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/models/Qwen/Qwen2.5-32B-Instruct"));
    let config = std::fs::read(dir.join("config.json")).unwrap();
    let arch = crate::profile::estimate::Arch::from_config_json("Qwen/Qwen2.5-32B-Instruct", &config).unwrap();
    Arc::new(arch.with_checkpoint_bytes(65_527_752_704))
}

#[test]
fn only_a_model_the_table_does_not_know_and_no_published_profile_covers_needs_the_hub() {
    let dir = catalog();
    let engines = Engines::builtin();
    let h100 = || vec![node("h100-sxm-80gb", 8)];
    let llama = service("latency", "Pinned");
    assert!(!needs_model_facts(&llama, &world(h100(), None, Ok(listed(&dir))), &engines), "published profiles fit");
    assert!(!needs_model_facts(&llama, &world(h100(), None, Ok(vec![])), &engines), "in the built-in table");
    let qwen = qwen_service("");
    assert!(needs_model_facts(&qwen, &world(h100(), None, Ok(vec![])), &engines));
    assert!(!needs_model_facts(&qwen_service(", allowGenerated: false"), &world(h100(), None, Ok(vec![])), &engines));
    assert!(!needs_model_facts(&qwen, &world(h100(), None, Err("registry down".into())), &engines));

    // Without the facts nothing is generated (and the reason says why); with them, a profile is.
    let Decision::Blocked(b) = decide(&qwen, &world(h100(), None, Ok(vec![])), &engines) else { panic!() };
    assert!(b.message.contains("config.json"), "{}", b.message);
    let mut w = world(h100(), None, Ok(vec![]));
    w.arch = Some(qwen_arch());
    let Decision::Fresh { selected, .. } = decide(&qwen, &w, &engines) else { panic!("generated") };
    let doc = selected.document.unwrap();
    assert!(selected.generated && doc.name.starts_with("generated-vllm-nvidia-h100-sxm-80gb-x"), "{}", doc.name);
    assert!(selected.reason.contains("config.json of Qwen/Qwen2.5-32B-Instruct"), "{}", selected.reason);
}
