//! What users care about in the rendered objects, per vendor and platform, from YAML fixtures.

use std::path::Path;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Container;

use super::*;
use crate::hardware::devices;
use crate::hardware::inventory::{AcceleratorGroup, Inventory};
use crate::profile::select::{NodeView, groups};

fn seed(rel: &str) -> Profile {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles").join(rel);
    Profile::parse(&std::fs::read(&path).unwrap(), rel).unwrap()
}

fn service(yaml: &str) -> OIMService {
    let mut svc: OIMService = serde_saphyr::from_str(yaml).unwrap();
    svc.metadata.namespace = Some("team-a".into());
    svc.metadata.uid = Some("0b6c5a4e-0000-4000-8000-000000000001".into());
    svc
}

const LLAMA8B_LATENCY: &str = "apiVersion: oim.opea.dev/v1alpha1\nkind: OIMService\nmetadata: {name: llama31-8b-latency}\nspec:\n  model: {name: meta-llama/Llama-3.1-8B-Instruct}\n  profile: {kpi: latency}\n  authSecret: hf-token\n";

fn group_of(slug: &str, count: u32) -> Group {
    let inv = Inventory {
        node: "n1".into(),
        accelerators: vec![AcceleratorGroup::of(devices::by_slug(slug).unwrap(), count)],
        ..Inventory::default()
    };
    groups(&[NodeView::offline(inv)], &[], &Default::default()).0.remove(0)
}

fn cpu_group() -> Group {
    let inv = crate::hardware::inventory::fixtures::sapphire_rapids("spr");
    groups(&[NodeView::offline(inv)], &[], &Default::default()).0.remove(0)
}

fn render_with(
    svc: &OIMService,
    profile: &Profile,
    group: &Group,
    weights: Weights,
    platform: Platform,
) -> Result<Rendered, RenderError> {
    let engines = Engines::builtin();
    render(&Input {
        service: svc,
        profile,
        digest: "sha256:abc",
        source: "test",
        selection: Default::default(),
        group,
        weights,
        platform,
        capabilities: Capabilities { routes: platform == Platform::Openshift, service_monitors: true, dra: true },
        engines: &engines,
        device_groups: vec![44, 110],
    })
}

fn engine(d: &Deployment) -> &Container {
    &d.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0]
}

fn qty<'a>(c: &'a Container, kind: &str, key: &str) -> Option<&'a str> {
    let r = c.resources.as_ref()?;
    let map = if kind == "requests" { r.requests.as_ref()? } else { r.limits.as_ref()? };
    map.get(key).map(|q| q.0.as_str())
}

#[test]
fn nvidia_h100_latency_requests_one_gpu_with_the_right_args_probes_and_security() {
    let svc = service(LLAMA8B_LATENCY);
    let profile = seed("llama-3.1-8b/vllm-nvidia-h100-sxm-80gb-x1-latency-bf16.yaml");
    let r = render_with(&svc, &profile, &group_of("h100-sxm-80gb", 8), Weights::Hub, Platform::Kubernetes).unwrap();
    let d = &r.deployment;
    let c = engine(d);
    assert_eq!(qty(c, "requests", "nvidia.com/gpu"), Some("1"));
    assert_eq!(qty(c, "limits", "nvidia.com/gpu"), Some("1"));
    assert_eq!(qty(c, "requests", "memory"), Some("18Gi"), "16Gi engine + 2Gi /dev/shm");
    assert_eq!(qty(c, "limits", "memory"), qty(c, "requests", "memory"));
    assert!(qty(c, "requests", "ephemeral-storage").is_some(), "weights download to local disk");
    let args = c.args.as_ref().unwrap();
    assert_eq!(
        args[..5],
        [
            "meta-llama/Llama-3.1-8B-Instruct",
            "--served-model-name",
            "meta-llama/Llama-3.1-8B-Instruct",
            "--port",
            "8000"
        ]
    );
    assert!(args.windows(2).any(|w| w == ["--max-model-len", "16384"]));
    assert_eq!(c.command.as_deref(), Some(&["vllm".to_string(), "serve".to_string()][..]));
    let pod = d.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    assert_eq!(pod.node_selector.as_ref().unwrap()["oim.opea.dev/accelerator.product"], "h100-sxm-80gb");
    assert!(
        pod.tolerations
            .as_ref()
            .unwrap()
            .iter()
            .any(|t| t.key.as_deref() == Some("nvidia.com/gpu") && t.effect.as_deref() == Some("NoSchedule"))
    );
    assert_eq!(pod.enable_service_links, Some(false));
    let sc = pod.security_context.as_ref().unwrap();
    assert_eq!((sc.run_as_non_root, sc.run_as_user, sc.run_as_group), (Some(true), Some(2000), Some(0)));
    let csc = c.security_context.as_ref().unwrap();
    assert_eq!(csc.allow_privilege_escalation, Some(false));
    assert_eq!(csc.capabilities.as_ref().unwrap().drop.as_deref(), Some(&["ALL".to_string()][..]));
    let startup = c.startup_probe.as_ref().unwrap();
    assert_eq!((startup.period_seconds, startup.failure_threshold), (Some(10), Some(360)));
    let live = c.liveness_probe.as_ref().unwrap();
    assert_eq!((live.period_seconds, live.timeout_seconds, live.failure_threshold), (Some(15), Some(10), Some(4)));
    let token = c.env.as_ref().unwrap().iter().find(|e| e.name == "HF_TOKEN").unwrap();
    assert!(token.value.is_none() && token.value_from.is_some(), "the token comes from the Secret, never inline");
    let strategy = d.spec.as_ref().unwrap().strategy.as_ref().unwrap().rolling_update.as_ref().unwrap();
    assert_eq!(strategy.max_surge, Some(IntOrString::Int(0)));
    assert_eq!(d.spec.as_ref().unwrap().replicas, Some(1));
    assert_eq!(r.deployment.metadata.owner_references.as_ref().unwrap()[0].kind, "OIMService");
    let stored = crate::controller::service::dereference::Stored::parse(&r.deployment).expect("a stored selection");
    assert_eq!(stored.profile, profile, "the Deployment carries the chosen document for the next reconcile");
    let pod = d.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    assert_eq!(pod.service_account_name, None, "no ServiceAccount per service");
    assert_eq!(pod.automount_service_account_token, Some(false), "and no token mounted");
}

#[test]
fn amd_mi300x_requests_amd_gpus_and_gets_the_device_groups() {
    let svc = service(&LLAMA8B_LATENCY.replace("latency}", "throughput}"));
    let profile = seed("llama-3.1-8b/vllm-amd-mi300x-x1-throughput-fp8.yaml");
    let r = render_with(&svc, &profile, &group_of("mi300x", 8), Weights::Hub, Platform::Kubernetes).unwrap();
    let c = engine(&r.deployment);
    assert_eq!(qty(c, "limits", "amd.com/gpu"), Some("1"));
    assert_eq!(c.args.as_ref().unwrap()[0], "neuralmagic/Meta-Llama-3.1-8B-Instruct-FP8", "the FP8 weights are loaded");
    let pod = r.deployment.spec.as_ref().unwrap().template.spec.clone().unwrap();
    assert_eq!(pod.security_context.unwrap().supplemental_groups, Some(vec![44, 110]));
    assert!(c.env.as_ref().unwrap().iter().any(|e| e.name == "VLLM_ROCM_USE_AITER"));
}

#[test]
fn gaudi_requests_cards_and_hugepages_and_adds_sys_nice() {
    let svc = service(LLAMA8B_LATENCY);
    let profile = seed("llama-3.1-70b/vllm-habana-gaudi2-x2-latency-bf16.yaml");
    let svc =
        service(&serde_saphyr::to_string(&svc).unwrap().replace("Llama-3.1-8B-Instruct", "Llama-3.1-70B-Instruct"));
    let r = render_with(&svc, &profile, &group_of("gaudi2", 8), Weights::Hub, Platform::Kubernetes).unwrap();
    let c = engine(&r.deployment);
    assert_eq!(qty(c, "requests", "habana.ai/gaudi"), Some("2"));
    assert_eq!(qty(c, "limits", "hugepages-2Mi"), Some("9800Mi"));
    assert!(c.args.as_ref().unwrap().windows(2).any(|w| w == ["--tensor-parallel-size", "2"]));
    assert_eq!(
        c.security_context.as_ref().unwrap().capabilities.as_ref().unwrap().add.as_deref(),
        Some(&["SYS_NICE".to_string()][..])
    );
}

#[test]
fn intel_max_requests_the_i915_resource() {
    let svc = service(LLAMA8B_LATENCY);
    let profile = seed("llama-3.1-8b/vllm-intel-max-1550-x1-latency-bf16.yaml");
    let r = render_with(&svc, &profile, &group_of("max-1550", 4), Weights::Hub, Platform::Kubernetes).unwrap();
    assert_eq!(qty(engine(&r.deployment), "limits", "gpu.intel.com/i915"), Some("1"));
}

#[test]
fn cpu_profiles_get_guaranteed_cpu_and_avoid_accelerator_nodes() {
    let svc = service(&LLAMA8B_LATENCY.replace("latency}", "throughput}"));
    let profile = seed("llama-3.1-8b/vllm-cpu-any-x1-throughput-bf16.yaml");
    let r = render_with(&svc, &profile, &cpu_group(), Weights::Hub, Platform::Kubernetes).unwrap();
    let c = engine(&r.deployment);
    assert_eq!(qty(c, "limits", "cpu"), qty(c, "requests", "cpu"));
    let pod = r.deployment.spec.as_ref().unwrap().template.spec.clone().unwrap();
    assert!(
        pod.node_selector.is_none()
            || !pod.node_selector.as_ref().unwrap().contains_key("oim.opea.dev/accelerator.product")
    );
    let terms = pod
        .affinity
        .unwrap()
        .node_affinity
        .unwrap()
        .required_during_scheduling_ignored_during_execution
        .unwrap()
        .node_selector_terms;
    let exprs = terms[0].match_expressions.as_ref().unwrap();
    assert!(exprs.iter().any(|e| e.key == "oim.opea.dev/accelerator.vendor" && e.operator == "DoesNotExist"));
    assert!(exprs.iter().any(|e| e.key == "oim.opea.dev/cpu.avx512"));
}

#[test]
fn openshift_leaves_user_ids_to_the_scc_and_renders_a_route() {
    let svc =
        service(&format!("{LLAMA8B_LATENCY}  expose: {{route: {{enabled: true, host: llama.apps.example.com}}}}\n"));
    let profile = seed("llama-3.1-8b/vllm-nvidia-h100-sxm-80gb-x1-latency-bf16.yaml");
    let r = render_with(&svc, &profile, &group_of("h100-sxm-80gb", 8), Weights::Hub, Platform::Openshift).unwrap();
    let sc = r.deployment.spec.as_ref().unwrap().template.spec.as_ref().unwrap().security_context.clone().unwrap();
    assert_eq!((sc.run_as_user, sc.run_as_group, sc.run_as_non_root), (None, None, Some(true)));
    let route = r.route.unwrap();
    assert_eq!(route.data["spec"]["host"], "llama.apps.example.com");
    // On Kubernetes without the Route API the route is skipped cleanly.
    let k = render_with(&svc, &profile, &group_of("h100-sxm-80gb", 8), Weights::Hub, Platform::Kubernetes).unwrap();
    assert!(k.route.is_none());
    // Likewise a ServiceMonitor without its API.
    let metrics = service(&format!("{LLAMA8B_LATENCY}  metrics: {{enabled: true}}\n"));
    let engines = Engines::builtin();
    let group = group_of("h100-sxm-80gb", 8);
    let input = |service_monitors| Input {
        service: &metrics,
        profile: &profile,
        digest: "sha256:abc",
        source: "test",
        selection: Default::default(),
        group: &group,
        weights: Weights::Hub,
        platform: Platform::Kubernetes,
        capabilities: Capabilities { routes: false, service_monitors, dra: false },
        engines: &engines,
        device_groups: vec![],
    };
    assert!(render(&input(false)).unwrap().service_monitor.is_none());
    assert!(render(&input(true)).unwrap().service_monitor.is_some());
}

#[test]
fn an_accelerator_override_that_contradicts_the_profile_is_invalid_resources() {
    let svc = service(&format!("{LLAMA8B_LATENCY}  resources: {{limits: {{nvidia.com/gpu: \"2\", memory: 40Gi}}}}\n"));
    let profile = seed("llama-3.1-8b/vllm-nvidia-h100-sxm-80gb-x1-latency-bf16.yaml");
    let err =
        render_with(&svc, &profile, &group_of("h100-sxm-80gb", 8), Weights::Hub, Platform::Kubernetes).unwrap_err();
    assert!(matches!(err, RenderError::InvalidResources { needed: 1, .. }), "{err}");
    // Other keys are the user's to set.
    let svc = service(&format!("{LLAMA8B_LATENCY}  resources: {{limits: {{memory: 40Gi}}}}\n"));
    let r = render_with(&svc, &profile, &group_of("h100-sxm-80gb", 8), Weights::Hub, Platform::Kubernetes).unwrap();
    assert_eq!(qty(engine(&r.deployment), "limits", "memory"), Some("40Gi"));
}

#[test]
fn a_created_pvc_has_no_owner_and_keeps_its_retention_policy() {
    let svc = service(&format!(
        "{LLAMA8B_LATENCY}  storage: {{pvc: {{create: true, size: 100Gi, storageClass: standard}}}}\n"
    ));
    let profile = seed("llama-3.1-8b/vllm-nvidia-h100-sxm-80gb-x1-latency-bf16.yaml");
    let r = render_with(&svc, &profile, &group_of("h100-sxm-80gb", 8), Weights::Hub, Platform::Kubernetes).unwrap();
    let pvc = r.pvc.unwrap();
    assert!(pvc.metadata.owner_references.is_none(), "deleting the service must never delete the weights");
    assert_eq!(pvc.metadata.annotations.unwrap()[RETENTION_ANNOTATION], "Retain");
    assert_eq!(pvc.metadata.name.as_deref(), Some("llama31-8b-latency-weights"));
    let c = engine(&r.deployment);
    assert!(qty(c, "requests", "ephemeral-storage").is_none(), "weights go to the PVC");
    // retentionPolicy: Delete makes the service own its PVC, so it goes with the service.
    let svc = service(&format!(
        "{LLAMA8B_LATENCY}  storage: {{pvc: {{create: true, size: 100Gi, retentionPolicy: Delete}}}}\n"
    ));
    let r = render_with(&svc, &profile, &group_of("h100-sxm-80gb", 8), Weights::Hub, Platform::Kubernetes).unwrap();
    let pvc = r.pvc.unwrap();
    assert_eq!(pvc.metadata.owner_references.unwrap()[0].kind, "OIMService");
    assert_eq!(pvc.metadata.annotations.unwrap()[RETENTION_ANNOTATION], "Delete");
}

#[test]
fn serving_from_a_cache_mounts_it_read_only_and_runs_offline() {
    let svc = service(&format!("{LLAMA8B_LATENCY}  storage: {{oimCache: {{name: llama31-8b}}}}\n"));
    let profile = seed("llama-3.1-8b/vllm-nvidia-h100-sxm-80gb-x1-latency-bf16.yaml");
    let weights =
        Weights::Cache { pvc: "llama31-8b-weights".into(), path: "/meta-llama/Llama-3.1-8B-Instruct/0e9e39f2".into() };
    let r = render_with(&svc, &profile, &group_of("h100-sxm-80gb", 8), weights, Platform::Kubernetes).unwrap();
    let c = engine(&r.deployment);
    assert_eq!(c.args.as_ref().unwrap()[0], "/models/meta-llama/Llama-3.1-8B-Instruct/0e9e39f2");
    assert!(!c.args.as_ref().unwrap().contains(&"--revision".to_string()));
    assert!(c.env.as_ref().unwrap().iter().any(|e| e.name == "HF_HUB_OFFLINE" && e.value.as_deref() == Some("1")));
    let m = c.volume_mounts.as_ref().unwrap().iter().find(|m| m.mount_path == "/models").unwrap();
    assert_eq!(m.read_only, Some(true));
    assert_eq!(c.startup_probe.as_ref().unwrap().failure_threshold, Some(180));
}

#[test]
fn autoscaling_hands_replicas_to_the_hpa_and_user_settings_merge() {
    let yaml = format!(
        "{LLAMA8B_LATENCY}  scale: {{enabled: true, hpa: {{minReplicas: 2, maxReplicas: 4}}}}\n  nodeSelector: {{team: ml, oim.opea.dev/accelerator.product: l4}}\n  env: [{{name: VLLM_NO_USAGE_STATS, value: \"0\"}}]\n  args: [--max-num-seqs, \"8\"]\n"
    );
    let svc = service(&yaml);
    let profile = seed("llama-3.1-8b/vllm-nvidia-h100-sxm-80gb-x1-latency-bf16.yaml");
    let r = render_with(&svc, &profile, &group_of("h100-sxm-80gb", 8), Weights::Hub, Platform::Kubernetes).unwrap();
    assert_eq!(r.deployment.spec.as_ref().unwrap().replicas, None);
    let hpa = r.hpa.unwrap().spec.unwrap();
    assert_eq!((hpa.min_replicas, hpa.max_replicas), (Some(2), 4));
    let pod = r.deployment.spec.as_ref().unwrap().template.spec.clone().unwrap();
    let selector = pod.node_selector.unwrap();
    assert_eq!(selector["team"], "ml");
    assert_eq!(selector["oim.opea.dev/accelerator.product"], "h100-sxm-80gb", "placement wins on its own key");
    let c = &pod.containers[0];
    assert!(
        c.env.as_ref().unwrap().iter().any(|e| e.name == "VLLM_NO_USAGE_STATS" && e.value.as_deref() == Some("0")),
        "user env wins"
    );
    assert_eq!(
        c.args.as_ref().unwrap()[c.args.as_ref().unwrap().len() - 2..],
        ["--max-num-seqs", "8"],
        "user args come last"
    );
}
