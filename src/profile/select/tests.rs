//! Selection scenarios: what a user would ask, on hardware a cluster would have.

use k8s_openapi::api::core::v1::{Taint, Toleration};

use super::*;
use crate::hardware::devices;
use crate::hardware::inventory::{AcceleratorGroup, CpuInfo};

const LLAMA8B: &str = "meta-llama/Llama-3.1-8B-Instruct";
const LLAMA70B: &str = "meta-llama/Llama-3.1-70B-Instruct";

fn inventory(node: &str, slug: &str, count: u32) -> Inventory {
    let d = devices::by_slug(slug).unwrap();
    Inventory {
        node: node.into(),
        accelerators: vec![AcceleratorGroup::of(d, count)],
        cpu: Some(CpuInfo {
            vendor: "GenuineIntel".into(),
            model: "x".into(),
            sockets: 2,
            cores: 64,
            threads: 128,
            flags: vec![],
            numa_node_count: 2,
        }),
        memory_mib: 1_000_000,
        ..Inventory::default()
    }
}

/// A live node: allocatable as the device plugin reports it.
fn live(node: &str, slug: &str, count: u32, allocatable: u32) -> NodeView {
    let inv = inventory(node, slug, count);
    let resource = inv.accelerators[0].resource_name.clone();
    NodeView {
        name: node.into(),
        inventory: inv,
        allocatable: Some([(resource, allocatable.to_string()), ("cpu".into(), "64".into())].into()),
        ready: true,
        ..Default::default()
    }
}

#[allow(clippy::too_many_arguments)] // one call per profile reads best in a fixture table
fn profile(
    name: &str,
    model: &str,
    kpi: Kpi,
    vendor: Vendor,
    product: &str,
    count: u32,
    ttft: Option<f64>,
    tps: Option<f64>,
) -> ProfileSummary {
    ProfileSummary {
        name: name.into(),
        model: model.into(),
        weights: model.into(),
        weights_revision: None,
        kpi,
        precision: Precision::Bf16,
        vendor,
        product: product.into(),
        count,
        nodes: 1,
        min_memory_mib: None,
        tensor_parallelism: count,
        pipeline_parallelism: 1,
        ttft_ms_p50: ttft,
        throughput_tokens_per_sec: tps,
        concurrency: None,
        estimated: false,
        digest: format!("sha256:{name}"),
        source: "test".into(),
    }
}

fn request(model: &str, kpi: Kpi) -> Request {
    Request { model: model.into(), kpi, allow_generated: true, replicas: 1, ..Default::default() }
}

fn catalog() -> Vec<ProfileSummary> {
    vec![
        profile(
            "vllm-nvidia-h100-sxm-80gb-x1-latency-bf16",
            LLAMA8B,
            Kpi::Latency,
            Vendor::Nvidia,
            "h100-sxm-80gb",
            1,
            Some(38.0),
            Some(2400.0),
        ),
        profile(
            "vllm-nvidia-h100-sxm-80gb-x1-throughput-bf16",
            LLAMA8B,
            Kpi::Throughput,
            Vendor::Nvidia,
            "h100-sxm-80gb",
            1,
            Some(90.0),
            Some(8000.0),
        ),
        profile(
            "vllm-nvidia-l4-x1-throughput-bf16",
            LLAMA8B,
            Kpi::Throughput,
            Vendor::Nvidia,
            "l4",
            1,
            None,
            Some(1100.0),
        ),
        profile(
            "vllm-amd-mi300x-x1-throughput-bf16",
            LLAMA8B,
            Kpi::Throughput,
            Vendor::Amd,
            "mi300x",
            1,
            None,
            Some(7000.0),
        ),
        profile(
            "vllm-nvidia-h100-sxm-80gb-x4-latency-bf16",
            LLAMA70B,
            Kpi::Latency,
            Vendor::Nvidia,
            "h100-sxm-80gb",
            4,
            Some(60.0),
            None,
        ),
        profile(
            "vllm-nvidia-h100-sxm-80gb-x2-latency-bf16",
            LLAMA70B,
            Kpi::Latency,
            Vendor::Nvidia,
            "h100-sxm-80gb",
            2,
            Some(90.0),
            None,
        ),
        profile("vllm-nvidia-l4-x8-throughput-bf16", LLAMA70B, Kpi::Throughput, Vendor::Nvidia, "l4", 8, None, None),
    ]
}

fn offline(nodes: &[(&str, &str, u32)]) -> Vec<NodeView> {
    nodes.iter().map(|(n, s, c)| NodeView::offline(inventory(n, s, *c))).collect()
}

#[test]
fn a_70b_model_on_single_l4_nodes_has_nothing_to_run_and_says_why_with_numbers() {
    let nodes = offline(&[("l4-a", "l4", 1), ("l4-b", "l4", 1)]);
    let mut req = request(LLAMA70B, Kpi::Throughput);
    req.precision = Some(Precision::Bf16);
    let s = select(&req, &catalog(), &nodes, &[], &Engines::builtin());
    assert!(s.selected.is_none());
    assert_eq!(s.reason.as_deref(), Some("NoFeasibleProfile"));
    let l4 = s.rejected.iter().find(|r| r.name == "vllm-nvidia-l4-x8-throughput-bf16").unwrap();
    assert_eq!(l4.reason, "needs 8x nvidia l4 per node; the largest schedulable group offers 1");
    let h100 = s.rejected.iter().find(|r| r.name == "vllm-nvidia-h100-sxm-80gb-x4-latency-bf16").unwrap();
    assert_eq!(
        h100.reason,
        "needs 4x nvidia h100-sxm-80gb per node; the largest schedulable group offers 1x nvidia l4"
    );
    let generated = s.rejected.iter().find(|r| r.name.starts_with("generated-")).unwrap();
    assert!(
        generated.reason.contains("131.4 GiB of weights") && generated.reason.contains("1x 22.5 GiB"),
        "{}",
        generated.reason
    );
}

#[test]
fn latency_and_throughput_pick_different_profiles_from_the_same_catalog() {
    let nodes = offline(&[("h100", "h100-sxm-80gb", 8)]);
    let engines = Engines::builtin();
    let latency = select(&request(LLAMA8B, Kpi::Latency), &catalog(), &nodes, &[], &engines).selected.unwrap();
    let throughput = select(&request(LLAMA8B, Kpi::Throughput), &catalog(), &nodes, &[], &engines).selected.unwrap();
    assert_eq!(latency.profile.name, "vllm-nvidia-h100-sxm-80gb-x1-latency-bf16");
    assert_eq!(throughput.profile.name, "vllm-nvidia-h100-sxm-80gb-x1-throughput-bf16");
    assert!(
        latency.reason.contains("ttft p50 38 ms") && latency.reason.contains("h100-sxm-80gb"),
        "{}",
        latency.reason
    );
    assert_eq!(latency.group.product, "h100-sxm-80gb");
}

#[test]
fn an_amd_only_cluster_never_gets_an_nvidia_profile() {
    let nodes = offline(&[("mi", "mi300x", 8)]);
    for kpi in [Kpi::Latency, Kpi::Throughput, Kpi::Quantization] {
        let s = select(&request(LLAMA8B, kpi), &catalog(), &nodes, &[], &Engines::builtin());
        let chosen = s.selected.unwrap();
        assert_eq!(chosen.profile.vendor, Vendor::Amd, "{kpi:?}");
        assert_eq!(chosen.profile.name, "vllm-amd-mi300x-x1-throughput-bf16");
    }
}

#[test]
fn a_pinned_profile_that_does_not_fit_is_pinned_profile_infeasible() {
    let nodes = offline(&[("l4", "l4", 1)]);
    let mut req = request(LLAMA8B, Kpi::Latency);
    req.pinned = Some("vllm-nvidia-h100-sxm-80gb-x1-latency-bf16".into());
    let s = select(&req, &catalog(), &nodes, &[], &Engines::builtin());
    assert!(s.selected.is_none());
    assert_eq!(s.reason.as_deref(), Some("PinnedProfileInfeasible"));
    assert!(
        s.rejected
            .iter()
            .any(|r| r.name == "vllm-nvidia-l4-x1-throughput-bf16" && r.reason.contains("not the pinned profile"))
    );
    // Pinned and feasible: chosen even though ranking would prefer another KPI.
    req.pinned = Some("vllm-nvidia-l4-x1-throughput-bf16".into());
    assert_eq!(
        select(&req, &catalog(), &nodes, &[], &Engines::builtin()).selected.unwrap().profile.name,
        "vllm-nvidia-l4-x1-throughput-bf16"
    );
}

#[test]
fn ties_resolve_the_same_way_whatever_the_input_order() {
    let mut profiles = vec![
        profile("b-profile", LLAMA8B, Kpi::Throughput, Vendor::Nvidia, "h100-sxm-80gb", 1, None, Some(1000.0)),
        profile("a-profile", LLAMA8B, Kpi::Throughput, Vendor::Nvidia, "h100-sxm-80gb", 1, None, Some(1000.0)),
        profile("c-profile", LLAMA8B, Kpi::Throughput, Vendor::Nvidia, "h100-sxm-80gb", 1, None, Some(1000.0)),
    ];
    let nodes = offline(&[("h100", "h100-sxm-80gb", 8), ("h100-b", "h100-sxm-80gb", 8)]);
    let first = select(&request(LLAMA8B, Kpi::Throughput), &profiles, &nodes, &[], &Engines::builtin());
    for _ in 0..5 {
        profiles.rotate_left(1);
        let again = select(&request(LLAMA8B, Kpi::Throughput), &profiles, &nodes, &[], &Engines::builtin());
        assert_eq!(again, first);
    }
    assert_eq!(first.selected.unwrap().profile.name, "a-profile");
}

fn pod(node: &str, gpus: u32, service: Option<&str>) -> PodUse {
    PodUse {
        node: node.into(),
        requests: [("nvidia.com/gpu".to_string(), gpus)].into(),
        service: service.map(str::to_string),
    }
}

#[test]
fn with_six_of_eight_h100s_taken_a_four_gpu_profile_loses_to_a_two_gpu_one_and_own_pods_do_not_count() {
    let nodes = vec![live("h100", "h100-sxm-80gb", 8, 8)];
    let mut req = request(LLAMA70B, Kpi::Latency);
    req.service = Some("llama70b".into());
    let others = vec![pod("h100", 4, Some("someone-else")), pod("h100", 2, None)];
    let s = select(&req, &catalog(), &nodes, &others, &Engines::builtin());
    assert_eq!(s.selected.as_ref().unwrap().profile.name, "vllm-nvidia-h100-sxm-80gb-x2-latency-bf16");
    let four = s.rejected.iter().find(|r| r.name.contains("x4")).unwrap();
    assert_eq!(
        four.reason,
        "InsufficientFreeAccelerators: needs 4x nvidia h100-sxm-80gb for each of 1 replica(s); free: 2 on h100"
    );
    // The service's own running pod holds 4 GPUs: they are its to reuse.
    let own = vec![pod("h100", 4, Some("llama70b")), pod("h100", 2, None)];
    let s = select(&req, &catalog(), &nodes, &own, &Engines::builtin());
    assert_eq!(s.selected.unwrap().profile.name, "vllm-nvidia-h100-sxm-80gb-x4-latency-bf16");
}

#[test]
fn replicas_must_all_fit() {
    let nodes = vec![live("h100", "h100-sxm-80gb", 8, 8)];
    let mut req = request(LLAMA70B, Kpi::Latency);
    req.replicas = 3;
    let s = select(&req, &catalog(), &nodes, &[], &Engines::builtin());
    assert_eq!(
        s.selected.unwrap().profile.name,
        "vllm-nvidia-h100-sxm-80gb-x2-latency-bf16",
        "3x4 does not fit 8, 3x2 does"
    );
}

#[test]
fn device_plugin_missing_partitions_cordons_and_taints_are_explained() {
    let mut missing = live("no-plugin", "h100-sxm-80gb", 8, 0);
    missing.allocatable.as_mut().unwrap().remove("nvidia.com/gpu");
    let partitioned = live("mig", "a100-sxm-40gb", 1, 7);
    let mut cordoned = live("cordoned", "h100-sxm-80gb", 8, 8);
    cordoned.unschedulable = true;
    let mut tainted = live("tainted", "h100-sxm-80gb", 8, 8);
    tainted.taints = vec![Taint {
        key: "dedicated".into(),
        value: Some("training".into()),
        effect: "NoSchedule".into(),
        ..Default::default()
    }];
    let mut gpu_tainted = live("gpu-taint", "l4", 1, 1);
    gpu_tainted.taints =
        vec![Taint { key: "nvidia.com/gpu".into(), effect: "NoSchedule".into(), ..Default::default() }];
    let nodes = vec![missing, partitioned, cordoned, tainted, gpu_tainted];
    let s = select(&request(LLAMA8B, Kpi::Latency), &catalog(), &nodes, &[], &Engines::builtin());
    let reason = |node: &str| s.unusable.iter().find(|u| u.node == node).map(|u| u.reason.clone());
    assert_eq!(reason("no-plugin").as_deref(), Some("DevicePluginMissing"));
    assert_eq!(reason("mig").as_deref(), Some("PartitionedDevices"));
    assert_eq!(reason("cordoned").as_deref(), Some("Cordoned"));
    assert_eq!(reason("tainted").as_deref(), Some("Taint"));
    assert_eq!(reason("gpu-taint"), None, "the accelerator taint is tolerated by the rendered pod");
    assert_eq!(s.selected.unwrap().profile.name, "vllm-nvidia-l4-x1-throughput-bf16");
    // Tolerating the dedicated taint opens the H100 node.
    let mut req = request(LLAMA8B, Kpi::Latency);
    req.tolerations = vec![Toleration {
        key: Some("dedicated".into()),
        operator: Some("Equal".into()),
        value: Some("training".into()),
        effect: Some("NoSchedule".into()),
        ..Default::default()
    }];
    let s = select(&req, &catalog(), &nodes, &[], &Engines::builtin());
    assert_eq!(s.selected.unwrap().profile.name, "vllm-nvidia-h100-sxm-80gb-x1-latency-bf16");
}

#[test]
fn a_node_mixing_products_under_one_resource_is_offered_as_its_least_capable_product() {
    let mut inv = inventory("mixed", "l40s", 2);
    let t4 = devices::by_slug("t4").unwrap();
    inv.accelerators.push(AcceleratorGroup {
        product: "t4".into(),
        product_name: t4.product_name.clone(),
        count: 1,
        memory_mib: t4.memory_mib,
        ..inv.accelerators[0].clone()
    });
    let nodes = vec![NodeView::offline(inv)];
    let (groups, _) = groups(&nodes, &[], &request(LLAMA8B, Kpi::Latency));
    assert_eq!(groups.len(), 1);
    assert_eq!((groups[0].product.as_str(), groups[0].devices_per_node), ("t4", 3));
}

#[test]
fn a_generated_profile_is_built_when_nothing_published_fits_unless_disallowed() {
    let nodes = offline(&[("gaudi", "gaudi2", 8)]);
    let req = request("mistralai/Mistral-7B-Instruct-v0.3", Kpi::Throughput);
    let s = select(&req, &catalog(), &nodes, &[], &Engines::builtin());
    let chosen = s.selected.unwrap();
    assert!(chosen.generated);
    assert_eq!(chosen.profile.name, "generated-vllm-habana-gaudi2-x1-bf16");
    let doc = chosen.document.unwrap();
    doc.validate("generated").unwrap();
    assert_eq!(doc.args["max-model-len"], 32768);
    assert!(doc.engine.image.contains("gaudi-docker"));
    assert!(doc.resources.extra.contains_key("hugepages-2Mi"));
    let mut no = req.clone();
    no.allow_generated = false;
    assert!(select(&no, &catalog(), &nodes, &[], &Engines::builtin()).selected.is_none());
    let unknown = request("acme/unknown-model", Kpi::Throughput);
    let s = select(&unknown, &catalog(), &nodes, &[], &Engines::builtin());
    assert!(s.rejected.iter().any(|r| r.reason.contains("not in the built-in architecture table")));
}

#[test]
fn cpu_only_nodes_offer_numa_nodes_to_cpu_profiles() {
    let inv = crate::hardware::inventory::fixtures::sapphire_rapids("spr");
    let cpu = profile("vllm-cpu-any-x1-throughput-bf16", LLAMA8B, Kpi::Throughput, Vendor::Cpu, "any", 1, None, None);
    let s = select(&request(LLAMA8B, Kpi::Throughput), &[cpu], &[NodeView::offline(inv)], &[], &Engines::builtin());
    let chosen = s.selected.unwrap();
    assert_eq!(chosen.group.vendor, Vendor::Cpu);
    assert_eq!(chosen.group.devices_per_node, 2);
}

#[test]
fn latency_figures_compare_only_at_equal_concurrency() {
    let nodes = offline(&[("h100", "h100-sxm-80gb", 8)]);
    let at = |name: &str, ttft: f64, c: u32| {
        let mut p = profile(name, LLAMA8B, Kpi::Latency, Vendor::Nvidia, "h100-sxm-80gb", 1, Some(ttft), None);
        p.concurrency = Some(c);
        p
    };
    // The 10 ms figure was measured alone; the others at 16 concurrent requests.
    let profiles = vec![at("solo", 10.0, 1), at("slower", 30.0, 16), at("faster", 20.0, 16)];
    let s = select(&request(LLAMA8B, Kpi::Latency), &profiles, &nodes, &[], &Engines::builtin());
    assert_eq!(s.selected.unwrap().profile.name, "faster");
    let solo = s.rejected.iter().find(|r| r.name == "solo").unwrap();
    assert!(solo.reason.contains("measured at concurrency 1, not 16"), "{}", solo.reason);
    let slower = s.rejected.iter().find(|r| r.name == "slower").unwrap();
    assert_eq!(slower.reason, "feasible, but ttft p50 30 ms vs 20 ms for faster");
}

#[test]
fn published_measured_figures_rank_before_published_estimates_which_compare_among_themselves() {
    // A catalog where someone published roofline estimates beside measured profiles: the
    // estimates promise more, but a measurement beats any estimate for the same request.
    let nodes = offline(&[("h100", "h100-sxm-80gb", 8)]);
    let tp = |name: &str, count: u32, tps: f64, estimated: bool| {
        let mut p = profile(name, LLAMA8B, Kpi::Throughput, Vendor::Nvidia, "h100-sxm-80gb", count, None, Some(tps));
        p.concurrency = Some(if estimated { 212 } else { 64 });
        p.estimated = estimated;
        p
    };
    let profiles = vec![
        tp("estimated-big", 1, 20000.0, true),
        tp("estimated-small", 1, 15000.0, true),
        tp("measured", 1, 8000.0, false),
        tp("measured-slower", 2, 9000.0, false),
    ];
    let s = select(&request(LLAMA8B, Kpi::Throughput), &profiles, &nodes, &[], &Engines::builtin());
    let sel = s.selected.unwrap();
    assert_eq!(sel.profile.name, "measured", "measured 8000 tok/s on 1 device beats 4500 per device and estimates");
    let why = |n: &str| s.rejected.iter().find(|r| r.name == n).unwrap().reason.clone();
    assert_eq!(
        why("estimated-big"),
        "feasible, but its throughput figures are estimated and measured has measured ones"
    );
    assert_eq!(why("measured-slower"), "feasible, but 4500 tok/s per device vs 8000 for measured");

    // With only estimates published, they compare by their estimates and the choice says so.
    let only: Vec<ProfileSummary> = profiles.iter().filter(|p| p.estimated).cloned().collect();
    let s = select(&request(LLAMA8B, Kpi::Throughput), &only, &nodes, &[], &Engines::builtin());
    let sel = s.selected.unwrap();
    assert_eq!(sel.profile.name, "estimated-big");
    assert!(sel.reason.contains("estimated 20000 tok/s per device"), "{}", sel.reason);
    assert!(s.rejected[0].reason.contains("estimated 15000.0 tok/s per device"), "{}", s.rejected[0].reason);

    // A profile with no figures ranks after an estimate, and an estimate's concurrency does not
    // move the reference concurrency of measured figures.
    let mut none = tp("no-figures", 1, 0.0, false);
    none.throughput_tokens_per_sec = None;
    let s = select(&request(LLAMA8B, Kpi::Throughput), &[none, only[1].clone()], &nodes, &[], &Engines::builtin());
    assert_eq!(s.selected.unwrap().profile.name, "estimated-small");
}

#[test]
fn a_profile_marked_estimated_says_so_through_the_registry_annotations() {
    let dir = crate::profile::catalog::DirCatalog::load(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/profiles"
    )))
    .unwrap();
    let (_, _, p) = dir.entries().find(|(_, _, p)| p.performance.is_some()).unwrap();
    let mut p = p.clone();
    let measured = crate::profile::oci::annotations(&p);
    let back = |a| ProfileSummary::from_annotations(&a, &p.name, "sha256:x", "r".into()).unwrap();
    assert!(!back(measured).estimated);
    p.performance.as_mut().unwrap().source = Some(crate::profile::select::ESTIMATED.into());
    assert!(back(crate::profile::oci::annotations(&p)).estimated);
    assert!(ProfileSummary::of(&p, String::new(), String::new()).estimated);
}

#[test]
fn a_slimmed_pod_counts_the_same_and_a_namesake_service_elsewhere_is_someone_else() {
    let pod: Pod = serde_saphyr::from_str(
        "metadata:
  name: llama70b-abc
  namespace: team-a
  labels: {app.kubernetes.io/managed-by: oim-operator, app.kubernetes.io/instance: llama70b, pod-template-hash: x}
  annotations: {big: payload}
spec:
  nodeName: h100
  containers:
  - name: vllm
    image: vllm/vllm-openai:v0.26.0
    args: [a, b, c]
    env: [{name: HF_HOME, value: /cache}]
    resources:
      requests: {cpu: '8', memory: 64Gi, nvidia.com/gpu: '4'}
      limits: {memory: 72Gi, nvidia.com/gpu: '4'}
status:
  phase: Running
  podIP: 10.0.0.1
",
    )
    .unwrap();
    let full = PodUse::from_pod(&pod).unwrap();
    let mut slim = pod.clone();
    PodUse::slim(&mut slim);
    let kept = PodUse::from_pod(&slim).unwrap();
    assert_eq!(
        (kept.node.as_str(), &kept.requests, kept.service.as_deref()),
        ("h100", &full.requests, Some("team-a/llama70b"))
    );
    let text = serde_json::to_string(&slim).unwrap();
    for dropped in ["payload", "vllm-openai", "HF_HOME", "10.0.0.1", "64Gi", "pod-template-hash"] {
        assert!(!text.contains(dropped), "{dropped} is kept in the cache: {text}");
    }

    // The same service name in another namespace does not own these GPUs.
    let nodes = vec![live("h100", "h100-sxm-80gb", 8, 8)];
    let mut req = request(LLAMA70B, Kpi::Latency);
    req.service = Some(service_id(Some("team-b"), "llama70b"));
    let others = vec![kept.clone(), pod_of("h100", 2)];
    let s = select(&req, &catalog(), &nodes, &others, &Engines::builtin());
    assert_eq!(s.selected.unwrap().profile.name, "vllm-nvidia-h100-sxm-80gb-x2-latency-bf16");
    req.service = Some(service_id(Some("team-a"), "llama70b"));
    let s = select(&req, &catalog(), &nodes, &others, &Engines::builtin());
    assert_eq!(s.selected.unwrap().profile.name, "vllm-nvidia-h100-sxm-80gb-x4-latency-bf16");
}

fn pod_of(node: &str, gpus: u32) -> PodUse {
    pod(node, gpus, None)
}

/// A CPU-only node: `numa` NUMA nodes, `gib` of memory, AMX unless told otherwise.
fn cpu_node(node: &str, numa: u32, gib: u64, amx: bool) -> NodeView {
    let flags = if amx { vec!["avx512f".into(), "amx_tile".into()] } else { vec!["avx512f".into()] };
    NodeView::offline(Inventory {
        node: node.into(),
        cpu: Some(CpuInfo {
            vendor: "GenuineIntel".into(),
            model: "x".into(),
            sockets: numa,
            cores: 32 * numa,
            threads: 64 * numa,
            flags,
            numa_node_count: numa,
        }),
        memory_mib: gib * 1024,
        ..Inventory::default()
    })
}

fn gib_of(quantity: &str) -> u64 {
    quantity.trim_end_matches("Gi").parse().unwrap()
}

#[test]
fn a_70b_model_without_published_profiles_runs_on_h100s_not_on_the_cpu_nodes() {
    // The issue-17 cluster: 8x H100 nodes and big CPU-only nodes, nothing published for the model.
    let mut nodes = offline(&[("h100-a", "h100-sxm-80gb", 8)]);
    nodes.push(NodeView::offline(crate::hardware::inventory::fixtures::sapphire_rapids("spr-a")));
    for kpi in [Kpi::Throughput, Kpi::Latency] {
        let s = select(&request(LLAMA70B, kpi), &[], &nodes, &[], &Engines::builtin());
        let chosen = s.selected.unwrap_or_else(|| panic!("{kpi:?}: nothing selected: {:?}", s.rejected));
        assert_eq!(chosen.group.vendor, Vendor::Nvidia, "{kpi:?}: {}", chosen.reason);
        assert!(matches!(chosen.profile.tensor_parallelism, 2 | 4), "{}", chosen.profile.name);
        let doc = chosen.document.unwrap();
        doc.validate("generated").unwrap();
        // Loading needs the process, each worker's runtime and a staged shard: not a constant 16Gi.
        let tp = u64::from(doc.parallelism.tensor);
        assert!(gib_of(&doc.resources.memory) >= 4 + tp * 7, "{}", doc.resources.memory);
        let perf = doc.performance.unwrap();
        assert_eq!(perf.source.as_deref(), Some("estimated"));
        // The CPU alternative was generated too and lost on the estimate, with its numbers.
        let cpu = s.rejected.iter().find(|r| r.name.starts_with("generated-vllm-cpu-")).unwrap();
        let expected = if kpi == Kpi::Latency { "estimated ttft" } else { "tok/s per device" };
        assert!(cpu.reason.contains(expected), "{kpi:?}: {}", cpu.reason);
        // The winner explains itself with memory per device, the estimate and why this TP.
        let tp = format!("TP{}", chosen.profile.tensor_parallelism);
        assert!(chosen.reason.contains("GiB per device") && chosen.reason.contains(&tp), "{}", chosen.reason);
        assert!(chosen.reason.contains("tok/s"), "{}", chosen.reason);
    }
}

#[test]
fn a_70b_model_on_cpu_only_nodes_is_generated_only_where_memory_holds_weights_kv_and_reserve() {
    let small = [cpu_node("cpu-small", 2, 128, true)];
    let s = select(&request(LLAMA70B, Kpi::Throughput), &[], &small, &[], &Engines::builtin());
    assert!(s.selected.is_none());
    let why = &s.rejected.iter().find(|r| r.name.starts_with("generated-vllm-cpu-")).unwrap().reason;
    assert!(why.contains("131.4 GiB of weights") && why.contains("NUMA nodes of 64 GiB"), "{why}");

    let big = [cpu_node("cpu-big", 2, 512, true)];
    let s = select(&request(LLAMA70B, Kpi::Throughput), &[], &big, &[], &Engines::builtin());
    let doc = s.selected.unwrap().document.unwrap();
    doc.validate("generated").unwrap();
    assert!(!doc.args.contains_key("gpu-memory-utilization"), "GPU-only args stay off the CPU engine");
    let kv_space: u64 = doc.env["VLLM_CPU_KVCACHE_SPACE"].parse().unwrap();
    let len = doc.args["max-model-len"].as_u64().unwrap();
    assert!((8192..=32768).contains(&len), "{len}");
    // The KV space holds at least one max-model-len sequence (320 KiB per token, sharded by TP).
    let tp = u64::from(doc.parallelism.tensor);
    assert!(kv_space * tp * (1 << 30) >= len * 320 * 1024, "{kv_space} GiB for {len} tokens");
    // The request says what the process needs: weights + KV space of every rank + runtime.
    let memory = gib_of(&doc.resources.memory);
    assert!(memory >= 132 + kv_space * tp + 4, "{memory} GiB");
    assert!(memory <= 512, "{memory} GiB fits the node");
}

#[test]
fn an_8b_model_on_a_small_cpu_only_node_gets_a_working_cpu_profile() {
    let nodes = [cpu_node("laptop-ish", 1, 64, false)];
    let s = select(&request(LLAMA8B, Kpi::Latency), &[], &nodes, &[], &Engines::builtin());
    let chosen = s.selected.unwrap_or_else(|| panic!("{:?}", s.rejected));
    let doc = chosen.document.unwrap();
    doc.validate("generated").unwrap();
    assert_eq!(doc.name, "generated-vllm-cpu-cpu-x1-bf16");
    assert!(!doc.args.contains_key("gpu-memory-utilization"));
    let kv_space: u64 = doc.env["VLLM_CPU_KVCACHE_SPACE"].parse().unwrap();
    let memory = gib_of(&doc.resources.memory);
    assert!(memory >= 15 + kv_space + 4 && memory <= 64 * 9 / 10, "{memory} GiB with {kv_space} GiB KV");
    assert_eq!(doc.resources.cpu, "32", "one OpenMP thread per physical core of the NUMA node");
    let perf = doc.performance.unwrap();
    assert!(perf.ttft_ms_p50.unwrap() > 100.0, "a CPU prefill of 1024 tokens is not instant: {perf:?}");
}

#[test]
fn quantization_generates_fp8_where_the_device_runs_it_and_16_bits_elsewhere() {
    let req = request(LLAMA8B, Kpi::Quantization);
    let h100 = select(&req, &[], &offline(&[("h", "h100-sxm-80gb", 1)]), &[], &Engines::builtin());
    let doc = h100.selected.unwrap().document.unwrap();
    assert_eq!((doc.precision, doc.args.get("quantization")), (Precision::Fp8, Some(&serde_json::json!("fp8"))));
    let bf16 = h100.rejected.iter().find(|r| r.name.ends_with("-bf16")).unwrap();
    assert!(bf16.reason.contains("GiB"), "{}", bf16.reason);
    // A100 has no FP8 W8A8: its generated profile stays bf16.
    let a100 = select(&req, &[], &offline(&[("a", "a100-sxm-80gb", 1)]), &[], &Engines::builtin());
    assert_eq!(a100.selected.unwrap().profile.precision, Precision::Bf16);
}

#[test]
fn throughput_ranks_generated_profiles_by_estimated_tokens_per_device() {
    let nodes = offline(&[("l4", "l4", 8), ("h100", "h100-sxm-80gb", 8)]);
    let s = select(&request(LLAMA8B, Kpi::Throughput), &[], &nodes, &[], &Engines::builtin());
    let chosen = s.selected.unwrap();
    assert_eq!(chosen.profile.product, "h100-sxm-80gb");
    let l4 = s.rejected.iter().find(|r| r.name.contains("-l4-")).unwrap();
    assert!(l4.reason.contains("tok/s per device"), "{}", l4.reason);
    // Published profiles with measured figures still rank before any generated one.
    let published = profile(
        "vllm-nvidia-l4-x1-throughput-bf16",
        LLAMA8B,
        Kpi::Throughput,
        Vendor::Nvidia,
        "l4",
        1,
        None,
        Some(900.0),
    );
    let s = select(&request(LLAMA8B, Kpi::Throughput), &[published], &nodes, &[], &Engines::builtin());
    assert!(!s.selected.unwrap().generated);
}

#[test]
fn a_model_read_from_its_config_json_is_generated_like_a_built_in_one() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/Qwen/Qwen2.5-32B-Instruct");
    let arch = Arch::from_path("Qwen/Qwen2.5-32B-Instruct", &dir).unwrap();
    assert_eq!(arch.checkpoint.bytes, Some(65_527_752_704.0));
    let nodes = offline(&[("h100", "h100-sxm-80gb", 8)]);
    let req = request("Qwen/Qwen2.5-32B-Instruct", Kpi::Latency);
    assert!(select(&req, &[], &nodes, &[], &Engines::builtin()).selected.is_none(), "not built in");
    let s = select_with(&req, &[], &nodes, &[], &Engines::builtin(), Some(&arch));
    let chosen = s.selected.unwrap();
    assert_eq!(chosen.profile.tensor_parallelism, 1, "61 GiB of weights fit one H100 with 8k tokens of KV");
    assert!(chosen.reason.contains("Qwen2.5-32B-Instruct/config.json"), "{}", chosen.reason);
}

const LLAMA405B: &str = "meta-llama/Llama-3.1-405B-Instruct";

/// The published two-node 405B profile (tests/fixtures/profiles-405b).
fn two_node_405b() -> ProfileSummary {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/profiles-405b/h100-x8-n2.yaml");
    let p = Profile::parse(&std::fs::read(path).unwrap(), path).unwrap();
    ProfileSummary::of(&p, "sha256:405b".into(), path.into())
}

#[test]
fn a_profile_spanning_two_nodes_needs_two_nodes_with_all_devices_free_and_says_how_many_have() {
    let nodes = vec![live("h100-a", "h100-sxm-80gb", 8, 8), live("h100-b", "h100-sxm-80gb", 8, 8)];
    let req = Request { allow_generated: false, ..request(LLAMA405B, Kpi::Throughput) };
    let s = select(&req, &[two_node_405b()], &nodes, &[], &Engines::builtin());
    let chosen = s.selected.expect("two free 8x H100 nodes hold one group");
    assert_eq!((chosen.profile.count, chosen.profile.nodes, chosen.group.nodes.len()), (8, 2, 2));
    assert!(chosen.reason.contains("on 2 nodes of 8x nvidia h100-sxm-80gb"), "{}", chosen.reason);

    // Three GPUs of the second node are taken: one group needs two whole nodes, one has them.
    let busy = vec![pod("h100-b", 3, Some("team/other"))];
    let s = select(&req, &[two_node_405b()], &nodes, &busy, &Engines::builtin());
    assert!(s.selected.is_none());
    assert_eq!(
        s.rejected[0].reason,
        "InsufficientFreeAccelerators: needs 2 nodes with 8 free h100-sxm-80gb each; 1 has (free: 8 on h100-a, 5 on h100-b)"
    );
    // Two replicas are two groups: four nodes.
    let four = vec![live("h100-c", "h100-sxm-80gb", 8, 8), live("h100-d", "h100-sxm-80gb", 8, 8)];
    let all: Vec<NodeView> = nodes.iter().cloned().chain(four).collect();
    let two = Request { replicas: 2, ..req.clone() };
    assert!(select(&two, &[two_node_405b()], &all, &[], &Engines::builtin()).selected.is_some());
    let s = select(&two, &[two_node_405b()], &nodes, &[], &Engines::builtin());
    assert!(
        s.rejected[0].reason.contains("needs 2 nodes with 8 free h100-sxm-80gb each (4 nodes for 2 replicas); 2 have")
    );
}

#[test]
fn a_single_node_profile_that_fits_wins_over_a_faster_one_spanning_nodes() {
    let mut multi = two_node_405b();
    multi.throughput_tokens_per_sec = Some(99_999.0);
    let single = ProfileSummary {
        name: "vllm-amd-mi300x-x8-throughput-bf16".into(),
        vendor: Vendor::Amd,
        product: "mi300x".into(),
        count: 8,
        nodes: 1,
        tensor_parallelism: 8,
        pipeline_parallelism: 1,
        throughput_tokens_per_sec: Some(100.0),
        ..two_node_405b()
    };
    let nodes = vec![
        live("h100-a", "h100-sxm-80gb", 8, 8),
        live("h100-b", "h100-sxm-80gb", 8, 8),
        live("mi300x", "mi300x", 8, 8),
    ];
    let req = request(LLAMA405B, Kpi::Throughput);
    let s = select(&req, &[multi.clone(), single.clone()], &nodes, &[], &Engines::builtin());
    assert_eq!(s.selected.unwrap().profile.name, single.name);
    assert_eq!(s.rejected[0].reason, "feasible, but spans 2 nodes and vllm-amd-mi300x-x8-throughput-bf16 fits on one");
}

#[test]
fn without_the_leader_worker_set_api_a_profile_spanning_nodes_is_rejected_with_that_reason() {
    let nodes = vec![live("h100-a", "h100-sxm-80gb", 8, 8), live("h100-b", "h100-sxm-80gb", 8, 8)];
    let req = Request { lws_missing: true, ..request(LLAMA405B, Kpi::Throughput) };
    let s = select(&req, &[two_node_405b()], &nodes, &[], &Engines::builtin());
    assert!(s.selected.is_none());
    let published = s.rejected.iter().find(|r| r.name == two_node_405b().name).unwrap();
    assert!(published.reason.starts_with("LeaderWorkerSetMissing: spans 2 nodes"), "{}", published.reason);
    // Generation cannot fall back to a group either, and says so with the single-node numbers.
    let generated = s.rejected.iter().find(|r| r.name.starts_with("generated-")).unwrap();
    assert!(
        generated.reason.contains("LeaderWorkerSetMissing") && generated.reason.contains("one node:"),
        "{}",
        generated.reason
    );
}

#[test]
fn the_estimator_spans_two_h100_nodes_for_405b_in_bf16_and_one_mi300x_node_holds_it() {
    let req = request(LLAMA405B, Kpi::Throughput);
    let h100 = vec![live("h100-a", "h100-sxm-80gb", 8, 8), live("h100-b", "h100-sxm-80gb", 8, 8)];
    let s = select(&req, &[], &h100, &[], &Engines::builtin());
    let chosen = s.selected.expect("two 8x H100 nodes hold 405B in bf16");
    let doc = chosen.document.unwrap();
    assert_eq!(doc.name, "generated-vllm-nvidia-h100-sxm-80gb-x8-n2-bf16");
    assert_eq!((doc.accelerator.count, doc.nodes, doc.parallelism.tensor, doc.parallelism.pipeline), (8, 2, 8, 2));
    assert_eq!(doc.args["pipeline-parallel-size"], serde_json::json!(2));
    assert!(
        chosen.reason.contains("one node is not enough") && chosen.reason.contains("TP8 x PP2"),
        "{}",
        chosen.reason
    );

    // One H100 node: the group cannot be placed, and the reason says how many nodes are short.
    let s = select(&req, &[], &h100[..1], &[], &Engines::builtin());
    assert!(s.selected.is_none());
    assert!(
        s.rejected[0].reason.contains("needs 2 nodes with 8 free h100-sxm-80gb each; 1 has"),
        "{}",
        s.rejected[0].reason
    );

    // 8x 192 GB MI300X hold it on one node: no group.
    let s = select(&req, &[], &[live("mi300x", "mi300x", 8, 8)], &[], &Engines::builtin());
    let doc = s.selected.unwrap().document.unwrap();
    assert_eq!((doc.nodes, doc.accelerator.count, doc.parallelism.pipeline), (1, 8, 1));
}

#[test]
fn a_generated_single_node_profile_wins_over_a_published_one_spanning_nodes() {
    let nodes = vec![
        live("h100-a", "h100-sxm-80gb", 8, 8),
        live("h100-b", "h100-sxm-80gb", 8, 8),
        live("mi300x", "mi300x", 8, 8),
    ];
    let req = request(LLAMA405B, Kpi::Throughput);
    let s = select(&req, &[two_node_405b()], &nodes, &[], &Engines::builtin());
    let chosen = s.selected.unwrap();
    assert_eq!(chosen.profile.name, "generated-vllm-amd-mi300x-x8-bf16");
    assert!(chosen.reason.starts_with("no published profile fits on one node; generated"), "{}", chosen.reason);
    let published = s.rejected.iter().find(|r| r.name == two_node_405b().name).unwrap();
    assert!(published.reason.starts_with("feasible, but spans 2 nodes"), "{}", published.reason);
    // Without the MI300X node, the published group wins over a generated one.
    let s = select(&req, &[two_node_405b()], &nodes[..2], &[], &Engines::builtin());
    assert_eq!(s.selected.unwrap().profile.name, two_node_405b().name);
}
