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
        capabilities: Capabilities::offline(platform),
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
    let d = r.deployment.as_ref().unwrap();
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
    assert_eq!(r.deployment.as_ref().unwrap().metadata.owner_references.as_ref().unwrap()[0].kind, "OIMService");
    let stored = crate::controller::service::dereference::Stored::parse(&r.deployment.as_ref().unwrap().metadata)
        .expect("a stored selection");
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
    let c = engine(r.deployment.as_ref().unwrap());
    assert_eq!(qty(c, "limits", "amd.com/gpu"), Some("1"));
    assert_eq!(c.args.as_ref().unwrap()[0], "neuralmagic/Meta-Llama-3.1-8B-Instruct-FP8", "the FP8 weights are loaded");
    let pod = r.deployment.as_ref().unwrap().spec.as_ref().unwrap().template.spec.clone().unwrap();
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
    let c = engine(r.deployment.as_ref().unwrap());
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
    assert_eq!(qty(engine(r.deployment.as_ref().unwrap()), "limits", "gpu.intel.com/i915"), Some("1"));
}

#[test]
fn cpu_profiles_get_guaranteed_cpu_and_avoid_accelerator_nodes() {
    let svc = service(&LLAMA8B_LATENCY.replace("latency}", "throughput}"));
    let profile = seed("llama-3.1-8b/vllm-cpu-any-x1-throughput-bf16.yaml");
    let r = render_with(&svc, &profile, &cpu_group(), Weights::Hub, Platform::Kubernetes).unwrap();
    let c = engine(r.deployment.as_ref().unwrap());
    assert_eq!(qty(c, "limits", "cpu"), qty(c, "requests", "cpu"));
    let pod = r.deployment.as_ref().unwrap().spec.as_ref().unwrap().template.spec.clone().unwrap();
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
    let sc = r
        .deployment
        .as_ref()
        .unwrap()
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .security_context
        .clone()
        .unwrap();
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
        capabilities: Capabilities { service_monitors, ..Default::default() },
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
    assert_eq!(qty(engine(r.deployment.as_ref().unwrap()), "limits", "memory"), Some("40Gi"));
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
    let c = engine(r.deployment.as_ref().unwrap());
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
    let c = engine(r.deployment.as_ref().unwrap());
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
    assert_eq!(r.deployment.as_ref().unwrap().spec.as_ref().unwrap().replicas, None);
    let hpa = r.hpa.unwrap().spec.unwrap();
    assert_eq!((hpa.min_replicas, hpa.max_replicas), (Some(2), 4));
    let pod = r.deployment.as_ref().unwrap().spec.as_ref().unwrap().template.spec.clone().unwrap();
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

fn rendered(extra: &str) -> Rendered {
    let svc = service(&format!("{LLAMA8B_LATENCY}{extra}"));
    let profile = seed("llama-3.1-8b/vllm-nvidia-h100-sxm-80gb-x1-latency-bf16.yaml");
    render_with(&svc, &profile, &group_of("h100-sxm-80gb", 8), Weights::Hub, Platform::Kubernetes).unwrap()
}

fn kinds(r: &Rendered) -> Vec<String> {
    r.objects().iter().map(|o| o["kind"].as_str().unwrap().to_string()).collect()
}

#[test]
fn router_gateway_renders_an_http_route_for_the_nim_host_to_the_service() {
    let r = rendered(
        "  expose:\n    service: {port: 9000}\n    router:\n      hostDomainName: example.com\n      annotations: {gateway.example/tier: gold}\n      gateway: {namespace: gateways, name: inference}\n",
    );
    let route = r.http_route.as_ref().expect("an HTTPRoute");
    assert_eq!(route.types.as_ref().unwrap().api_version, "gateway.networking.k8s.io/v1");
    let spec = &route.data["spec"];
    assert_eq!(spec["hostnames"], serde_json::json!(["llama31-8b-latency.team-a.example.com"]));
    assert_eq!(spec["parentRefs"][0]["namespace"], "gateways");
    assert_eq!(spec["parentRefs"][0]["name"], "inference");
    let backend = &spec["rules"][0]["backendRefs"][0];
    assert_eq!((backend["kind"].as_str(), backend["name"].as_str()), (Some("Service"), Some("llama31-8b-latency")));
    assert_eq!(backend["port"], 9000, "the Service port, not the container's");
    assert_eq!(route.metadata.annotations.as_ref().unwrap()["gateway.example/tier"], "gold");
    assert_eq!(route.metadata.owner_references.as_ref().unwrap()[0].kind, "OIMService");
    assert!(r.ingress.is_none() && r.inference_pool.is_none());
    assert!(kinds(&r).contains(&"HTTPRoute".to_string()));
    // httpRoutesEnabled: false renders none, like NIM.
    let off = rendered(
        "  expose:\n    router:\n      hostDomainName: example.com\n      gateway: {namespace: gateways, name: inference, httpRoutesEnabled: false}\n",
    );
    assert!(off.http_route.is_none());
}

#[test]
fn an_inference_pool_selects_the_service_pods_and_the_route_sends_traffic_to_it() {
    let r = rendered(
        "  expose:\n    router:\n      hostDomainName: example.com\n      gateway: {namespace: gateways, name: inference}\n      inferencePool:\n        endpointPickerRef: {name: vllm-epp, failureMode: FailOpen}\n",
    );
    let pool = r.inference_pool.as_ref().expect("an InferencePool");
    assert_eq!(pool.types.as_ref().unwrap().api_version, "inference.networking.k8s.io/v1");
    let pod_labels = r
        .deployment
        .as_ref()
        .unwrap()
        .spec
        .as_ref()
        .unwrap()
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .clone()
        .unwrap();
    for (k, v) in pool.data["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(pod_labels.get(k).map(String::as_str), v.as_str(), "the pool selects the engine pods by {k}");
    }
    assert_eq!(pool.data["spec"]["targetPorts"], serde_json::json!([{"number": 8000}]));
    let epp = &pool.data["spec"]["endpointPickerRef"];
    assert_eq!((epp["name"].as_str(), epp["port"]["number"].as_i64()), (Some("vllm-epp"), Some(9002)));
    assert_eq!(epp["failureMode"], "FailOpen");
    let backend = &r.http_route.as_ref().unwrap().data["spec"]["rules"][0]["backendRefs"][0];
    assert_eq!(backend["group"], "inference.networking.k8s.io");
    assert_eq!(
        (backend["kind"].as_str(), backend["name"].as_str()),
        (Some("InferencePool"), Some("llama31-8b-latency"))
    );
}

#[test]
fn without_the_gateway_apis_no_route_or_pool_is_rendered_and_the_service_is_told_why() {
    let svc = service(&format!(
        "{LLAMA8B_LATENCY}  expose:\n    router:\n      hostDomainName: example.com\n      gateway: {{namespace: gw, name: inference}}\n      inferencePool:\n        endpointPickerRef: {{name: epp}}\n"
    ));
    let profile = seed("llama-3.1-8b/vllm-nvidia-h100-sxm-80gb-x1-latency-bf16.yaml");
    let engines = Engines::builtin();
    let group = group_of("h100-sxm-80gb", 8);
    let input = |capabilities| Input {
        service: &svc,
        profile: &profile,
        digest: "sha256:abc",
        source: "test",
        selection: Default::default(),
        group: &group,
        weights: Weights::Hub,
        platform: Platform::Kubernetes,
        capabilities,
        engines: &engines,
        device_groups: vec![],
    };
    let none = render(&input(Capabilities::default())).unwrap();
    assert!(none.http_route.is_none() && none.inference_pool.is_none());
    let why = crate::render::routing::missing_router_api(&svc, &Capabilities::default()).expect("a reason");
    assert!(why.starts_with("spec.expose.router.gateway: the Gateway API"), "{why}");
    assert!(why.contains("install the Gateway API CRDs and restart the operator"), "{why}");
    // Gateway API without the Inference Extension: the route goes to the Service.
    let gateway_only = Capabilities { gateway: true, ..Default::default() };
    let why = crate::render::routing::missing_router_api(&svc, &gateway_only).expect("a reason");
    assert!(why.starts_with("spec.expose.router.inferencePool: the Gateway API Inference Extension"), "{why}");
    let gateway_only = render(&input(gateway_only)).unwrap();
    assert!(gateway_only.inference_pool.is_none());
    assert_eq!(gateway_only.http_route.unwrap().data["spec"]["rules"][0]["backendRefs"][0]["kind"], "Service");
    let both = Capabilities { gateway: true, inference_pools: true, ..Default::default() };
    assert_eq!(crate::render::routing::missing_router_api(&svc, &both), None, "everything asked for is rendered");
}

#[test]
fn router_ingress_renders_the_nim_host_with_class_and_tls() {
    let r = rendered(
        "  expose:\n    router:\n      hostDomainName: apps.example.com\n      annotations: {nginx.ingress.kubernetes.io/proxy-read-timeout: \"600\"}\n      ingress: {ingressClass: nginx, tlsSecretName: llama-tls}\n",
    );
    let ing = r.ingress.as_ref().expect("an Ingress");
    let spec = ing.spec.as_ref().unwrap();
    assert_eq!(spec.ingress_class_name.as_deref(), Some("nginx"));
    let host = "llama31-8b-latency.team-a.apps.example.com";
    assert_eq!(spec.rules.as_ref().unwrap()[0].host.as_deref(), Some(host));
    let tls = &spec.tls.as_ref().unwrap()[0];
    assert_eq!((tls.hosts.as_ref().unwrap()[0].as_str(), tls.secret_name.as_deref()), (host, Some("llama-tls")));
    assert_eq!(ing.metadata.annotations.as_ref().unwrap()["nginx.ingress.kubernetes.io/proxy-read-timeout"], "600");
    assert!(r.http_route.is_none());
}

#[test]
fn kserve_renders_an_inference_service_with_the_same_container_instead_of_the_deployment() {
    let r = rendered(
        "  inferencePlatform: kserve\n  replicas: 2\n  runtimeClassName: nvidia\n  expose:\n    router:\n      hostDomainName: example.com\n      gateway: {namespace: gw, name: inference}\n",
    );
    let k = kinds(&r);
    assert!(k.contains(&"InferenceService".to_string()), "{k:?}");
    for absent in ["Deployment", "Service", "HorizontalPodAutoscaler"] {
        assert!(!k.contains(&absent.to_string()), "KServe makes the {absent}: {k:?}");
    }
    let isvc = r.inference_service.as_ref().unwrap();
    assert_eq!(isvc.types.as_ref().unwrap().api_version, "serving.kserve.io/v1beta1");
    let annotations = isvc.metadata.annotations.as_ref().unwrap();
    assert_eq!(annotations["serving.kserve.io/deploymentMode"], "RawDeployment");
    assert_eq!(annotations["serving.kserve.io/autoscalerClass"], "none", "fixed replicas: no HPA");
    for stored in [PROFILE_ANNOTATION, DIGEST_ANNOTATION, SELECTION_KEY] {
        assert!(annotations.contains_key(stored), "the stored selection rides on the InferenceService: {stored}");
    }
    let predictor = &isvc.data["spec"]["predictor"];
    assert_eq!((predictor["minReplicas"].as_i64(), predictor["maxReplicas"].as_i64()), (Some(2), Some(2)));
    assert_eq!(predictor["runtimeClassName"], "nvidia");
    assert_eq!(predictor["deploymentStrategy"]["rollingUpdate"]["maxSurge"], 0);
    // The container is the Deployment's, under the name KServe looks for.
    let mut expected = serde_json::to_value(engine(r.deployment.as_ref().unwrap())).unwrap();
    expected["name"] = "kserve-container".into();
    assert_eq!(predictor["containers"][0], expected, "image, args, env, exact resources, probes and security");
    assert_eq!(predictor["containers"][0]["resources"]["limits"]["nvidia.com/gpu"], "1");
    let pod =
        serde_json::to_value(r.deployment.as_ref().unwrap().spec.as_ref().unwrap().template.spec.as_ref().unwrap())
            .unwrap();
    for field in ["volumes", "nodeSelector", "tolerations", "securityContext", "serviceAccountName"] {
        assert_eq!(predictor[field], pod[field], "{field}");
    }
    // Routes go to KServe's predictor Service.
    let backend = &r.http_route.as_ref().unwrap().data["spec"]["rules"][0]["backendRefs"][0];
    assert_eq!((backend["name"].as_str(), backend["port"].as_i64()), (Some("llama31-8b-latency-predictor"), Some(80)));
}

#[test]
fn kserve_autoscaling_carries_bounds_behavior_and_resource_metrics_and_refuses_the_rest() {
    let scaled = rendered(
        "  inferencePlatform: kserve\n  scale:\n    enabled: true\n    hpa:\n      minReplicas: 1\n      maxReplicas: 3\n      metrics: [{type: Resource, resource: {name: cpu, target: {type: Utilization, averageUtilization: 80}}}]\n      behavior: {scaleDown: {stabilizationWindowSeconds: 600}}\n",
    );
    let isvc = scaled.inference_service.unwrap();
    assert_eq!(isvc.metadata.annotations.as_ref().unwrap()["serving.kserve.io/autoscalerClass"], "hpa");
    let p = &isvc.data["spec"]["predictor"];
    assert_eq!((p["minReplicas"].as_i64(), p["maxReplicas"].as_i64()), (Some(1), Some(3)));
    assert_eq!(p["autoScaling"]["metrics"][0]["resource"]["target"]["averageUtilization"], 80);
    assert_eq!(p["autoScaling"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"], 600);
    let svc = service(&format!(
        "{LLAMA8B_LATENCY}  inferencePlatform: kserve\n  scale:\n    enabled: true\n    hpa:\n      maxReplicas: 3\n      metrics: [{{type: Object, object: {{metric: {{name: gpu_cache_usage_perc}}, describedObject: {{kind: Service, name: llm, apiVersion: v1}}, target: {{type: Value, value: \"1\"}}}}}}]\n"
    ));
    let profile = seed("llama-3.1-8b/vllm-nvidia-h100-sxm-80gb-x1-latency-bf16.yaml");
    let err =
        render_with(&svc, &profile, &group_of("h100-sxm-80gb", 8), Weights::Hub, Platform::Kubernetes).unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with("spec.scale.hpa.metrics[0]: type Object") && text.contains("standalone"), "{text}");
}

const LLAMA405B: &str = "apiVersion: oim.opea.dev/v1alpha1\nkind: OIMService\nmetadata: {name: llama31-405b}\nspec:\n  model: {name: meta-llama/Llama-3.1-405B-Instruct}\n  authSecret: hf-token\n  replicas: 1\n";

fn fixture(rel: &str) -> Profile {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(rel);
    Profile::parse(&std::fs::read(&path).unwrap(), rel).unwrap()
}

#[test]
fn a_profile_spanning_two_nodes_renders_a_leader_worker_set_with_the_same_pod_rules_and_a_service_on_the_leader() {
    let svc = service(LLAMA405B);
    let profile = fixture("profiles-405b/h100-x8-n2.yaml");
    let r = render_with(&svc, &profile, &group_of("h100-sxm-80gb", 8), Weights::Hub, Platform::Kubernetes).unwrap();
    assert!(r.deployment.is_none(), "a group is not a Deployment");
    let lws = r.leader_worker_set.as_ref().expect("a LeaderWorkerSet");
    let v = serde_json::to_value(lws).unwrap();
    assert_eq!(
        (v["apiVersion"].as_str(), v["kind"].as_str()),
        (Some("leaderworkerset.x-k8s.io/v1"), Some("LeaderWorkerSet"))
    );
    assert_eq!(v["metadata"]["ownerReferences"][0]["kind"], "OIMService");
    let spec = &v["spec"];
    assert_eq!((spec["replicas"].as_i64(), spec["leaderWorkerTemplate"]["size"].as_i64()), (Some(1), Some(2)));
    assert_eq!(spec["leaderWorkerTemplate"]["restartPolicy"], "RecreateGroupOnPodRestart");
    assert_eq!(
        spec["rolloutStrategy"]["rollingUpdateConfiguration"],
        serde_json::json!({"maxSurge": 0, "maxUnavailable": 1})
    );
    let pod = |role: &str| -> k8s_openapi::api::core::v1::PodTemplateSpec {
        serde_json::from_value(spec["leaderWorkerTemplate"][format!("{role}Template")].clone()).unwrap()
    };
    let (leader, worker) = (pod("leader"), pod("worker"));
    for (t, role) in [(&leader, "leader"), (&worker, "worker")] {
        let p = t.spec.as_ref().unwrap();
        let c = &p.containers[0];
        // Every pod: 8 GPUs request = limit, memory = 128Gi + 16Gi shm, the shm tmpfs, non-root.
        assert_eq!((qty(c, "requests", "nvidia.com/gpu"), qty(c, "limits", "nvidia.com/gpu")), (Some("8"), Some("8")));
        assert_eq!(qty(c, "limits", "memory"), Some("144Gi"));
        let shm = p.volumes.as_ref().unwrap().iter().find(|v| v.name == "shm").unwrap();
        assert_eq!(shm.empty_dir.as_ref().unwrap().size_limit.as_ref().unwrap().0, "16Gi");
        assert_eq!(p.security_context.as_ref().unwrap().run_as_non_root, Some(true));
        assert_eq!(c.security_context.as_ref().unwrap().allow_privilege_escalation, Some(false));
        assert_eq!(p.node_selector.as_ref().unwrap()["oim.opea.dev/accelerator.product"], "h100-sxm-80gb");
        assert_eq!(t.metadata.as_ref().unwrap().labels.as_ref().unwrap()[ROLE_LABEL], role);
    }
    // The leader starts the Ray head, waits for both nodes, then serves with TP 8 x PP 2 over Ray.
    let lc = &leader.spec.as_ref().unwrap().containers[0];
    let command = lc.command.as_ref().unwrap();
    assert_eq!(&command[..2], ["/bin/sh", "-c"]);
    assert!(
        command[2].contains("ray start --head --port=6379")
            && command[2].contains("= 2 ]")
            && command[2].ends_with("exec \"$@\"")
    );
    let args = lc.args.as_ref().unwrap().join(" ");
    assert!(args.starts_with("vllm serve meta-llama/Llama-3.1-405B-Instruct --served-model-name"), "{args}");
    for flag in ["--tensor-parallel-size 8", "--pipeline-parallel-size 2", "--distributed-executor-backend ray"] {
        assert!(args.contains(flag), "{flag} in {args}");
    }
    assert!(lc.readiness_probe.is_some() && lc.startup_probe.is_some() && lc.liveness_probe.is_some());
    // Workers join the leader's Ray head and carry no probes and no port.
    let wc = &worker.spec.as_ref().unwrap().containers[0];
    assert!(wc.command.as_ref().unwrap()[2].contains("ray start --address=\"$LWS_LEADER_ADDRESS:6379\" --block"));
    assert!(
        wc.readiness_probe.is_none() && wc.startup_probe.is_none() && wc.liveness_probe.is_none() && wc.ports.is_none()
    );
    // The Service reaches the leader only.
    let selector = r.service.spec.as_ref().unwrap().selector.clone().unwrap();
    assert_eq!(selector.get(ROLE_LABEL).map(String::as_str), Some("leader"));
    assert_eq!(r.engine_resources().unwrap().limits.unwrap()["nvidia.com/gpu"].0, "8");
    assert_eq!(accelerator_string(&profile, &group_of("h100-sxm-80gb", 8)), "2 nodes x 8x h100-sxm-80gb");
}

#[test]
fn autoscaling_a_group_targets_the_leader_worker_set_and_leaves_replicas_to_the_autoscaler() {
    let mut svc = service(LLAMA405B);
    svc.spec.replicas = None;
    svc.spec.scale = Some(
        serde_json::from_value(serde_json::json!({"enabled": true, "hpa": {"minReplicas": 1, "maxReplicas": 2}}))
            .unwrap(),
    );
    let profile = fixture("profiles-405b/h100-x8-n2.yaml");
    let r = render_with(&svc, &profile, &group_of("h100-sxm-80gb", 8), Weights::Hub, Platform::Kubernetes).unwrap();
    let target = r.hpa.unwrap().spec.unwrap().scale_target_ref;
    assert_eq!(
        (target.kind.as_str(), target.api_version.as_deref()),
        ("LeaderWorkerSet", Some("leaderworkerset.x-k8s.io/v1"))
    );
    assert!(r.leader_worker_set.unwrap().data["spec"].get("replicas").is_none());
}

#[test]
fn a_read_write_once_pvc_of_a_service_spanning_nodes_is_reported() {
    let mut svc = service(LLAMA405B);
    assert_eq!(pvc_shared_by_group(&svc, 2), None, "no PVC: each pod downloads");
    svc.spec.storage =
        Some(serde_json::from_value(serde_json::json!({"pvc": {"create": true, "size": "1Ti"}})).unwrap());
    assert_eq!(pvc_shared_by_group(&svc, 1), None, "one node mounts it");
    let why = pvc_shared_by_group(&svc, 2).unwrap();
    assert!(why.starts_with("PVC llama31-405b-weights is ReadWriteOnce but each replica spans 2 nodes"), "{why}");
    svc.spec.storage = Some(
        serde_json::from_value(
            serde_json::json!({"pvc": {"create": true, "size": "1Ti", "volumeAccessMode": "ReadWriteMany"}}),
        )
        .unwrap(),
    );
    assert_eq!(pvc_shared_by_group(&svc, 2), None);
}
