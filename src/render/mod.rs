//! Pure builders (DESIGN §7): from an OIMService, its selected profile and node group, to the
//! typed objects the operator applies. No client calls; `oim render` prints exactly these.

pub mod cache;
pub mod checks;
pub mod dra;
pub mod lws;
pub mod routing;
mod workload;

use std::collections::BTreeMap;

use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec,
};
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimSpec, Service, ServicePort, ServiceSpec, VolumeResourceRequirements,
};
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule, IngressServiceBackend, IngressSpec,
    ServiceBackendPort,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::json;

use crate::api::{OIMService, RetentionPolicy, VolumeAccessMode};
use crate::profile::Profile;
use crate::profile::engines::Engines;
use crate::profile::oci::enum_str;
use crate::profile::select::Group;

pub use lws::{leader_worker_set, leader_worker_set_resource};
pub use workload::{ROLE_LABEL, Role, deployment, pod_template, proxy_env, token_env};

/// The container port vLLM listens on.
pub const PORT: i32 = 8000;
/// The operator's image when it cannot tell its own: it is also the node agent and the
/// OIMCache downloader.
pub const DEFAULT_IMAGE: &str = concat!("docker.io/opea/oim:", env!("CARGO_PKG_VERSION"));
/// The one field manager for everything the operator applies.
pub const FIELD_MANAGER: &str = "oim-operator";
/// Annotation on a PVC saying what happens to it when its owner goes.
pub const RETENTION_ANNOTATION: &str = "oim.opea.dev/retention-policy";
/// The stored selection rides on the Deployment's annotations (read first after a restart; a
/// cache verified against the profile digest, never an authority): what it was made for,
pub const SELECTION_KEY: &str = "oim.opea.dev/selection-key";
/// why this profile was chosen,
pub const REASON_ANNOTATION: &str = "oim.opea.dev/reason";
/// the resolved profile document (YAML),
pub const PROFILE_ANNOTATION: &str = "oim.opea.dev/profile";
/// its digest (empty for a generated profile),
pub const DIGEST_ANNOTATION: &str = "oim.opea.dev/profile-digest";
/// where it came from,
pub const SOURCE_ANNOTATION: &str = "oim.opea.dev/profile-source";
/// and what was rejected then (JSON).
pub const REJECTED_ANNOTATION: &str = "oim.opea.dev/rejected";

/// Target platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Platform {
    /// Upstream Kubernetes.
    #[default]
    Kubernetes,
    /// OpenShift: restricted-v2 assigns user ids; Routes exist.
    Openshift,
}

/// Optional APIs present in the cluster (or asked for offline).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capabilities {
    /// `route.openshift.io/v1` Route.
    pub routes: bool,
    /// `monitoring.coreos.com/v1` ServiceMonitor.
    pub service_monitors: bool,
    /// `gateway.networking.k8s.io/v1` HTTPRoute (Gateway API).
    pub gateway: bool,
    /// `inference.networking.k8s.io/v1` InferencePool (Gateway API Inference Extension).
    pub inference_pools: bool,
    /// `serving.kserve.io/v1beta1` InferenceService (KServe).
    pub kserve: bool,
    /// `leaderworkerset.x-k8s.io/v1` LeaderWorkerSet: profiles spanning nodes can run.
    pub leader_worker_sets: bool,
    /// `resource.k8s.io/v1`: Dynamic Resource Allocation (ResourceSlice, ResourceClaimTemplate).
    pub dra: bool,
}

impl Capabilities {
    /// Offline (`oim render`), like `helm template`: every optional API present, Route only on
    /// OpenShift.
    pub fn offline(platform: Platform) -> Capabilities {
        Capabilities {
            routes: platform == Platform::Openshift,
            service_monitors: true,
            gateway: true,
            inference_pools: true,
            kserve: true,
            leader_worker_sets: true,
            dra: true,
        }
    }
}

/// Where the weights come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Weights {
    /// Downloaded from the hub at start into an emptyDir or a PVC.
    Hub,
    /// An OIMCache's PVC, mounted read-only at /models; the path inside it.
    Cache {
        /// PVC name.
        pvc: String,
        /// `/<weights>/<commit>` inside the PVC.
        path: String,
    },
}

/// Everything a render needs.
pub struct Input<'a> {
    /// The service.
    pub service: &'a OIMService,
    /// The selected profile.
    pub profile: &'a Profile,
    /// Its digest and source, for the profile ConfigMap.
    pub digest: &'a str,
    /// Where it came from.
    pub source: &'a str,
    /// What the selection was made for ([`crate::profile::select::selection_key`]), why, and
    /// the profiles rejected: kept with the choice so a later reconcile reports the same.
    pub selection: Selection<'a>,
    /// The group it runs on.
    pub group: &'a Group,
    /// Weights source.
    pub weights: Weights,
    /// Platform.
    pub platform: Platform,
    /// Optional APIs.
    pub capabilities: Capabilities,
    /// Engine table (non-root ids, capabilities).
    pub engines: &'a Engines,
    /// Supplemental groups for AMD/Intel device nodes (operator config).
    pub device_groups: Vec<i64>,
}

/// Why the profile was chosen, recorded on the profile ConfigMap.
#[derive(Debug, Clone, Copy, Default)]
pub struct Selection<'a> {
    /// The selection key.
    pub key: &'a str,
    /// Why this profile.
    pub reason: &'a str,
    /// The profiles rejected, with why.
    pub rejected: &'a [crate::api::RejectedProfile],
}

/// A spec the operator cannot render, with the field and the fix.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RenderError {
    /// The accelerator override contradicts the profile.
    #[error(
        "spec.resources sets {resource}={given}, but the profile {profile} needs exactly {needed} per pod; remove it from spec.resources or pin another profile"
    )]
    InvalidResources {
        /// Resource.
        resource: String,
        /// Given.
        given: String,
        /// Needed.
        needed: u32,
        /// Profile.
        profile: String,
    },
    /// A value that does not parse.
    #[error("{field}: {message}")]
    InvalidSpec {
        /// Field.
        field: String,
        /// Why and fix.
        message: String,
    },
}

/// All objects for one service, in apply order.
#[derive(Debug, Clone)]
pub struct Rendered {
    /// PVC from `storage.pvc.create` (no owner reference).
    pub pvc: Option<PersistentVolumeClaim>,
    /// ResourceClaimTemplates from `spec.draResources[].claimCreationSpec`.
    pub resource_claim_templates: Vec<dra::ResourceClaimTemplate>,
    /// The vLLM Deployment (a profile on one node).
    pub deployment: Option<k8s_openapi::api::apps::v1::Deployment>,
    /// The LeaderWorkerSet (a profile spanning nodes), instead of the Deployment.
    pub leader_worker_set: Option<DynamicObject>,
    /// The Service.
    pub service: Service,
    /// HPA when scale is enabled.
    pub hpa: Option<HorizontalPodAutoscaler>,
    /// Ingress when enabled.
    pub ingress: Option<Ingress>,
    /// OpenShift Route when enabled and the API exists.
    pub route: Option<DynamicObject>,
    /// ServiceMonitor when metrics are enabled and the API exists.
    pub service_monitor: Option<DynamicObject>,
    /// Gateway API HTTPRoute of `expose.router.gateway` where the API exists.
    pub http_route: Option<DynamicObject>,
    /// Inference Extension InferencePool of `expose.router.inferencePool` where the API exists.
    pub inference_pool: Option<DynamicObject>,
    /// With `inferencePlatform: kserve`: the InferenceService applied instead of the
    /// Deployment, Service and HPA (which are still built, for the status and the offline view
    /// of the pod, but not applied).
    pub inference_service: Option<DynamicObject>,
}

impl Rendered {
    /// Every object as JSON values, in apply order.
    pub fn objects(&self) -> Vec<serde_json::Value> {
        let mut out = vec![];
        let mut push = |v: serde_json::Result<serde_json::Value>| out.push(v.expect("typed objects serialize"));
        if let Some(p) = &self.pvc {
            push(serde_json::to_value(with_kind(p)));
        }
        for t in &self.resource_claim_templates {
            push(serde_json::to_value(with_kind(t)));
        }
        match &self.inference_service {
            Some(isvc) => push(serde_json::to_value(isvc)),
            None => {
                if let Some(d) = &self.deployment {
                    push(serde_json::to_value(with_kind(d)));
                }
                if let Some(l) = &self.leader_worker_set {
                    push(serde_json::to_value(l));
                }
                push(serde_json::to_value(with_kind(&self.service)));
                if let Some(h) = &self.hpa {
                    push(serde_json::to_value(with_kind(h)));
                }
            }
        }
        if let Some(i) = &self.ingress {
            push(serde_json::to_value(with_kind(i)));
        }
        if let Some(r) = &self.route {
            push(serde_json::to_value(r));
        }
        if let Some(m) = &self.service_monitor {
            push(serde_json::to_value(m));
        }
        for o in [&self.inference_pool, &self.http_route].into_iter().flatten() {
            push(serde_json::to_value(o));
        }
        out
    }
}

impl Rendered {
    /// The serving container's resources (the Deployment's pod, or the group leader's: every
    /// pod of a group requests the same).
    pub fn engine_resources(&self) -> Option<k8s_openapi::api::core::v1::ResourceRequirements> {
        if let Some(d) = &self.deployment {
            let pod = d.spec.as_ref()?.template.spec.as_ref()?;
            return pod.containers.first()?.resources.clone();
        }
        let l = self.leader_worker_set.as_ref()?;
        serde_json::from_value(
            l.data["spec"]["leaderWorkerTemplate"]["leaderTemplate"]["spec"]["containers"][0]["resources"].clone(),
        )
        .ok()
    }
}

/// Wraps a typed object so it serializes with apiVersion and kind.
pub fn with_kind<K: Resource<DynamicType = ()> + serde::Serialize + Clone>(obj: &K) -> serde_json::Value {
    let mut v = serde_json::to_value(obj).expect("typed objects serialize");
    v["apiVersion"] = json!(K::api_version(&()));
    v["kind"] = json!(K::kind(&()));
    // Move apiVersion/kind first for readable YAML.
    let mut ordered = serde_json::Map::new();
    ordered.insert("apiVersion".into(), v["apiVersion"].take());
    ordered.insert("kind".into(), v["kind"].take());
    if let serde_json::Value::Object(rest) = v {
        for (k, val) in rest {
            if k != "apiVersion" && k != "kind" {
                ordered.insert(k, val);
            }
        }
    }
    serde_json::Value::Object(ordered)
}

/// The selector labels of a service's pods.
pub fn selector_labels(name: &str) -> BTreeMap<String, String> {
    [
        ("app.kubernetes.io/name".to_string(), "oim-service".to_string()),
        ("app.kubernetes.io/instance".to_string(), name.to_string()),
    ]
    .into()
}

/// Standard labels plus the user's.
pub fn labels(svc: &OIMService, component: &str) -> BTreeMap<String, String> {
    let name = svc.metadata.name.clone().unwrap_or_default();
    let mut l = svc.spec.labels.clone().unwrap_or_default();
    l.extend(selector_labels(&name));
    l.insert("app.kubernetes.io/component".into(), component.into());
    l.insert("app.kubernetes.io/managed-by".into(), FIELD_MANAGER.into());
    l.insert("app.kubernetes.io/part-of".into(), "oim".into());
    l
}

/// The controller owner reference to the OIMService.
pub fn owner(svc: &OIMService) -> Vec<OwnerReference> {
    svc.controller_owner_ref(&()).into_iter().collect()
}

/// Metadata for an owned child.
pub fn meta(svc: &OIMService, name: &str, component: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: svc.metadata.namespace.clone(),
        labels: Some(labels(svc, component)),
        annotations: svc.spec.annotations.clone().filter(|a| !a.is_empty()),
        owner_references: Some(owner(svc)).filter(|o| !o.is_empty()),
        ..Default::default()
    }
}

fn name_of(svc: &OIMService) -> String {
    svc.metadata.name.clone().unwrap_or_default()
}

/// Renders every object for one service.
pub fn render(input: &Input) -> Result<Rendered, RenderError> {
    let svc = input.service;
    checks::check_spec(svc)?;
    let pvc = pvc(svc)?;
    if dra::uses_dra(svc) && !input.capabilities.dra {
        return Err(RenderError::InvalidSpec {
            field: "spec.draResources".into(),
            message: "this cluster does not serve resource.k8s.io/v1 (Dynamic Resource Allocation, Kubernetes 1.34 or later); remove spec.draResources to use the device plugin, or upgrade the cluster".into(),
        });
    }
    dra::check_shared_claims(input)?;
    let resource_claim_templates = dra::templates(input)?;
    let multi_node = input.profile.multi_node();
    // The stored selection rides on the workload: the Deployment, or the LeaderWorkerSet.
    let (deployment, leader_worker_set) = if multi_node {
        let mut lws = lws::leader_worker_set(input, pvc.as_ref())?;
        lws.metadata.annotations.get_or_insert_with(BTreeMap::new).extend(stored_selection(input));
        (None, Some(lws))
    } else {
        let mut deployment = workload::deployment(input, pvc.as_ref())?;
        deployment.metadata.annotations.get_or_insert_with(BTreeMap::new).extend(stored_selection(input));
        (Some(deployment), None)
    };
    let inference_service = match &deployment {
        Some(d) => routing::inference_service(input, d)?,
        None if routing::on_kserve(svc) => {
            return Err(RenderError::InvalidSpec {
                field: "spec.inferencePlatform".into(),
                message: format!(
                    "profile {} spans {} nodes and KServe's RawDeployment runs one pod per replica: use inferencePlatform standalone (a LeaderWorkerSet) or pin a single-node profile",
                    input.profile.name, input.profile.nodes
                ),
            });
        }
        None => None,
    };
    let inference_pool = routing::inference_pool(input);
    let http_route = routing::http_route(input, inference_pool.as_ref());
    Ok(Rendered {
        pvc,
        resource_claim_templates,
        deployment,
        leader_worker_set,
        service: service(svc, multi_node),
        hpa: hpa(svc, multi_node),
        ingress: ingress(svc),
        route: route(input),
        service_monitor: service_monitor(input),
        http_route,
        inference_pool,
        inference_service,
    })
}

/// The selection as stored on the Deployment: an object written anyway, so storing it costs no
/// write of its own.
fn stored_selection(input: &Input) -> BTreeMap<String, String> {
    [
        (SELECTION_KEY, input.selection.key.to_string()),
        (REASON_ANNOTATION, input.selection.reason.to_string()),
        (PROFILE_ANNOTATION, serde_saphyr::to_string(input.profile).unwrap_or_default()),
        (DIGEST_ANNOTATION, input.digest.to_string()),
        (SOURCE_ANNOTATION, input.source.to_string()),
        (REJECTED_ANNOTATION, serde_json::to_string(input.selection.rejected).unwrap_or_default()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// The PVC from `storage.pvc.create`: no owner reference, so deleting the service never deletes
/// the weights; its retention policy is recorded for the controller.
fn pvc(svc: &OIMService) -> Result<Option<PersistentVolumeClaim>, RenderError> {
    let Some(p) = svc.spec.storage.as_ref().and_then(|s| s.pvc.as_ref()).filter(|p| p.create == Some(true)) else {
        return Ok(None);
    };
    let size = p.size.clone().ok_or_else(|| RenderError::InvalidSpec {
        field: "spec.storage.pvc.size".into(),
        message: "is required with create=true; set it, e.g. 100Gi".into(),
    })?;
    let mut meta = meta(svc, &pvc_name(svc).unwrap_or_default(), "weights");
    let policy = p.retention_policy.unwrap_or_default();
    // Retain (default): no owner, the weights outlive the service. Delete: owned, so the
    // garbage collector removes the PVC with its service and nothing else ever does.
    if policy == RetentionPolicy::Retain {
        meta.owner_references = None;
    }
    meta.annotations.get_or_insert_with(BTreeMap::new).insert(RETENTION_ANNOTATION.into(), format!("{policy:?}"));
    let mode = p.volume_access_mode.unwrap_or(VolumeAccessMode::ReadWriteOnce);
    Ok(Some(PersistentVolumeClaim {
        metadata: meta,
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec![format!("{mode:?}")]),
            storage_class_name: p.storage_class.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some([("storage".to_string(), Quantity(size))].into()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }))
}

/// Why the service's own weights PVC cannot serve a group spanning `nodes` nodes: every pod of
/// the group mounts it, each on its own node, and a ReadWriteOnce volume attaches to one node.
pub fn pvc_shared_by_group(svc: &OIMService, nodes: u32) -> Option<String> {
    let p = svc.spec.storage.as_ref()?.pvc.as_ref()?;
    let mode = p.volume_access_mode.unwrap_or(VolumeAccessMode::ReadWriteOnce);
    (nodes > 1 && matches!(mode, VolumeAccessMode::ReadWriteOnce | VolumeAccessMode::ReadWriteOncePod)).then(|| {
        format!(
            "PVC {} is {} but each replica spans {nodes} nodes: pods on other nodes cannot mount it; use volumeAccessMode ReadWriteMany, or no spec.storage.pvc (each pod downloads the weights)",
            pvc_name(svc).unwrap_or_default(),
            enum_str(&mode)
        )
    })
}

/// The weights PVC a service uses (created or existing), if any.
pub fn pvc_name(svc: &OIMService) -> Option<String> {
    let p = svc.spec.storage.as_ref()?.pvc.as_ref()?;
    Some(p.name.clone().unwrap_or_else(|| format!("{}-weights", name_of(svc))))
}

/// The Service; for a group, on its leader only (the workers serve nothing).
fn service(svc: &OIMService, multi_node: bool) -> Service {
    let expose = svc.spec.expose.as_ref().and_then(|e| e.service.as_ref());
    let mut meta = meta(svc, &name_of(svc), "inference");
    if let Some(a) = expose.and_then(|e| e.annotations.clone()) {
        meta.annotations.get_or_insert_with(BTreeMap::new).extend(a);
    }
    Service {
        metadata: meta,
        spec: Some(ServiceSpec {
            type_: Some(expose.and_then(|e| e.type_).map(|t| format!("{t:?}")).unwrap_or_else(|| "ClusterIP".into())),
            selector: Some({
                let mut s = selector_labels(&name_of(svc));
                if multi_node {
                    s.insert(ROLE_LABEL.into(), "leader".into());
                }
                s
            }),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: expose.and_then(|e| e.port).unwrap_or(PORT),
                target_port: Some(IntOrString::String("http".into())),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn hpa(svc: &OIMService, multi_node: bool) -> Option<HorizontalPodAutoscaler> {
    let scale = svc.spec.scale.as_ref().filter(|s| s.enabled == Some(true))?;
    let hpa = scale.hpa.clone().unwrap_or_default();
    Some(HorizontalPodAutoscaler {
        metadata: meta(svc, &name_of(svc), "autoscaler"),
        spec: Some(HorizontalPodAutoscalerSpec {
            // A LeaderWorkerSet scales whole groups through its scale subresource.
            scale_target_ref: if multi_node {
                CrossVersionObjectReference {
                    api_version: Some(format!("{}/v1", lws::LWS_GROUP)),
                    kind: "LeaderWorkerSet".into(),
                    name: name_of(svc),
                }
            } else {
                CrossVersionObjectReference {
                    api_version: Some("apps/v1".into()),
                    kind: "Deployment".into(),
                    name: name_of(svc),
                }
            },
            min_replicas: Some(hpa.min_replicas.unwrap_or(1)),
            max_replicas: hpa.max_replicas.max(1),
            metrics: hpa.metrics,
            behavior: hpa.behavior,
        }),
        ..Default::default()
    })
}

/// The Ingress of `expose.ingress`, else of `expose.router.ingress` (CEL allows one).
fn ingress(svc: &OIMService) -> Option<Ingress> {
    let Some(i) = svc.spec.expose.as_ref()?.ingress.as_ref().filter(|i| i.enabled == Some(true)) else {
        return routing::router_ingress(svc);
    };
    let (backend, port) = routing::backend(svc);
    let default = IngressSpec {
        rules: Some(vec![IngressRule {
            http: Some(HTTPIngressRuleValue {
                paths: vec![HTTPIngressPath {
                    path: Some("/".into()),
                    path_type: "Prefix".into(),
                    backend: IngressBackend {
                        service: Some(IngressServiceBackend {
                            name: backend,
                            port: Some(ServiceBackendPort { number: Some(port), ..Default::default() }),
                        }),
                        ..Default::default()
                    },
                }],
            }),
            ..Default::default()
        }]),
        ..Default::default()
    };
    let mut meta = meta(svc, &name_of(svc), "inference");
    if let Some(a) = i.annotations.clone() {
        meta.annotations.get_or_insert_with(BTreeMap::new).extend(a);
    }
    Some(Ingress { metadata: meta, spec: Some(i.spec.clone().unwrap_or(default)), ..Default::default() })
}

/// The OpenShift Route API (`route.openshift.io/v1`), with its resource name as published.
pub fn route_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("route.openshift.io", "v1", "Route"), "routes")
}

/// The Prometheus Operator's ServiceMonitor API (`monitoring.coreos.com/v1`).
pub fn service_monitor_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("monitoring.coreos.com", "v1", "ServiceMonitor"),
        "servicemonitors",
    )
}

/// An object of an optional API (Route, ServiceMonitor) named after the service.
fn dynamic(input: &Input, ar: &ApiResource, component: &str, spec: serde_json::Value) -> DynamicObject {
    let name = name_of(input.service);
    let mut obj = DynamicObject::new(&name, ar).data(json!({ "spec": spec }));
    obj.metadata = meta(input.service, &name, component);
    obj
}

fn route(input: &Input) -> Option<DynamicObject> {
    let svc = input.service;
    let r = svc.spec.expose.as_ref()?.route.as_ref().filter(|r| r.enabled == Some(true))?;
    if input.platform != Platform::Openshift && !input.capabilities.routes {
        return None;
    }
    let mut spec = json!({
        "to": {"kind": "Service", "name": name_of(svc), "weight": 100},
        "port": {"targetPort": "http"},
        "tls": {"termination": "edge", "insecureEdgeTerminationPolicy": "Redirect"},
    });
    if let Some(h) = &r.host {
        spec["host"] = json!(h);
    }
    Some(dynamic(input, &route_resource(), "inference", spec))
}

fn service_monitor(input: &Input) -> Option<DynamicObject> {
    let svc = input.service;
    let m = svc.spec.metrics.as_ref().filter(|m| m.enabled == Some(true))?;
    if !input.capabilities.service_monitors {
        return None;
    }
    let sm = m.service_monitor.clone().unwrap_or_default();
    let mut endpoint = json!({"port": "http", "path": "/metrics"});
    if let Some(i) = sm.interval {
        endpoint["interval"] = json!(i);
    }
    if let Some(t) = sm.scrape_timeout {
        endpoint["scrapeTimeout"] = json!(t);
    }
    let spec = json!({"selector": {"matchLabels": selector_labels(&name_of(svc))}, "endpoints": [endpoint]});
    let mut obj = dynamic(input, &service_monitor_resource(), "metrics", spec);
    if let Some(extra) = sm.additional_labels {
        obj.metadata.labels.get_or_insert_with(BTreeMap::new).extend(extra);
    }
    if let Some(a) = sm.annotations {
        obj.metadata.annotations.get_or_insert_with(BTreeMap::new).extend(a);
    }
    Some(obj)
}

/// `2x h100-sxm-80gb`, the status accelerator string; `2 nodes x 8x h100-sxm-80gb` for a group.
pub fn accelerator_string(profile: &Profile, group: &Group) -> String {
    let per_pod = format!("{}x {}", profile.devices_per_pod(), group.product);
    if profile.multi_node() { format!("{} nodes x {per_pod}", profile.nodes) } else { per_pod }
}

/// Short description used in events.
pub fn describe(profile: &Profile) -> String {
    format!("{} ({} {})", profile.name, enum_str(&profile.kpi), enum_str(&profile.precision))
}

#[cfg(test)]
mod tests;
