//! `OIMService`: "serve this model, optimised for this KPI" — the operator picks the profile,
//! the accelerators and the resources.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::DeploymentStrategy;
use k8s_openapi::api::autoscaling::v2::{HorizontalPodAutoscalerBehavior, MetricSpec};
use k8s_openapi::api::core::v1::{Affinity, EnvVar, Probe, ResourceRequirements, Toleration};
use k8s_openapi::api::networking::v1::IngressSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::common::{
    NAME_MESSAGE, NAME_RULE, ProfileSelector, ProxySpec, QUANTITY_RULE, RetentionPolicy, Vendor, VolumeAccessMode,
};

/// Engine flags the operator sets itself; user `args` must not repeat them in any spelling
/// vLLM's argument parser accepts: one or two leading dashes, `_` for `-`, `--x=y`, and any
/// prefix of the name (argparse takes unique prefixes). The operator checks the same way
/// (`render::checks::forbidden_arg`).
pub const FORBIDDEN_ARG_RULE: &str = "self.all(a, !a.startsWith('-') || size((a.startsWith('--') ? a.substring(2) : a.substring(1)).split('=')[0]) == 0 || !['port', 'host', 'served-model-name', 'model'].exists(f, f.startsWith((a.startsWith('--') ? a.substring(2) : a.substring(1)).split('=')[0].replace('_', '-'))))";

/// Desired state of an inference service.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "oim.opea.dev",
    version = "v1alpha1",
    kind = "OIMService",
    plural = "oimservices",
    shortname = "oimsvc",
    category = "oim",
    namespaced,
    cel,
    status = "OIMServiceStatus",
    derive = "PartialEq",
    derive = "Default",
    doc = "An inference service: a model, a KPI, and the operator picks profile, accelerators and resources.",
    validation = Rule::new(NAME_RULE).message(NAME_MESSAGE),
    printcolumn(name = "State", type_ = "string", json_path = ".status.state", description = "Pending, NotReady, Ready or Failed"),
    printcolumn(name = "Model", type_ = "string", json_path = ".spec.model.name", description = "Hugging Face model id"),
    printcolumn(name = "Profile", type_ = "string", json_path = ".status.profile.name", description = "Selected launch profile"),
    printcolumn(name = "Accelerator", type_ = "string", json_path = ".status.accelerator", description = "Accelerators per replica"),
    printcolumn(name = "Available", type_ = "integer", json_path = ".status.availableReplicas", description = "Available replicas"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(
    validation = Rule::new("!(has(self.replicas) && has(self.scale) && has(self.scale.enabled) && self.scale.enabled)")
        .message("spec.replicas and spec.scale.enabled=true are exclusive: the HorizontalPodAutoscaler owns the replica count; remove spec.replicas or disable scale"),
    validation = Rule::new("!has(self.args) || !self.args.exists(a, a == self.model.name)")
        .message("spec.args must not repeat the model as a positional argument: the operator passes the model (or its cached path) itself; remove it from args"),
    validation = Rule::new("!(has(self.inferencePlatform) && self.inferencePlatform == 'kserve' && has(self.expose) && has(self.expose.router) && has(self.expose.router.inferencePool))")
        .message("spec.expose.router.inferencePool needs spec.inferencePlatform: standalone: KServe owns the pods of an InferenceService; remove inferencePool or serve standalone"),
    validation = Rule::new("!has(self.draResources) || !self.draResources.exists(d, has(d.resourceClaimName)) || ((!has(self.replicas) || self.replicas <= 1) && !(has(self.scale) && has(self.scale.enabled) && self.scale.enabled && has(self.scale.hpa) && self.scale.hpa.maxReplicas > 1))")
        .message("spec.draResources[].resourceClaimName names one ResourceClaim, allocated once on one node: with spec.replicas > 1 or autoscaling to more than one replica every pod would share it; use claimCreationSpec or resourceClaimTemplateName so each pod gets its own claim"),
    validation = Rule::new("!has(self.resources) || !has(self.resources.claims) || size(self.resources.claims) == 0")
        .message("spec.resources.claims is filled by the operator from spec.draResources; name the ResourceClaim or ResourceClaimTemplate there (resourceClaimName / resourceClaimTemplateName) instead")
)]
#[serde(rename_all = "camelCase")]
pub struct OIMServiceSpec {
    /// The model to serve.
    pub model: ModelSpec,
    /// How to choose the launch profile. Unset = best published profile for `throughput`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<ProfileSelector>,
    /// Overrides the engine image the profile names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<Box<ImageSpec>>,
    /// Secret holding `HF_TOKEN` for gated models; mounted as an env var, never inlined.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub auth_secret: Option<String>,
    /// Extra environment for the engine container; same name as a profile variable wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub env: Option<Vec<EnvVar>>,
    /// Extra engine arguments, appended after the profile's (last wins). Must not set `--port`,
    /// `--host`, `--served-model-name`, `--model` or a positional model: the operator owns those.
    /// They are matched the way vLLM's argument parser reads flags: `_` equals `-`
    /// (`--served_model_name`), `--flag=value` is the flag, a single leading dash works, and a
    /// prefix of a name is that name (`--por 1` is `--port 1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(
        validation = Rule::new(FORBIDDEN_ARG_RULE)
            .message("spec.args must not contain --port, --host, --served-model-name or --model, in any spelling vLLM accepts (underscores, --x=y, or a prefix such as --por): the operator sets them (use spec.model.servedName and spec.expose.service.port instead)"),
        validation = Rule::new("size(self) == 0 || self[0].startsWith('-')")
            .message("spec.args must start with a flag (e.g. --max-num-seqs): a leading positional argument would be taken as the model; the operator passes the model itself")
    )]
    #[schemars(length(max = 64), inner(length(max = 4096)))]
    pub args: Option<Vec<String>>,
    /// Where weights are stored: at most one of `oimCache`, `pvc` or `emptyDir`. Absent =
    /// an emptyDir sized from the profile's `ephemeralStorage`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<Box<StorageSpec>>,
    /// Overrides the computed resources per key. The accelerator count must equal the
    /// profile's tensor x pipeline parallelism.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Box<ResourceRequirements>>,
    /// Devices through Dynamic Resource Allocation (NIM's `draResources`): the pod gets these
    /// claims instead of an extended-resource request, and selection counts the devices DRA
    /// drivers publish in ResourceSlices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 8))]
    pub dra_resources: Option<Vec<super::dra::DraResource>>,
    /// Number of replicas (1 when unset). Exclusive with `scale.enabled`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: Option<i32>,
    /// Horizontal autoscaling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale: Option<Box<ScaleSpec>>,
    /// Deployment rollout strategy. Default RollingUpdate with maxSurge 0, maxUnavailable 1,
    /// because accelerators are scarce.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<Box<DeploymentStrategy>>,
    /// How the service is reached: Service, Ingress, OpenShift Route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expose: Option<Box<ExposeSpec>>,
    /// Extra node selector, merged with the operator's placement (the operator's accelerator
    /// product key wins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    /// Extra tolerations, united with the accelerator toleration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub tolerations: Option<Vec<Toleration>>,
    /// Pod affinity; required node affinity also narrows the candidate nodes for selection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Box<Affinity>>,
    /// RuntimeClass for the pod (e.g. `nvidia`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub runtime_class_name: Option<String>,
    /// PriorityClass for the pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub priority_class_name: Option<String>,
    /// Scheduler for the pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub scheduler_name: Option<String>,
    /// User id the engine runs as (NIM's `userID`; `securityContext.runAsUser` wins).
    #[serde(default, rename = "userID", skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub user_id: Option<i64>,
    /// Group id the engine runs as (NIM's `groupID`; `securityContext.runAsGroup` wins).
    #[serde(default, rename = "groupID", skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub group_id: Option<i64>,
    /// Pod security overrides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_context: Option<Box<SecurityOverrides>>,
    /// Extra labels on every rendered object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// Extra annotations on every rendered object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    /// Startup probe (default: `/health` every 10 s, 180 failures; 360 while weights download).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup_probe: Option<Box<ProbeSpec>>,
    /// Readiness probe (default: `/health` every 5 s, timeout 5 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness_probe: Option<Box<ProbeSpec>>,
    /// Liveness probe (default: `/health` every 15 s, timeout 10 s, 4 failures).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness_probe: Option<Box<ProbeSpec>>,
    /// Prometheus metrics and ServiceMonitor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<Box<MetricsSpec>>,
    /// HTTP proxy for pulling weights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<Box<ProxySpec>>,
    /// What runs the engine: `standalone` (default) renders a Deployment and a Service;
    /// `kserve` a KServe `InferenceService` (RawDeployment mode) with the same container,
    /// resources and scaling, where the KServe API is installed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inference_platform: Option<InferencePlatform>,
}

/// What runs the engine (NIM's `inferencePlatform`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum InferencePlatform {
    /// A Deployment and a Service rendered by the operator.
    #[default]
    Standalone,
    /// A KServe `serving.kserve.io/v1beta1` InferenceService in RawDeployment mode.
    Kserve,
}

impl OIMServiceSpec {
    /// The replicas a placement must fit: `hpa.minReplicas` (default 1) with autoscaling on,
    /// else `replicas` (default 1).
    pub fn replicas_to_fit(&self) -> i32 {
        match self.scale.as_ref().filter(|x| x.enabled == Some(true)) {
            Some(x) => x.hpa.as_ref().and_then(|h| h.min_replicas).unwrap_or(1),
            None => self.replicas.unwrap_or(1),
        }
    }

    /// The most replicas that may run at once: `replicas`, or `hpa.maxReplicas` when larger.
    pub fn max_replicas(&self) -> i32 {
        let hpa_max = self.scale.as_ref().and_then(|x| x.hpa.as_ref()).map(|h| h.max_replicas).unwrap_or(0);
        self.replicas.unwrap_or(1).max(hpa_max)
    }
}

/// The model to serve.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelSpec {
    /// Hugging Face model id, e.g. `meta-llama/Llama-3.1-8B-Instruct`.
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$')")
        .message("spec.model.name must be a Hugging Face model id such as meta-llama/Llama-3.1-8B-Instruct (org/name, letters, digits, '.', '_' and '-')"))]
    #[schemars(length(min = 1, max = 256))]
    pub name: String,
    /// Hub revision (branch, tag or commit) to load; default = the profile's `weightsRevision`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub revision: Option<String>,
    /// Name clients use in the OpenAI API `model` field; default = `name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub served_name: Option<String>,
}

/// Image override.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageSpec {
    /// Image repository, e.g. `registry.example.com/vllm/vllm-openai`.
    #[schemars(length(min = 1, max = 512))]
    pub repository: String,
    /// Tag or `sha256:` digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub tag: Option<String>,
    /// Image pull policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_policy: Option<PullPolicy>,
    /// Secrets for pulling the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16), inner(length(max = 253)))]
    pub pull_secrets: Option<Vec<String>>,
}

/// Image pull policy.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum PullPolicy {
    /// Always pull.
    Always,
    /// Pull when missing.
    IfNotPresent,
    /// Never pull.
    Never,
}

/// Where weights live.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[x_kube(validation = Rule::new("(has(self.oimCache) ? 1 : 0) + (has(self.pvc) ? 1 : 0) + (has(self.emptyDir) ? 1 : 0) <= 1")
    .message("spec.storage: set at most one of oimCache, pvc or emptyDir"))]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Serve from an OIMCache's PVC, mounted read-only at `/models` (vLLM runs offline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oim_cache: Option<CacheRef>,
    /// Download weights into a PersistentVolumeClaim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pvc: Option<PvcSpec>,
    /// Download weights into an emptyDir.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub empty_dir: Option<EmptyDirSpec>,
    /// Size of the `/dev/shm` tmpfs; default = the profile's `sharedMemory`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(QUANTITY_RULE).message("spec.storage.sharedMemorySizeLimit must be a quantity such as 8Gi"))]
    #[schemars(length(max = 32))]
    pub shared_memory_size_limit: Option<String>,
    /// Mount the weights volume read-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
}

/// Reference to an OIMCache in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
pub struct CacheRef {
    /// Name of the OIMCache.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
}

/// A PVC for weights.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[x_kube(
    validation = Rule::new("has(self.storageClass) == has(oldSelf.storageClass) && (!has(self.storageClass) || self.storageClass == oldSelf.storageClass)")
        .message("spec.storage.pvc.storageClass is immutable; create a new OIMService (or a new PVC name) to change it"),
    validation = Rule::new("has(self.volumeAccessMode) == has(oldSelf.volumeAccessMode) && (!has(self.volumeAccessMode) || self.volumeAccessMode == oldSelf.volumeAccessMode)")
        .message("spec.storage.pvc.volumeAccessMode is immutable; create a new OIMService (or a new PVC name) to change it"),
    validation = Rule::new("!has(oldSelf.size) || (has(self.size) && quantity(self.size).compareTo(quantity(oldSelf.size)) >= 0)")
        .message("spec.storage.pvc.size can only grow; set it to at least the previous size"),
    validation = Rule::new("has(self.create) && self.create ? has(self.size) : has(self.name)")
        .message("spec.storage.pvc: with create=true set size (e.g. 100Gi); otherwise set name to an existing PVC")
)]
#[serde(rename_all = "camelCase")]
pub struct PvcSpec {
    /// Create the PVC (true) or use an existing one named `name` (false, default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create: Option<bool>,
    /// PVC name; default `<service>-weights` when created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub name: Option<String>,
    /// StorageClass of a created PVC. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub storage_class: Option<String>,
    /// Size of a created PVC, e.g. `100Gi`. Can only grow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(QUANTITY_RULE).message("spec.storage.pvc.size must be a quantity such as 100Gi"))]
    #[schemars(length(max = 32))]
    pub size: Option<String>,
    /// Access mode of a created PVC. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_access_mode: Option<VolumeAccessMode>,
    /// Sub-path inside the volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub sub_path: Option<String>,
    /// `Retain` (default) keeps a created PVC and its weights when the service is deleted;
    /// `Delete` removes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_policy: Option<RetentionPolicy>,
}

/// An emptyDir for weights.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct EmptyDirSpec {
    /// Size limit; default = the profile's `ephemeralStorage`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(QUANTITY_RULE).message("spec.storage.emptyDir.sizeLimit must be a quantity such as 40Gi"))]
    #[schemars(length(max = 32))]
    pub size_limit: Option<String>,
}

/// Autoscaling.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScaleSpec {
    /// Render a HorizontalPodAutoscaler and hand it the replica count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// HorizontalPodAutoscaler settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hpa: Option<HpaSpec>,
}

/// HorizontalPodAutoscaler settings.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[x_kube(validation = Rule::new("!has(self.minReplicas) || self.minReplicas <= self.maxReplicas")
    .message("spec.scale.hpa.minReplicas must be <= maxReplicas; raise maxReplicas or lower minReplicas"))]
#[serde(rename_all = "camelCase")]
pub struct HpaSpec {
    /// Lower bound (default 1); selection needs room for this many replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub min_replicas: Option<i32>,
    /// Upper bound.
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: i32,
    /// Metrics the HPA scales on (autoscaling/v2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    pub metrics: Option<Vec<MetricSpec>>,
    /// Scale-up and scale-down behaviour (autoscaling/v2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub behavior: Option<HorizontalPodAutoscalerBehavior>,
}

/// Exposure.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[x_kube(validation = Rule::new("!(has(self.ingress) && has(self.ingress.enabled) && self.ingress.enabled && has(self.router) && has(self.router.ingress))")
    .message("spec.expose.ingress and spec.expose.router.ingress both render the Ingress named after the service: use one (router.ingress is NIM's newer form); remove ingress or router.ingress"))]
#[serde(rename_all = "camelCase")]
pub struct ExposeSpec {
    /// The Service in front of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceExpose>,
    /// An Ingress to the Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<IngressExpose>,
    /// An OpenShift Route to the Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<RouteExpose>,
    /// NIM's router: an Ingress (`ingress`) or a Gateway API HTTPRoute (`gateway`) for the
    /// host `<name>.<namespace>.<hostDomainName>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router: Option<RouterSpec>,
}

/// NIM's router: one host, reached through an Ingress controller or a Gateway.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[x_kube(
    validation = Rule::new("!(has(self.ingress) && has(self.gateway))")
        .message("spec.expose.router: set either ingress or gateway, not both; keep the one your cluster routes with"),
    validation = Rule::new("!(has(self.ingress) || has(self.gateway)) || has(self.hostDomainName)")
        .message("spec.expose.router.hostDomainName is required with router.ingress or router.gateway: the host is <name>.<namespace>.<hostDomainName>; set it, e.g. hostDomainName: example.com"),
    validation = Rule::new("!has(self.inferencePool) || has(self.gateway)")
        .message("spec.expose.router.inferencePool needs router.gateway: the HTTPRoute of that Gateway sends traffic to the pool; add router.gateway or remove inferencePool")
)]
#[serde(rename_all = "camelCase")]
pub struct RouterSpec {
    /// Domain of the routed host: the host is `<name>.<namespace>.<hostDomainName>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^(([a-z0-9][a-z0-9\-]*[a-z0-9])|[a-z0-9]+\.)*([a-z]+|xn\-\-[a-z0-9]+)\.?$")
    )]
    pub host_domain_name: Option<String>,
    /// Annotations on the Ingress or HTTPRoute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    /// Route through an Ingress controller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<RouterIngress>,
    /// Route through a Gateway API Gateway (an HTTPRoute), where that API is installed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<RouterGateway>,
    /// Route through a Gateway API Inference Extension InferencePool of this service's pods
    /// (where that API is installed), picked per request by an endpoint picker you run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inference_pool: Option<InferencePoolExpose>,
}

/// The Ingress of a router.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouterIngress {
    /// IngressClass of the rendered Ingress.
    #[schemars(length(min = 1, max = 253))]
    pub ingress_class: String,
    /// Secret with the TLS certificate and key for the host; the endpoint is https then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub tls_secret_name: Option<String>,
}

/// The Gateway a router's HTTPRoute attaches to.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[x_kube(validation = Rule::new("!has(self.grpcRoutesEnabled) || !self.grpcRoutesEnabled")
    .message("spec.expose.router.gateway.grpcRoutesEnabled: vLLM serves HTTP only, there is no gRPC endpoint to route; remove it or set it to false"))]
#[serde(rename_all = "camelCase")]
pub struct RouterGateway {
    /// Namespace of the Gateway.
    #[schemars(length(min = 1, max = 63))]
    pub namespace: String,
    /// Name of the Gateway.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Render the HTTPRoute (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_routes_enabled: Option<bool>,
    /// NIM's GRPCRoute switch; only false is accepted (vLLM has no gRPC endpoint).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_routes_enabled: Option<bool>,
}

/// An InferencePool (`inference.networking.k8s.io/v1`) of the service's pods.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct InferencePoolExpose {
    /// The endpoint picker (EPP) Service the Gateway asks which pod serves a request.
    pub endpoint_picker_ref: EndpointPickerRef,
}

/// The Service of an endpoint picker, in the service's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct EndpointPickerRef {
    /// Service name of the endpoint picker.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Its gRPC port (default 9002, the endpoint picker's own default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
    /// What the Gateway does when the picker does not answer: `FailClose` (default) or `FailOpen`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_mode: Option<FailureMode>,
}

/// An InferencePool's behaviour when its endpoint picker is unavailable.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum FailureMode {
    /// Send the request to any pod of the pool.
    FailOpen,
    /// Refuse the request.
    FailClose,
}

/// Service settings.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceExpose {
    /// Service type.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<ServiceType>,
    /// Service port (default 8000); the container always listens on 8000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
    /// Annotations on the Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// Service type.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum ServiceType {
    /// Cluster-internal virtual IP.
    ClusterIP,
    /// A port on every node.
    NodePort,
    /// An external load balancer.
    LoadBalancer,
}

/// Ingress settings.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct IngressExpose {
    /// Render the Ingress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Annotations on the Ingress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    /// Ingress spec; default routes `/` to the Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<IngressSpec>,
}

/// OpenShift Route settings.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteExpose {
    /// Render the Route (OpenShift only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Route host; default assigned by the router.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub host: Option<String>,
}

/// Pod security overrides.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecurityOverrides {
    /// User id; default the image's non-root user (omitted on OpenShift).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub run_as_user: Option<i64>,
    /// Group id; default the image's group (omitted on OpenShift).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub run_as_group: Option<i64>,
    /// Group owning mounted volumes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub fs_group: Option<i64>,
    /// Extra groups, e.g. the group of `/dev/kfd` and `/dev/dri` on AMD and Intel GPU nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub supplemental_groups: Option<Vec<i64>>,
}

/// A probe override.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProbeSpec {
    /// Run this probe (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Replaces the default probe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<Probe>,
}

/// Metrics settings.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricsSpec {
    /// Expose `/metrics` and render a ServiceMonitor where the API exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// ServiceMonitor settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_monitor: Option<ServiceMonitorSpec>,
}

/// ServiceMonitor settings.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceMonitorSpec {
    /// Labels the Prometheus instance selects on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub additional_labels: Option<BTreeMap<String, String>>,
    /// Annotations on the ServiceMonitor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    /// Scrape interval, e.g. `30s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16), regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    pub interval: Option<String>,
    /// Scrape timeout, e.g. `10s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16), regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    pub scrape_timeout: Option<String>,
}

/// Observed state of an inference service.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct OIMServiceStatus {
    /// `Ready` when the Ready condition is True; `Failed` only for spec errors retrying cannot
    /// fix; `NotReady` when a profile is selected but not available; otherwise `Pending`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<ServiceState>,
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Replicas passing readiness.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available_replicas: Option<i32>,
    /// Accelerators per replica, e.g. `2x h100-sxm-80gb`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accelerator: Option<String>,
    /// ProfileSelected, CacheReady, Available, Ready, Degraded, ProfileUpdateAvailable.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The selected profile and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<SelectedProfile>,
    /// The resources rendered for the engine container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Served model name and endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelStatus>,
}

/// Summary state of a service.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum ServiceState {
    /// Nothing selected or rolled out yet (including NoFeasibleProfile).
    Pending,
    /// A profile is selected but the service is not available.
    NotReady,
    /// Serving.
    Ready,
    /// A spec error that retrying cannot fix.
    Failed,
}

/// The selected profile.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SelectedProfile {
    /// Profile name.
    pub name: String,
    /// Content digest the service is pinned to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Where it came from: an OCI reference, a catalog path or `generated`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Engine name and version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<String>,
    /// Engine image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Weight precision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<String>,
    /// Tensor-parallel degree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tensor_parallelism: Option<i32>,
    /// Pipeline-parallel degree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline_parallelism: Option<i32>,
    /// Accelerators per replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accelerator: Option<AcceleratorStatus>,
    /// Why this profile won.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Profiles not chosen and why (at most 10).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10))]
    pub rejected: Vec<RejectedProfile>,
    /// True when estimated by the operator rather than published.
    #[serde(default)]
    pub generated: bool,
}

/// Accelerators a replica uses.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
pub struct AcceleratorStatus {
    /// Vendor.
    pub vendor: Vendor,
    /// Device-table slug.
    pub product: String,
    /// Devices per replica.
    pub count: i32,
}

/// A profile that was not chosen.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
pub struct RejectedProfile {
    /// Profile name.
    pub name: String,
    /// One line with the numbers, e.g. `needs 4x nvidia l4 per node; largest schedulable group offers 1`.
    pub reason: String,
}

/// Served model and endpoints.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelStatus {
    /// Name clients send as `model`.
    pub name: String,
    /// In-cluster base URL, from the Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_endpoint: Option<String>,
    /// External URL, from the Ingress or Route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_endpoint: Option<String>,
}
