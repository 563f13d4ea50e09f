//! The vLLM pod template and Deployment (DESIGN §7): command and args, exact resources,
//! placement, volumes, probes, rollout and security per vendor and platform. The template is
//! shared with the LeaderWorkerSet of profiles that span nodes (`lws.rs`).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource, HTTPGetAction,
    LocalObjectReference, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, PersistentVolumeClaim,
    PersistentVolumeClaimVolumeSource, PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements,
    SeccompProfile, SecretKeySelector, SecurityContext, Toleration, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{Input, PORT, Platform, RenderError, Weights, labels, meta, name_of, selector_labels};
use crate::api::{OIMService, ProbeSpec, Vendor};
use crate::hardware::inventory::{LABEL_CPU_AVX512, LABEL_PRODUCT, LABEL_VENDOR};
use crate::profile::Profile;
use crate::profile::schema::is_quantity;

const CACHE_DIR: &str = "/cache";
const MODELS_DIR: &str = "/models";

/// Engine args in DESIGN order: weights, served name, port, revision (hub with a pin), profile
/// args, user args (last wins in vLLM's parser).
pub fn engine_args(svc: &OIMService, profile: &Profile, weights: &Weights) -> Vec<String> {
    let served = svc.spec.model.served_name.clone().unwrap_or_else(|| svc.spec.model.name.clone());
    let mut args = match weights {
        Weights::Hub => vec![profile.weights().to_string()],
        Weights::Cache { path, .. } => vec![format!("{MODELS_DIR}/{}", path.trim_start_matches('/'))],
    };
    args.extend(["--served-model-name".into(), served, "--port".into(), PORT.to_string()]);
    if *weights == Weights::Hub {
        let revision = svc.spec.model.revision.clone().or_else(|| profile.weights_revision.clone());
        if let Some(r) = revision {
            args.extend(["--revision".into(), r]);
        }
    }
    let mut profile_args = profile.args.clone();
    let p = profile.parallelism;
    if p.tensor > 1 {
        profile_args.entry("tensor-parallel-size".into()).or_insert(p.tensor.into());
    }
    if p.pipeline > 1 {
        profile_args.entry("pipeline-parallel-size".into()).or_insert(p.pipeline.into());
    }
    if profile.multi_node() {
        // vLLM's multi-node serving: the leader's engine drives the workers' GPUs over Ray.
        profile_args.entry("distributed-executor-backend".into()).or_insert("ray".into());
    }
    args.extend(crate::profile::schema::render_args(&profile_args));
    args.extend(svc.spec.args.clone().unwrap_or_default());
    args
}

fn q(s: &str) -> Quantity {
    Quantity(s.to_string())
}

/// Adds two quantities given in binary units (Ki/Mi/Gi/Ti or plain bytes), as Mi.
fn add_memory(a: &str, b: &str) -> Result<Quantity, RenderError> {
    let bytes = |s: &str| -> Option<f64> {
        let units = [
            ("Ki", 1024f64),
            ("Mi", 1024f64.powi(2)),
            ("Gi", 1024f64.powi(3)),
            ("Ti", 1024f64.powi(4)),
            ("k", 1e3),
            ("M", 1e6),
            ("G", 1e9),
            ("T", 1e12),
        ];
        for (u, f) in units {
            if let Some(n) = s.strip_suffix(u) {
                return n.parse::<f64>().ok().map(|n| n * f);
            }
        }
        s.parse::<f64>().ok()
    };
    match (bytes(a), bytes(b)) {
        // In the API server's canonical form (18Gi, not 18432Mi), so rendered equals stored.
        (Some(x), Some(y)) => {
            let mib = ((x + y) / 1024f64.powi(2)).ceil() as u64;
            Ok(Quantity(if mib.is_multiple_of(1024) { format!("{}Gi", mib / 1024) } else { format!("{mib}Mi") }))
        }
        _ => Err(RenderError::InvalidSpec {
            field: "resources.memory".into(),
            message: format!("cannot add {a} and {b}; use binary units such as 64Gi"),
        }),
    }
}

/// Requests and limits: accelerator = tensor x pipeline (request = limit), memory = profile
/// memory + shm (request = limit: the tmpfs counts against it), CPU from the profile (limit =
/// request on CPU backends), ephemeral storage when weights download to local disk, extras as
/// given; then the user's overrides per key, except an accelerator count that contradicts.
fn resources(input: &Input, shm: &str) -> Result<ResourceRequirements, RenderError> {
    let profile = input.profile;
    let group = input.group;
    let mut requests: BTreeMap<String, Quantity> = BTreeMap::new();
    let mut limits: BTreeMap<String, Quantity> = BTreeMap::new();
    let devices = profile.devices_per_pod();
    // DRA claims supply the devices: no extended-resource request beside them.
    let claimed = super::dra::uses_dra(input.service);
    if !group.resource_name.is_empty() && !claimed {
        requests.insert(group.resource_name.clone(), q(&devices.to_string()));
        limits.insert(group.resource_name.clone(), q(&devices.to_string()));
    }
    requests.insert("cpu".into(), q(&profile.resources.cpu));
    if group.vendor == Vendor::Cpu {
        limits.insert("cpu".into(), q(&profile.resources.cpu));
    }
    let memory = add_memory(&profile.resources.memory, shm)?;
    requests.insert("memory".into(), memory.clone());
    limits.insert("memory".into(), memory);
    let downloads_to_local_disk = input.weights == Weights::Hub && super::pvc_name(input.service).is_none();
    if downloads_to_local_disk && let Some(e) = &profile.resources.ephemeral_storage {
        requests.insert("ephemeral-storage".into(), q(e));
    }
    for (k, v) in &profile.resources.extra {
        requests.insert(k.clone(), q(v));
        limits.insert(k.clone(), q(v));
    }
    if let Some(user) = &input.service.spec.resources {
        for (user_map, target) in [(&user.requests, &mut requests), (&user.limits, &mut limits)] {
            for (k, v) in user_map.iter().flatten() {
                if !group.resource_name.is_empty()
                    && !claimed
                    && *k == group.resource_name
                    && v.0 != devices.to_string()
                {
                    return Err(RenderError::InvalidResources {
                        resource: k.clone(),
                        given: v.0.clone(),
                        needed: devices,
                        profile: profile.name.clone(),
                    });
                }
                target.insert(k.clone(), v.clone());
            }
        }
    }
    let claims = super::dra::container_claims(input.service);
    Ok(ResourceRequirements {
        requests: Some(requests),
        limits: Some(limits),
        claims: Some(claims).filter(|c| !c.is_empty()),
    })
}

/// `HF_TOKEN` from a Secret's key of that name: never inline.
pub fn token_env(secret: &str) -> EnvVar {
    EnvVar {
        name: "HF_TOKEN".into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.to_string(),
                key: "HF_TOKEN".into(),
                optional: Some(false),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Proxy settings in both spellings tools read; from `credentialsSecret` by reference (optional
/// keys), so credentials never appear in a rendered object.
pub fn proxy_env(p: &crate::api::ProxySpec) -> Vec<EnvVar> {
    let mut out = vec![];
    let from_secret = |name: &str, secret: &str, key: &str| EnvVar {
        name: name.to_string(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.to_string(),
                key: key.to_string(),
                optional: Some(true),
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    if let Some(secret) = &p.credentials_secret {
        for key in ["HTTP_PROXY", "HTTPS_PROXY"] {
            out.push(from_secret(key, secret, key));
            out.push(from_secret(&key.to_ascii_lowercase(), secret, key));
        }
    }
    for (names, v) in [
        (["HTTP_PROXY", "http_proxy"], &p.http_proxy),
        (["HTTPS_PROXY", "https_proxy"], &p.https_proxy),
        (["NO_PROXY", "no_proxy"], &p.no_proxy),
    ] {
        if let Some(v) = v {
            out.extend(names.iter().map(|n| EnvVar {
                name: n.to_string(),
                value: Some(v.clone()),
                ..Default::default()
            }));
        }
    }
    out
}

fn env(input: &Input) -> Vec<EnvVar> {
    let svc = input.service;
    let value = |n: &str, v: &str| EnvVar { name: n.into(), value: Some(v.into()), ..Default::default() };
    let mut by_name: BTreeMap<String, EnvVar> = BTreeMap::new();
    let mut put = |e: EnvVar| {
        by_name.insert(e.name.clone(), e);
    };
    for e in [
        value("HOME", CACHE_DIR),
        value("XDG_CACHE_HOME", &format!("{CACHE_DIR}/xdg")),
        value("VLLM_CACHE_ROOT", &format!("{CACHE_DIR}/vllm")),
        value("TRITON_CACHE_DIR", &format!("{CACHE_DIR}/triton")),
        value("VLLM_NO_USAGE_STATS", "1"),
        value("DO_NOT_TRACK", "1"),
    ] {
        put(e);
    }
    match &input.weights {
        Weights::Hub => put(value("HF_HOME", MODELS_DIR)),
        Weights::Cache { .. } => {
            put(value("HF_HOME", &format!("{CACHE_DIR}/hf")));
            put(value("HF_HUB_OFFLINE", "1"));
        }
    }
    if let Some(secret) = &svc.spec.auth_secret {
        put(token_env(secret));
    }
    for e in svc.spec.proxy.as_deref().map(proxy_env).unwrap_or_default() {
        put(e);
    }
    for (k, v) in &input.profile.env {
        put(value(k, v));
    }
    // The user's env wins by name.
    for e in svc.spec.env.clone().unwrap_or_default() {
        put(e);
    }
    by_name.into_values().collect()
}

fn probe(path_period: (i32, i32, i32, i32), spec: Option<&ProbeSpec>) -> Option<Probe> {
    if spec.and_then(|s| s.enabled) == Some(false) {
        return None;
    }
    if let Some(p) = spec.and_then(|s| s.probe.clone()) {
        return Some(p);
    }
    let (period, timeout, failures, success) = path_period;
    Some(Probe {
        http_get: Some(HTTPGetAction {
            path: Some("/health".into()),
            port: IntOrString::String("http".into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(timeout),
        failure_threshold: Some(failures),
        success_threshold: Some(success),
        ..Default::default()
    })
}

fn security(input: &Input) -> (PodSecurityContext, SecurityContext) {
    let svc = input.service;
    let engine = input.engines.get(input.group.vendor);
    let user = svc.spec.security_context.as_ref();
    let kubernetes = input.platform == Platform::Kubernetes;
    let run_as_user = user.and_then(|u| u.run_as_user).or(svc.spec.user_id).or(if kubernetes {
        engine.and_then(|e| e.run_as_user)
    } else {
        None
    });
    let run_as_group = user.and_then(|u| u.run_as_group).or(svc.spec.group_id).or(if kubernetes {
        engine.and_then(|e| e.run_as_group)
    } else {
        None
    });
    let mut groups = user.and_then(|u| u.supplemental_groups.clone()).unwrap_or_default();
    if matches!(input.group.vendor, Vendor::Amd | Vendor::Intel) {
        groups.extend(input.device_groups.iter().copied());
    }
    groups.sort_unstable();
    groups.dedup();
    let pod = PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user,
        run_as_group,
        fs_group: user.and_then(|u| u.fs_group),
        supplemental_groups: Some(groups).filter(|g| !g.is_empty()),
        seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), ..Default::default() }),
        ..Default::default()
    };
    let add = engine.map(|e| e.capabilities.clone()).unwrap_or_default();
    let container = SecurityContext {
        allow_privilege_escalation: Some(false),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), add: Some(add).filter(|a| !a.is_empty()) }),
        ..Default::default()
    };
    (pod, container)
}

fn placement(input: &Input) -> (BTreeMap<String, String>, Vec<Toleration>, Option<Affinity>) {
    let svc = input.service;
    let group = input.group;
    let mut selector = svc.spec.node_selector.clone().unwrap_or_default();
    let mut affinity = svc.spec.affinity.clone();
    if group.vendor == Vendor::Cpu {
        // CPU backends: nodes without accelerators that carry the needed CPU label.
        let term = NodeSelectorTerm {
            match_expressions: Some(vec![
                NodeSelectorRequirement { key: LABEL_VENDOR.into(), operator: "DoesNotExist".into(), values: None },
                NodeSelectorRequirement {
                    key: LABEL_CPU_AVX512.into(),
                    operator: "In".into(),
                    values: Some(vec!["true".into()]),
                },
            ]),
            ..Default::default()
        };
        let a = affinity.get_or_insert_with(Box::default);
        let na = a.node_affinity.get_or_insert_with(NodeAffinity::default);
        let required = na
            .required_during_scheduling_ignored_during_execution
            .get_or_insert_with(|| NodeSelector { node_selector_terms: vec![] });
        if required.node_selector_terms.is_empty() {
            required.node_selector_terms.push(term);
        } else {
            // Terms are ORed; the CPU constraint must hold in each.
            for t in &mut required.node_selector_terms {
                t.match_expressions
                    .get_or_insert_with(Vec::new)
                    .extend(term.match_expressions.clone().unwrap_or_default());
            }
        }
    } else if group.dra.is_none() {
        // DRA devices: the claim's selector picks the product, on nodes the agent may not label.
        selector.insert(LABEL_PRODUCT.into(), group.product.clone());
    }
    let mut tolerations = svc.spec.tolerations.clone().unwrap_or_default();
    if !group.resource_name.is_empty() {
        let t = Toleration {
            key: Some(group.resource_name.clone()),
            operator: Some("Exists".into()),
            effect: Some("NoSchedule".into()),
            ..Default::default()
        };
        if !tolerations.contains(&t) {
            tolerations.push(t);
        }
    }
    (selector, tolerations, affinity.map(|a| *a))
}

/// Which pod of a replica a template is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The one pod of a single-node replica.
    Single,
    /// The leader of a group spanning `nodes` nodes: starts the Ray head, waits for the
    /// workers, then runs the server (probes and the Service are on it).
    Leader {
        /// Pods in the group.
        nodes: u32,
    },
    /// A worker of a group: joins the leader's Ray head and lends its devices.
    Worker,
}

/// Label telling a group's leader from its workers; the Service selects the leader.
pub const ROLE_LABEL: &str = "oim.opea.dev/role";
/// Port of the Ray head on the leader.
pub const RAY_PORT: u16 = 6379;
/// How long the leader waits for its workers to join before it fails (and is restarted).
const RAY_JOIN_TIMEOUT_S: u32 = 600;

/// The leader's shell: start the Ray head, wait until all `nodes` Ray nodes are alive, then
/// exec the engine command passed as arguments (so args stay exact, never re-quoted).
fn leader_script(nodes: u32) -> String {
    let alive = r#"python3 -c 'import ray; ray.init(address="auto", logging_level="ERROR"); print(sum(1 for n in ray.nodes() if n["Alive"]))'"#;
    [
        format!("ray start --head --port={RAY_PORT} --disable-usage-stats"),
        "waited=0".into(),
        format!("until [ \"$({alive} 2>/dev/null)\" = {nodes} ]; do"),
        format!(
            "  if [ $waited -ge {RAY_JOIN_TIMEOUT_S} ]; then echo \"ray: {nodes} nodes did not join within {RAY_JOIN_TIMEOUT_S}s\" >&2; exit 1; fi"
        ),
        "  sleep 5; waited=$((waited + 5))".into(),
        "done".into(),
        "exec \"$@\"".into(),
    ]
    .join("\n")
}

/// A worker's shell: join the leader's Ray head (its address from LeaderWorkerSet's
/// `LWS_LEADER_ADDRESS`), retrying until the head is up, and block there.
fn worker_script() -> String {
    [
        format!("until ray start --address=\"$LWS_LEADER_ADDRESS:{RAY_PORT}\" --block --disable-usage-stats; do"),
        format!("  echo \"waiting for the ray head at $LWS_LEADER_ADDRESS:{RAY_PORT}\" >&2; sleep 5"),
        "done".into(),
    ]
    .join("\n")
}

/// The Deployment (a profile on one node).
pub fn deployment(input: &Input, created_pvc: Option<&PersistentVolumeClaim>) -> Result<Deployment, RenderError> {
    let svc = input.service;
    let name = name_of(svc);
    let template = pod_template(input, created_pvc, Role::Single)?;
    let scaled = svc.spec.scale.as_ref().and_then(|s| s.enabled) == Some(true);
    let strategy = svc.spec.strategy.as_deref().cloned().unwrap_or(DeploymentStrategy {
        type_: Some("RollingUpdate".into()),
        rolling_update: Some(RollingUpdateDeployment {
            max_surge: Some(IntOrString::Int(0)),
            max_unavailable: Some(IntOrString::Int(1)),
        }),
    });
    Ok(Deployment {
        metadata: meta(svc, &name, "inference"),
        spec: Some(DeploymentSpec {
            // With autoscaling the HPA owns replicas: leaving the field out hands it over.
            replicas: if scaled { None } else { Some(svc.spec.replicas.unwrap_or(1)) },
            selector: LabelSelector { match_labels: Some(selector_labels(&name)), ..Default::default() },
            strategy: Some(strategy),
            template,
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// The vLLM pod of a replica, or of one role in a group: the same exact resources, shm,
/// volumes, placement and security for every pod; probes and the port only where the server
/// runs.
pub fn pod_template(
    input: &Input,
    created_pvc: Option<&PersistentVolumeClaim>,
    role: Role,
) -> Result<PodTemplateSpec, RenderError> {
    let svc = input.service;
    let storage = svc.spec.storage.as_ref();
    let shm = storage
        .and_then(|s| s.shared_memory_size_limit.clone())
        .or_else(|| input.profile.resources.shared_memory.clone())
        .unwrap_or_else(|| "2Gi".into());
    if !is_quantity(&shm) {
        return Err(RenderError::InvalidSpec {
            field: "spec.storage.sharedMemorySizeLimit".into(),
            message: format!("{shm:?} is not a quantity"),
        });
    }
    let resources = resources(input, &shm)?;
    let mut volumes = vec![
        Volume {
            name: "shm".into(),
            empty_dir: Some(EmptyDirVolumeSource { medium: Some("Memory".into()), size_limit: Some(q(&shm)) }),
            ..Default::default()
        },
        Volume { name: "cache".into(), empty_dir: Some(EmptyDirVolumeSource::default()), ..Default::default() },
    ];
    let mut mounts = vec![
        VolumeMount { name: "shm".into(), mount_path: "/dev/shm".into(), ..Default::default() },
        VolumeMount { name: "cache".into(), mount_path: CACHE_DIR.into(), ..Default::default() },
    ];
    let read_only = storage.and_then(|s| s.read_only).unwrap_or(false);
    match &input.weights {
        Weights::Cache { pvc, .. } => {
            volumes.push(Volume {
                name: "models".into(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: pvc.clone(),
                    read_only: Some(true),
                }),
                ..Default::default()
            });
            mounts.push(VolumeMount {
                name: "models".into(),
                mount_path: MODELS_DIR.into(),
                read_only: Some(true),
                ..Default::default()
            });
        }
        Weights::Hub => {
            let pvc_name = created_pvc.and_then(|p| p.metadata.name.clone()).or_else(|| super::pvc_name(svc));
            let volume = match pvc_name {
                Some(claim) => Volume {
                    name: "models".into(),
                    persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                        claim_name: claim,
                        read_only: Some(read_only),
                    }),
                    ..Default::default()
                },
                None => {
                    let limit = storage
                        .and_then(|s| s.empty_dir.as_ref())
                        .and_then(|e| e.size_limit.clone())
                        .or_else(|| input.profile.resources.ephemeral_storage.clone());
                    Volume {
                        name: "models".into(),
                        empty_dir: Some(EmptyDirVolumeSource { size_limit: limit.map(Quantity), ..Default::default() }),
                        ..Default::default()
                    }
                }
            };
            volumes.push(volume);
            let sub_path = storage.and_then(|s| s.pvc.as_ref()).and_then(|p| p.sub_path.clone());
            mounts.push(VolumeMount {
                name: "models".into(),
                mount_path: MODELS_DIR.into(),
                sub_path,
                read_only: Some(read_only).filter(|r| *r),
                ..Default::default()
            });
        }
    }
    let downloads = input.weights == Weights::Hub;
    let (pod_security, container_security) = security(input);
    let (node_selector, tolerations, affinity) = placement(input);
    let engine_command = input
        .engines
        .get(input.group.vendor)
        .map(|e| e.command.clone())
        .unwrap_or_else(|| vec!["vllm".into(), "serve".into()]);
    let image = match &svc.spec.image {
        Some(i) => super::checks::image_ref(i)?,
        None => input.profile.engine.image.clone(),
    };
    let (command, args) = match role {
        Role::Single => (engine_command, engine_args(svc, input.profile, &input.weights)),
        Role::Leader { nodes } => {
            let mut args = engine_command;
            args.extend(engine_args(svc, input.profile, &input.weights));
            (vec!["/bin/sh".into(), "-c".into(), leader_script(nodes), "oim-leader".into()], args)
        }
        Role::Worker => (vec!["/bin/sh".into(), "-c".into(), worker_script()], vec![]),
    };
    let serves = role != Role::Worker;
    let container = Container {
        name: "vllm".into(),
        image: Some(image),
        image_pull_policy: svc.spec.image.as_ref().and_then(|i| i.pull_policy).map(|p| format!("{p:?}")),
        command: Some(command),
        args: Some(args).filter(|a| !a.is_empty()),
        ports: serves.then(|| {
            vec![ContainerPort {
                name: Some("http".into()),
                container_port: PORT,
                protocol: Some("TCP".into()),
                ..Default::default()
            }]
        }),
        env: Some(env(input)),
        resources: Some(resources),
        volume_mounts: Some(mounts),
        startup_probe: serves
            .then(|| probe((10, 5, if downloads { 360 } else { 180 }, 1), svc.spec.startup_probe.as_deref()))
            .flatten(),
        readiness_probe: serves.then(|| probe((5, 5, 3, 1), svc.spec.readiness_probe.as_deref())).flatten(),
        liveness_probe: serves.then(|| probe((15, 10, 4, 1), svc.spec.liveness_probe.as_deref())).flatten(),
        security_context: Some(container_security),
        ..Default::default()
    };
    let pull_secrets = svc
        .spec
        .image
        .as_ref()
        .and_then(|i| i.pull_secrets.clone())
        .map(|s| s.into_iter().map(|name| LocalObjectReference { name }).collect());
    let mut pod_labels = labels(svc, "inference");
    match role {
        Role::Single => {}
        Role::Leader { .. } => {
            pod_labels.insert(ROLE_LABEL.into(), "leader".into());
        }
        Role::Worker => {
            pod_labels.insert(ROLE_LABEL.into(), "worker".into());
        }
    }
    Ok(PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(pod_labels),
            annotations: svc.spec.annotations.clone().filter(|a| !a.is_empty()),
            ..Default::default()
        }),
        spec: Some(PodSpec {
            // The namespace's default ServiceAccount, its token not mounted: vLLM never
            // talks to the API server, and an account per service was one more write
            // per service for nothing.
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            containers: vec![container],
            volumes: Some(volumes),
            node_selector: Some(node_selector).filter(|s| !s.is_empty()),
            tolerations: Some(tolerations).filter(|t| !t.is_empty()),
            affinity,
            resource_claims: Some(super::dra::pod_claims(svc)).filter(|c| !c.is_empty()),
            runtime_class_name: svc.spec.runtime_class_name.clone(),
            priority_class_name: svc.spec.priority_class_name.clone(),
            scheduler_name: svc.spec.scheduler_name.clone(),
            security_context: Some(pod_security),
            image_pull_secrets: pull_secrets,
            termination_grace_period_seconds: Some(60),
            ..Default::default()
        }),
    })
}
