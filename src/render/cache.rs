//! The OIMCache's objects (pure builders): the weights PVC — labelled back to the cache,
//! annotated with the source it holds, never owned — and the download Job that fills it.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Container, EmptyDirVolumeSource, EnvVar, LocalObjectReference, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeClaimVolumeSource, PodSecurityContext, PodSpec, PodTemplateSpec, ResourceRequirements,
    SecurityContext, Toleration, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::api::{OIMCache, OIMCacheSpec, VolumeAccessMode};
use crate::hardware::inventory::LABEL_PRODUCT;
use crate::profile::select::Group;
use crate::profile::weights::Wanted;
use crate::render::{FIELD_MANAGER, Platform};

pub const SOURCE_HASH: &str = "oim.opea.dev/cache-source-hash";
/// On a cache PVC: the cache it belongs (or belonged) to.
pub const CACHE_LABEL: &str = "oim.opea.dev/cache";
/// On a cache PVC: the weights known complete in it (JSON list), so adoption needs no new Job.
pub const COMPLETE_ANNOTATION: &str = "oim.opea.dev/cache-complete";
pub const JOB_HASH: &str = "oim.opea.dev/job-hash";
const MOUNT: &str = "/cache";
const PULLER_UID: i64 = 65532;

fn short_hash(v: &serde_json::Value) -> String {
    Sha256::digest(v.to_string().as_bytes()).iter().take(12).map(|b| format!("{b:02x}")).collect()
}

/// What the weights in a PVC depend on: hub, repository, revision and file patterns — not
/// credentials or the downloader image.
pub fn source_hash(spec: &OIMCacheSpec) -> String {
    let hf = &spec.source.hf;
    short_hash(&json!([
        hf.endpoint.as_deref().unwrap_or("https://huggingface.co"),
        spec.model(),
        hf.revision,
        hf.allow_patterns,
        hf.ignore_patterns
    ]))
}

/// The download Job's name.
pub fn job_name(cache: &OIMCache) -> String {
    format!("{}-download", cache.name_any())
}

/// The cache's PVC name.
pub fn pvc_name(cache: &OIMCache) -> String {
    cache.spec.storage.pvc.name.clone().unwrap_or_else(|| format!("{}-weights", cache.name_any()))
}

fn labels(cache: &OIMCache) -> BTreeMap<String, String> {
    [
        ("app.kubernetes.io/name", "oim-cache"),
        ("app.kubernetes.io/instance", cache.name_any().as_str()),
        ("app.kubernetes.io/component", "model-cache"),
        ("app.kubernetes.io/managed-by", FIELD_MANAGER),
        ("app.kubernetes.io/part-of", "oim-operator"),
        (CACHE_LABEL, cache.name_any().as_str()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// The cache PVC: labelled back to the cache, annotated with the source hash, never owned (the
/// finalizer carries out the retention policy, so the garbage collector cannot take weights).
pub fn build_pvc(cache: &OIMCache, size: &str) -> PersistentVolumeClaim {
    let pvc = &cache.spec.storage.pvc;
    let mode = pvc.volume_access_mode.unwrap_or_default();
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(pvc_name(cache)),
            namespace: cache.namespace(),
            labels: Some(labels(cache)),
            annotations: Some(
                [
                    (SOURCE_HASH.to_string(), source_hash(&cache.spec)),
                    (
                        crate::render::RETENTION_ANNOTATION.to_string(),
                        crate::profile::oci::enum_str(&cache.spec.retention_policy.unwrap_or_default()),
                    ),
                ]
                .into(),
            ),
            ..Default::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec![crate::profile::oci::enum_str(&mode)]),
            storage_class_name: pvc.storage_class.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some([("storage".to_string(), Quantity(size.to_string()))].into()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn owner(cache: &OIMCache) -> Option<OwnerReference> {
    cache.controller_owner_ref(&())
}

fn env(name: &str, value: &str) -> EnvVar {
    EnvVar { name: name.into(), value: Some(value.into()), ..Default::default() }
}

/// The downloader's environment: hub endpoint, token, proxy, then the cache's own env (which wins).
fn download_env(cache: &OIMCache) -> Vec<EnvVar> {
    let hf = &cache.spec.source.hf;
    let mut envs = vec![env("HOME", "/tmp"), env("OIM_TERMINATION_LOG", "/dev/termination-log")];
    if let Some(e) = &hf.endpoint {
        envs.push(env("HF_ENDPOINT", e));
    }
    if let Some(secret) = &hf.auth_secret {
        envs.push(crate::render::token_env(secret));
    }
    envs.extend(cache.spec.proxy.as_ref().map(crate::render::proxy_env).unwrap_or_default());
    for e in cache.spec.env.iter().flatten() {
        envs.retain(|x| x.name != e.name);
        envs.push(e.clone());
    }
    envs
}

/// Requests = limits: the cache's, else 1 CPU and 1Gi.
fn download_resources(cache: &OIMCache) -> ResourceRequirements {
    let r = cache.spec.resources.clone().unwrap_or_default();
    let cpu = Quantity(r.cpu.unwrap_or_else(|| "1".into()));
    let memory = Quantity(r.memory.unwrap_or_else(|| "1Gi".into()));
    ResourceRequirements {
        requests: Some([("cpu".to_string(), cpu.clone()), ("memory".to_string(), memory.clone())].into()),
        limits: Some([("cpu".to_string(), cpu), ("memory".to_string(), memory)].into()),
        ..Default::default()
    }
}

/// One `oim download` of one weights repository, hardened.
fn download_container(
    i: usize,
    w: &Wanted,
    cache: &OIMCache,
    image: &str,
    envs: &[EnvVar],
    resources: &ResourceRequirements,
) -> Container {
    let hf = &cache.spec.source.hf;
    let mut args = vec!["download".into(), "--repo".into(), w.weights.clone(), "--revision".into()];
    args.extend([w.revision.clone(), "--dest".into(), MOUNT.into()]);
    for p in hf.allow_patterns.iter().flatten() {
        args.extend(["--include".into(), p.clone()]);
    }
    for p in hf.ignore_patterns.iter().flatten() {
        args.extend(["--exclude".into(), p.clone()]);
    }
    Container {
        name: format!("download-{i}"),
        image: Some(image.into()),
        args: Some(args),
        env: Some(envs.to_vec()),
        resources: Some(resources.clone()),
        volume_mounts: Some(vec![
            VolumeMount { name: "weights".into(), mount_path: MOUNT.into(), ..Default::default() },
            VolumeMount { name: "tmp".into(), mount_path: "/tmp".into(), ..Default::default() },
        ]),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(k8s_openapi::api::core::v1::Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Default::default()
            }),
            ..Default::default()
        }),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Default::default()
    }
}

/// The download Job: one `oim download` per weights repository (init containers run them in
/// order), on the selected group's nodes without an accelerator request, hardened, with bounded
/// retries and the cache's token, proxy and env settings.
pub fn build_job(cache: &OIMCache, wanted: &[Wanted], group: &Group, image: &str, platform: Platform) -> Job {
    let hf = &cache.spec.source.hf;
    let envs = download_env(cache);
    let resources = download_resources(cache);
    let container = |i: usize, w: &Wanted| download_container(i, w, cache, image, &envs, &resources);
    let mut containers: Vec<Container> = wanted.iter().enumerate().map(|(i, w)| container(i, w)).collect();
    let main = containers.pop().unwrap_or_else(|| container(0, &wanted[0]));
    let mut node_selector = BTreeMap::new();
    if !group.resource_name.is_empty() {
        node_selector.insert(LABEL_PRODUCT.to_string(), group.product.clone());
    }
    node_selector.extend(cache.spec.node_selector.clone().unwrap_or_default());
    let mut tolerations: Vec<Toleration> = vec![];
    if !group.resource_name.is_empty() {
        tolerations.push(Toleration {
            key: Some(group.resource_name.clone()),
            operator: Some("Exists".into()),
            effect: Some("NoSchedule".into()),
            ..Default::default()
        });
    }
    tolerations.extend(cache.spec.tolerations.clone().unwrap_or_default());
    let ids = platform == Platform::Kubernetes;
    let spec = PodSpec {
        restart_policy: Some("Never".into()),
        enable_service_links: Some(false),
        automount_service_account_token: Some(false),
        init_containers: Some(containers).filter(|c| !c.is_empty()),
        containers: vec![main],
        node_selector: Some(node_selector),
        tolerations: Some(tolerations),
        image_pull_secrets: hf.pull_secret.clone().map(|n| vec![LocalObjectReference { name: n }]),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: ids.then_some(PULLER_UID),
            run_as_group: ids.then_some(PULLER_UID),
            fs_group: ids.then_some(PULLER_UID),
            seccomp_profile: Some(k8s_openapi::api::core::v1::SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        volumes: Some(vec![
            Volume {
                name: "weights".into(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: pvc_name(cache),
                    read_only: None,
                }),
                ..Default::default()
            },
            Volume { name: "tmp".into(), empty_dir: Some(EmptyDirVolumeSource::default()), ..Default::default() },
        ]),
        ..Default::default()
    };
    let mut meta_labels = labels(cache);
    let job_hash = short_hash(&serde_json::to_value(&spec).unwrap_or_default());
    meta_labels.insert(JOB_HASH.into(), job_hash);
    Job {
        metadata: ObjectMeta {
            name: Some(job_name(cache)),
            namespace: cache.namespace(),
            labels: Some(meta_labels.clone()),
            owner_references: owner(cache).map(|o| vec![o]),
            ..Default::default()
        },
        spec: Some(JobSpec {
            backoff_limit: Some(2),
            active_deadline_seconds: Some(24 * 3600),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(labels(cache)), ..Default::default() }),
                spec: Some(spec),
            },
            ..Default::default()
        }),
        status: None,
    }
}

/// A service's access mode problem: a ReadWriteOnce cache PVC shared by several replicas.
pub fn rwo_shared(cache: &OIMCache, replicas: i32, nodes: u32) -> Option<String> {
    let mode = cache.spec.storage.pvc.volume_access_mode.unwrap_or_default();
    let rwo = matches!(mode, VolumeAccessMode::ReadWriteOnce | VolumeAccessMode::ReadWriteOncePod);
    if rwo && nodes > 1 {
        // Every pod of a group mounts the weights, each on its own node.
        return Some(format!(
            "OIMCache {} has a {} PVC but each replica of this service spans {nodes} nodes: pods on other nodes cannot mount it; use volumeAccessMode ReadWriteMany or ReadOnlyMany for the cache",
            cache.name_any(),
            crate::profile::oci::enum_str(&mode)
        ));
    }
    (rwo && replicas > 1).then(|| {
        format!(
            "OIMCache {} has a {} PVC but this service wants {replicas} replicas: pods on other nodes cannot mount it; use volumeAccessMode ReadWriteMany or ReadOnlyMany for the cache, or one replica",
            cache.name_any(),
            crate::profile::oci::enum_str(&mode)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hardware::devices;
    use crate::hardware::inventory::{AcceleratorGroup, Inventory};
    use crate::profile::catalog::ProfileSummary;
    use crate::profile::engines::Engines;
    use crate::profile::select::NodeView;
    use crate::profile::weights::{plan, size_for};

    fn cache(yaml: &str) -> OIMCache {
        let mut c: OIMCache = serde_saphyr::from_str(yaml).unwrap();
        c.metadata.namespace = Some("models".into());
        c.metadata.uid = Some("0b6c5a4e-0000-4000-8000-00000000000c".into());
        c
    }

    const LLAMA70B: &str = "apiVersion: oim.opea.dev/v1alpha1\nkind: OIMCache\nmetadata: {name: llama70b}\nspec:\n  source: {hf: {namespace: meta-llama, modelName: Llama-3.1-70B-Instruct, authSecret: hf}}\n  profile: {kpi: throughput}\n";

    fn node(slug: &str, count: u32) -> NodeView {
        NodeView::offline(Inventory {
            node: format!("{slug}-0"),
            accelerators: vec![AcceleratorGroup::of(devices::by_slug(slug).unwrap(), count)],
            ..Inventory::default()
        })
    }

    fn seed() -> Vec<ProfileSummary> {
        let dir = crate::profile::catalog::DirCatalog::load(std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/profiles"
        )))
        .unwrap();
        dir.entries()
            .filter(|(_, _, p)| p.model == "meta-llama/Llama-3.1-70B-Instruct")
            .map(|(path, bytes, p)| {
                ProfileSummary::of(p, crate::profile::catalog::digest_of(bytes), path.display().to_string())
            })
            .collect()
    }

    #[test]
    fn each_hardware_group_present_gets_its_own_weights_and_nothing_else() {
        let c = cache(LLAMA70B);
        let nodes = [node("h100-sxm-80gb", 8), node("a100-sxm-40gb", 8)];
        let (wanted, group) = plan(&c, &seed(), &nodes, &Engines::builtin(), None).unwrap();
        let mut repos: Vec<&str> = wanted.iter().map(|w| w.weights.as_str()).collect();
        repos.sort();
        assert_eq!(repos, ["meta-llama/Llama-3.1-70B-Instruct", "neuralmagic/Meta-Llama-3.1-70B-Instruct-FP8"]);
        assert!(wanted.iter().all(|w| w.revision == "main"), "no pin, no spec revision: main");
        assert!(["h100-sxm-80gb", "a100-sxm-40gb"].contains(&group.product.as_str()));
        // H100 and MI300X load the same FP8 repository: fetched once, for both profiles.
        let (shared, _) =
            plan(&c, &seed(), &[node("h100-sxm-80gb", 8), node("mi300x", 8)], &Engines::builtin(), None).unwrap();
        assert_eq!(shared.len(), 1);
        assert_eq!(shared[0].profiles.len(), 2);
        // Only H100s: the BF16 variant the A100s would need is not fetched.
        let (only, _) = plan(&c, &seed(), &[node("h100-sxm-80gb", 8)], &Engines::builtin(), None).unwrap();
        assert_eq!(only.len(), 1);
    }

    #[test]
    fn the_size_is_the_spec_or_the_weights_plus_headroom_or_unknown() {
        let c = cache(LLAMA70B);
        let (wanted, _) = plan(&c, &seed(), &[node("h100-sxm-80gb", 8)], &Engines::builtin(), None).unwrap();
        let fp8 = size_for(&c.spec, &wanted, None).unwrap();
        let gib: u64 = fp8.trim_end_matches("Gi").parse().unwrap();
        assert!((70..=100).contains(&gib), "70B at fp8 is ~66 GiB of weights plus headroom: {fp8}");
        let mut sized = c.clone();
        sized.spec.storage.pvc.size = Some("500Gi".into());
        assert_eq!(size_for(&sized.spec, &wanted, None).as_deref(), Some("500Gi"));
        let unknown = Wanted {
            profiles: vec![],
            weights: "acme/unknown".into(),
            revision: "main".into(),
            precision: crate::api::Precision::Bf16,
        };
        let mut other = c.clone();
        other.spec.source.hf.namespace = Some("acme".into());
        other.spec.source.hf.model_name = "unknown".into();
        assert_eq!(size_for(&other.spec, std::slice::from_ref(&unknown), None), None);
        // The model's own safetensors index (Qwen2.5-32B: 65,527,752,704 bytes = 61.03 GiB):
        // 61.03 x 1.2 = 73.2, rounded up to 74, plus 5 GiB of headroom.
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/Qwen/Qwen2.5-32B-Instruct");
        let config = std::fs::read(dir.join("config.json")).unwrap();
        let qwen = crate::profile::estimate::Arch::from_config_json("acme/unknown", &config)
            .unwrap()
            .with_checkpoint_bytes(65_527_752_704);
        assert_eq!(size_for(&other.spec, &[unknown], Some(&qwen)).as_deref(), Some("79Gi"));
    }

    #[test]
    fn only_a_cache_of_a_model_the_table_does_not_know_that_must_size_or_generate_reads_the_hub() {
        use crate::profile::weights::needs_model_facts;
        let engines = Engines::builtin();
        let h100 = [node("h100-sxm-80gb", 8)];
        let llama = cache(LLAMA70B);
        assert!(!needs_model_facts(&llama, &[], &h100, false, &engines), "in the built-in table");
        let qwen = cache(
            "apiVersion: oim.opea.dev/v1alpha1\nkind: OIMCache\nmetadata: {name: qwen}\nspec:\n  source: {hf: {modelName: Qwen/Qwen2.5-32B-Instruct}}\n",
        );
        assert!(needs_model_facts(&qwen, &[], &h100, false, &engines), "a PVC to size, nothing published");
        assert!(
            needs_model_facts(&qwen, &[], &h100, true, &engines),
            "the PVC exists, but a profile must be generated"
        );
        // A published profile fits and the size is given: nothing to read.
        let mut published = seed()[0].clone();
        published.model = "Qwen/Qwen2.5-32B-Instruct".into();
        published.weights = published.model.clone();
        published.product = "h100-sxm-80gb".into();
        published.vendor = crate::api::Vendor::Nvidia;
        published.count = 1;
        let mut sized = qwen.clone();
        sized.spec.storage.pvc.size = Some("100Gi".into());
        assert!(!needs_model_facts(&sized, std::slice::from_ref(&published), &h100, false, &engines));
        assert!(needs_model_facts(&qwen, &[published], &h100, false, &engines), "no size: the bytes are needed");
    }

    #[test]
    fn the_job_downloads_each_weights_repo_on_the_group_without_a_gpu_request_and_hardened() {
        let mut c = cache(LLAMA70B);
        c.spec.source.hf.allow_patterns = Some(vec!["*.safetensors".into()]);
        c.spec.proxy = Some(serde_saphyr::from_str("{httpsProxy: 'http://proxy:3128'}").unwrap());
        let (wanted, group) = plan(&c, &seed(), &[node("h100-sxm-80gb", 8)], &Engines::builtin(), None).unwrap();
        let job = build_job(&c, &wanted, &group, "docker.io/opea/oim:0.1.0", Platform::Kubernetes);
        assert_eq!(job.metadata.owner_references.as_ref().unwrap()[0].kind, "OIMCache");
        let spec = job.spec.unwrap();
        assert_eq!(spec.backoff_limit, Some(2));
        let pod = spec.template.spec.unwrap();
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
        assert_eq!(pod.node_selector.unwrap()[LABEL_PRODUCT], "h100-sxm-80gb");
        let ctr = &pod.containers[0];
        let args = ctr.args.clone().unwrap();
        assert_eq!(
            args[..7],
            [
                "download",
                "--repo",
                "neuralmagic/Meta-Llama-3.1-70B-Instruct-FP8",
                "--revision",
                "main",
                "--dest",
                "/cache"
            ]
        );
        assert!(args.windows(2).any(|w| w == ["--include", "*.safetensors"]));
        let env = ctr.env.clone().unwrap();
        assert!(env.iter().any(|e| e.name == "https_proxy" && e.value.as_deref() == Some("http://proxy:3128")));
        let token = env.iter().find(|e| e.name == "HF_TOKEN").unwrap();
        assert_eq!(token.value_from.as_ref().unwrap().secret_key_ref.as_ref().unwrap().name, "hf");
        assert!(ctr.resources.as_ref().unwrap().limits.as_ref().unwrap().keys().all(|k| k == "cpu" || k == "memory"));
        let sc = ctr.security_context.as_ref().unwrap();
        assert_eq!((sc.read_only_root_filesystem, sc.allow_privilege_escalation), (Some(true), Some(false)));
        assert_eq!(pod.security_context.as_ref().unwrap().fs_group, Some(PULLER_UID), "the PVC is writable");
        let openshift = build_job(&c, &wanted, &group, "img", Platform::Openshift).spec.unwrap().template.spec.unwrap();
        assert_eq!(openshift.security_context.unwrap().run_as_user, None, "restricted-v2 assigns the uid");
    }

    #[test]
    fn the_pvc_is_never_owned_and_carries_the_source_hash() {
        let c = cache(LLAMA70B);
        let pvc = build_pvc(&c, "90Gi");
        assert!(pvc.metadata.owner_references.is_none());
        assert_eq!(pvc.metadata.annotations.unwrap()[SOURCE_HASH], source_hash(&c.spec));
        let mut other = c.clone();
        other.spec.source.hf.revision = Some("refs/pr/1".into());
        assert_ne!(source_hash(&other.spec), source_hash(&c.spec), "another revision is another source");
        other = c.clone();
        other.spec.source.hf.auth_secret = Some("another-token".into());
        assert_eq!(source_hash(&other.spec), source_hash(&c.spec), "credentials are not the source");
    }

    #[test]
    fn a_read_write_once_cache_shared_by_replicas_is_reported() {
        let c = cache(LLAMA70B);
        assert_eq!(rwo_shared(&c, 1, 1), None);
        assert!(rwo_shared(&c, 2, 1).unwrap().contains("ReadWriteMany"));
        let mut rwx = c.clone();
        rwx.spec.storage.pvc.volume_access_mode = Some(VolumeAccessMode::ReadWriteMany);
        assert_eq!(rwo_shared(&rwx, 3, 1), None);
        // One replica spanning two nodes mounts it on both.
        assert!(rwo_shared(&c, 1, 2).unwrap().contains("spans 2 nodes"));
        assert_eq!(rwo_shared(&rwx, 1, 2), None);
    }
}
