//! Dynamic Resource Allocation (`spec.draResources`): the ResourceClaimTemplates the operator
//! owns (`resource.k8s.io/v1`), the pod's `resourceClaims` and the engine container's
//! `resources.claims`. A pod with claims requests no extended resource for its devices.
//!
//! The v1 template is typed locally over k8s-openapi's `v1beta2` field types (same schema for
//! every field written here): the crate's `v1_33` build (DESIGN's minimum) has no v1 module.

use k8s_openapi::api::core::v1::{PodResourceClaim, ResourceClaim};
use k8s_openapi::api::resource::v1beta2::{
    CELDeviceSelector, DeviceClaim, DeviceRequest, DeviceSelector, ExactDeviceRequest, ResourceClaimSpec,
    ResourceClaimTemplateSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};

use super::{Input, RenderError, labels, meta, name_of};
use crate::api::{DraAttributeOp, DraDeviceSpec, DraResource, OIMService};

/// The device class (and driver) assumed when neither the spec nor the selected devices name
/// one; NIM's default.
pub const DEFAULT_DEVICE_CLASS: &str = "gpu.nvidia.com";

/// `resource.k8s.io/v1` ResourceClaimTemplate (namespaced).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ResourceClaimTemplate {
    /// Standard metadata.
    pub metadata: ObjectMeta,
    /// The claim each pod gets.
    pub spec: ResourceClaimTemplateSpec,
}

impl k8s_openapi::Resource for ResourceClaimTemplate {
    const API_VERSION: &'static str = "resource.k8s.io/v1";
    const GROUP: &'static str = "resource.k8s.io";
    const KIND: &'static str = "ResourceClaimTemplate";
    const VERSION: &'static str = "v1";
    const URL_PATH_SEGMENT: &'static str = "resourceclaimtemplates";
    type Scope = k8s_openapi::NamespaceResourceScope;
}

impl k8s_openapi::ListableResource for ResourceClaimTemplate {
    const LIST_KIND: &'static str = "ResourceClaimTemplateList";
}

impl k8s_openapi::Metadata for ResourceClaimTemplate {
    type Ty = ObjectMeta;
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// The service's DRA entries (empty when it uses the device plugin).
pub fn entries(svc: &OIMService) -> &[DraResource] {
    svc.spec.dra_resources.as_deref().unwrap_or_default()
}

/// Whether the service's devices come through DRA claims.
pub fn uses_dra(svc: &OIMService) -> bool {
    !entries(svc).is_empty()
}

/// The pod-level name of entry `i`.
fn pod_claim_name(i: usize) -> String {
    format!("dra-{i}")
}

/// The name of the template the operator creates for entry `i`.
pub fn template_name(svc: &OIMService, i: usize, generate_name: Option<&str>) -> String {
    format!("{}-{}-{i}", name_of(svc), generate_name.unwrap_or("dra"))
}

/// Refuses a named ResourceClaim (`resourceClaimName`) the service would share between pods: a
/// claim is allocated once, on one node, so a second pod either lands on the same devices (two
/// engines on one GPU) or waits forever on another node.
pub fn check_shared_claims(input: &Input) -> Result<(), RenderError> {
    let spec = &input.service.spec;
    // As the CEL rule counts them: the autoscaler's bound only while it is on.
    let replicas = match spec.scale.as_ref().filter(|s| s.enabled == Some(true)) {
        Some(scale) => scale.hpa.as_ref().map_or(1, |h| h.max_replicas),
        None => spec.replicas.unwrap_or(1),
    }
    .max(1);
    let pods_per_replica = input.profile.nodes.max(1) as i64;
    let pods = i64::from(replicas) * pods_per_replica;
    if pods <= 1 {
        return Ok(());
    }
    match entries(input.service).iter().position(|e| e.resource_claim_name.is_some()) {
        None => Ok(()),
        Some(i) => Err(RenderError::InvalidSpec {
            field: format!("spec.draResources[{i}].resourceClaimName"),
            message: format!(
                "one ResourceClaim is allocated once, on one node, but this service runs up to {pods} pods ({replicas} replica(s) x {pods_per_replica} pod(s) of profile {}); use claimCreationSpec or resourceClaimTemplateName so each pod gets its own claim, or run one replica of a single-node profile",
                input.profile.name
            ),
        }),
    }
}

/// `spec.resourceClaims` of the pod: the user's claim or template, or the operator's template.
pub fn pod_claims(svc: &OIMService) -> Vec<PodResourceClaim> {
    entries(svc)
        .iter()
        .enumerate()
        .map(|(i, e)| PodResourceClaim {
            name: pod_claim_name(i),
            resource_claim_name: e.resource_claim_name.clone(),
            resource_claim_template_name: e
                .resource_claim_template_name
                .clone()
                .or_else(|| e.claim_creation_spec.as_ref().map(|c| template_name(svc, i, c.generate_name.as_deref()))),
        })
        .collect()
}

/// `resources.claims` of the engine container: each claim whole, or the requests it names.
pub fn container_claims(svc: &OIMService) -> Vec<ResourceClaim> {
    let mut out = vec![];
    for (i, e) in entries(svc).iter().enumerate() {
        match e.requests.as_deref().filter(|r| !r.is_empty()) {
            None => out.push(ResourceClaim { name: pod_claim_name(i), request: None }),
            Some(requests) => {
                out.extend(requests.iter().map(|r| ResourceClaim { name: pod_claim_name(i), request: Some(r.clone()) }))
            }
        }
    }
    out
}

/// The templates the operator owns, one per `claimCreationSpec`.
pub fn templates(input: &Input) -> Result<Vec<ResourceClaimTemplate>, RenderError> {
    let svc = input.service;
    // Each pod claims its own node's share: a group spanning nodes splits the devices.
    let devices = input.profile.devices_per_pod();
    let mut out = vec![];
    for (i, e) in entries(svc).iter().enumerate() {
        let Some(spec) = &e.claim_creation_spec else { continue };
        let requests = spec
            .devices
            .iter()
            .enumerate()
            .map(|(j, d)| request(input, d, devices, &format!("spec.draResources[{i}].claimCreationSpec.devices[{j}]")))
            .collect::<Result<Vec<_>, _>>()?;
        let name = template_name(svc, i, spec.generate_name.as_deref());
        out.push(ResourceClaimTemplate {
            metadata: meta(svc, &name, "devices"),
            spec: ResourceClaimTemplateSpec {
                // The claims made from it carry the service's labels, so they can be traced back.
                metadata: Some(ObjectMeta { labels: Some(labels(svc, "devices")), ..Default::default() }),
                spec: ResourceClaimSpec {
                    devices: Some(DeviceClaim { requests: Some(requests), ..Default::default() }),
                },
            },
        });
    }
    Ok(out)
}

/// One device request: the class (default: the driver of the selected devices), the count
/// (default: the profile's), and the selectors as CEL. Without selectors of its own it is pinned
/// to the product selection planned for, so the scheduler cannot allocate a smaller device.
fn request(input: &Input, d: &DraDeviceSpec, devices: u32, field: &str) -> Result<DeviceRequest, RenderError> {
    let planned = input.group.dra.as_ref();
    let class = d
        .device_class_name
        .clone()
        .or_else(|| planned.map(|p| p.driver.clone()))
        .unwrap_or_else(|| DEFAULT_DEVICE_CLASS.into());
    let driver = d.driver_name.clone().unwrap_or_else(|| class.clone());
    let count = match d.count {
        Some(n) => n,
        None => i64::from(devices),
    };
    let mut selectors = vec![];
    for (k, a) in d.attribute_selectors.iter().flatten().enumerate() {
        selectors.push(attribute_cel(&driver, a).ok_or_else(|| RenderError::InvalidSpec {
            field: format!("{field}.attributeSelectors[{k}].value"),
            message: "set exactly one of boolValue, intValue, stringValue or versionValue".into(),
        })?);
    }
    for c in d.capacity_selectors.iter().flatten() {
        let (domain, name) = qualified(&driver, &c.key);
        selectors.push(format!(
            "device.capacity[{}].{name}.compareTo(quantity({})) == 0",
            quote(domain),
            quote(&c.value)
        ));
    }
    selectors.extend(d.cel_expressions.iter().flatten().cloned());
    let defaulted_class = d.device_class_name.is_none() && d.driver_name.is_none();
    if selectors.is_empty()
        && defaulted_class
        && let Some((drv, product)) = planned.and_then(|p| p.product_name.as_ref().map(|n| (&p.driver, n)))
    {
        selectors.push(format!("device.attributes[{}].productName == {}", quote(drv), quote(product)));
    }
    Ok(DeviceRequest {
        name: d.name.clone(),
        exactly: Some(ExactDeviceRequest {
            device_class_name: class,
            allocation_mode: Some("ExactCount".into()),
            count: Some(count),
            selectors: Some(
                selectors
                    .into_iter()
                    .map(|expression| DeviceSelector { cel: Some(CELDeviceSelector { expression }) })
                    .collect(),
            )
            .filter(|s: &Vec<DeviceSelector>| !s.is_empty()),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// `gpu.nvidia.com/productName` -> (`gpu.nvidia.com`, `productName`); a short key takes the
/// driver's domain.
fn qualified<'a>(driver: &'a str, key: &'a str) -> (&'a str, &'a str) {
    key.rsplit_once('/').unwrap_or((driver, key))
}

/// A CEL string literal.
fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// An attribute selector as DRA's CEL; None when its value sets no field.
fn attribute_cel(driver: &str, a: &crate::api::DraDeviceAttributeSelector) -> Option<String> {
    let (domain, name) = qualified(driver, &a.key);
    let op = match a.op.unwrap_or(DraAttributeOp::Equal) {
        DraAttributeOp::Equal => "==",
        DraAttributeOp::NotEqual => "!=",
        DraAttributeOp::GreaterThan => ">",
        DraAttributeOp::GreaterThanOrEqual => ">=",
        DraAttributeOp::LessThan => "<",
        DraAttributeOp::LessThanOrEqual => "<=",
    };
    let attr = format!("device.attributes[{}].{name}", quote(domain));
    let v = &a.value;
    if let Some(version) = &v.version_value {
        return Some(format!("{attr}.compareTo(semver({})) {op} 0", quote(version)));
    }
    let value = v
        .bool_value
        .map(|b| b.to_string())
        .or_else(|| v.int_value.map(|i| i.to_string()))
        .or_else(|| v.string_value.as_deref().map(quote))?;
    Some(format!("{attr} {op} {value}"))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;

    use k8s_openapi::api::core::v1::Container;

    use super::*;
    use crate::hardware::slices::{ResourceClaim as DraClaim, ResourceSlice, by_node};
    use crate::profile::catalog::DirCatalog;
    use crate::profile::engines::Engines;
    use crate::profile::select::{NodeView, Request, select};
    use crate::render::{Capabilities, Platform, Weights, render};

    /// A DRA driver's slice for `node` with `n` devices named `product`.
    fn slice(node: &str, n: usize, product: &str) -> ResourceSlice {
        let devices: String = (0..n)
            .map(|i| {
                format!(
                    "    - name: gpu-{i}\n      attributes:\n        type: {{string: gpu}}\n        productName: {{string: {product}}}\n      capacity:\n        memory: {{value: 81559Mi}}\n"
                )
            })
            .collect();
        serde_saphyr::from_str(&format!(
            "metadata: {{name: {node}-gpu}}\nspec:\n  driver: gpu.nvidia.com\n  nodeName: {node}\n  pool: {{name: {node}, generation: 1, resourceSliceCount: 1}}\n  devices:\n{devices}"
        ))
        .unwrap()
    }

    /// A node with no agent inventory and no extended resources: only its slices describe it.
    fn dra_node(name: &str, slices: &[ResourceSlice]) -> NodeView {
        dra_node_with(name, slices, &[])
    }

    fn dra_node_with(name: &str, slices: &[ResourceSlice], claims: &[DraClaim]) -> NodeView {
        let mut view =
            NodeView { name: name.into(), ready: true, allocatable: Some(BTreeMap::new()), ..Default::default() };
        view.dra = by_node(slices, claims).remove(name).unwrap_or_default();
        view
    }

    /// A claim the scheduler allocated `device` of the node's pool to, made from `service`'s
    /// template when given.
    fn allocated(node: &str, device: &str, service: Option<&str>) -> DraClaim {
        let labels = service
            .map(|s| {
                format!("  labels: {{app.kubernetes.io/managed-by: oim-operator, app.kubernetes.io/instance: {s}}}\n")
            })
            .unwrap_or_default();
        serde_saphyr::from_str(&format!(
            "metadata:\n  name: c-{device}\n  namespace: team-a\n{labels}status:\n  allocation:\n    devices:\n      results:\n        - {{driver: gpu.nvidia.com, pool: {node}, device: {device}, request: gpus}}\n"
        ))
        .unwrap()
    }

    fn service(extra: &str) -> OIMService {
        service_of("llama70b", "meta-llama/Llama-3.1-70B-Instruct", "latency", extra)
    }

    fn service_of(name: &str, model: &str, kpi: &str, extra: &str) -> OIMService {
        let mut svc: OIMService = serde_saphyr::from_str(&format!(
            "apiVersion: oim.opea.dev/v1alpha1\nkind: OIMService\nmetadata: {{name: {name}}}\nspec:\n  model: {{name: {model}}}\n  profile: {{kpi: {kpi}}}\n{extra}"
        ))
        .unwrap();
        svc.metadata.namespace = Some("team-a".into());
        svc.metadata.uid = Some("0b6c5a4e-0000-4000-8000-000000000002".into());
        svc
    }

    const GENERATED: &str = "  draResources:\n    - claimCreationSpec:\n        devices:\n          - name: gpus\n";

    /// The seed catalog: summaries for selection, documents by name for rendering.
    struct Seed(Vec<crate::profile::Profile>);

    impl Seed {
        fn list(&self, model: &str) -> Vec<crate::profile::catalog::ProfileSummary> {
            let of = |p| crate::profile::catalog::ProfileSummary::of(p, "sha256:x".into(), "seed".into());
            self.0.iter().filter(|p| p.model == model).map(of).collect()
        }
        fn fetch(&self, s: &crate::profile::catalog::ProfileSummary) -> Option<crate::profile::Profile> {
            self.0.iter().find(|p| p.name == s.name).cloned()
        }
    }

    fn catalog() -> Seed {
        let dir = DirCatalog::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles")).unwrap();
        Seed(dir.entries().map(|(_, _, p)| p.clone()).collect())
    }

    /// Selects on `nodes` and renders the winner, as the operator does.
    fn select_and_render(svc: &OIMService, nodes: &[NodeView]) -> Result<crate::render::Rendered, String> {
        let cat = catalog();
        let req = Request::for_service(svc);
        let engines = Engines::builtin();
        let sel = select(&req, &cat.list(&req.model), nodes, &[], &engines);
        let chosen = sel.selected.ok_or_else(|| {
            let nodes: Vec<String> = sel.unusable.iter().map(|u| u.message.clone()).collect();
            nodes.join("\n")
        })?;
        // A generated profile comes with its document; a published one from the catalog.
        let profile = chosen.document.clone().or_else(|| cat.fetch(&chosen.profile)).unwrap();
        render(&Input {
            service: svc,
            profile: &profile,
            digest: "sha256:abc",
            source: "test",
            selection: Default::default(),
            group: &chosen.group,
            weights: Weights::Hub,
            platform: Platform::Kubernetes,
            capabilities: Capabilities { dra: true, leader_worker_sets: true, ..Default::default() },
            engines: &engines,
            device_groups: vec![],
        })
        .map_err(|e| e.to_string())
    }

    fn engine(r: &crate::render::Rendered) -> &Container {
        &r.deployment.as_ref().unwrap().spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0]
    }

    #[test]
    fn two_h100s_in_a_slice_select_the_tp2_profile_and_the_pod_claims_them_instead_of_nvidia_gpu() {
        let nodes = [dra_node("gpu-node-1", &[slice("gpu-node-1", 2, "NVIDIA H100 80GB HBM3")])];
        let r = select_and_render(&service(GENERATED), &nodes).unwrap();
        let c = engine(&r);
        let res = c.resources.as_ref().unwrap();
        assert!(!res.limits.as_ref().unwrap().contains_key("nvidia.com/gpu"), "the claim supplies the devices");
        assert!(!res.requests.as_ref().unwrap().contains_key("nvidia.com/gpu"));
        assert_eq!(res.claims.as_ref().unwrap()[0].name, "dra-0");
        assert!(c.args.as_ref().unwrap().windows(2).any(|w| w == ["--tensor-parallel-size", "2"]), "TP2 profile");
        let pod = r.deployment.as_ref().unwrap().spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        let claim = &pod.resource_claims.as_ref().unwrap()[0];
        assert_eq!(claim.resource_claim_template_name.as_deref(), Some("llama70b-dra-0"));
        assert!(pod.node_selector.as_ref().is_none_or(|s| !s.contains_key(crate::hardware::inventory::LABEL_PRODUCT)));
        // The operator's template asks the driver's class for the profile's 2 devices of the
        // planned product.
        assert_eq!(r.resource_claim_templates.len(), 1);
        let t = &r.resource_claim_templates[0];
        assert_eq!(t.metadata.name.as_deref(), Some("llama70b-dra-0"));
        assert_eq!(t.metadata.owner_references.as_ref().unwrap()[0].kind, "OIMService");
        let req = &t.spec.spec.devices.as_ref().unwrap().requests.as_ref().unwrap()[0];
        let exact = req.exactly.as_ref().unwrap();
        assert_eq!(
            (req.name.as_str(), exact.device_class_name.as_str(), exact.count),
            ("gpus", "gpu.nvidia.com", Some(2))
        );
        let cel = &exact.selectors.as_ref().unwrap()[0].cel.as_ref().unwrap().expression;
        assert_eq!(cel, r#"device.attributes["gpu.nvidia.com"].productName == "NVIDIA H100 80GB HBM3""#);
        let objects = r.objects();
        let kinds: Vec<&str> = objects.iter().map(|o| o["kind"].as_str().unwrap()).collect();
        let at = |k| kinds.iter().position(|x| *x == k).unwrap();
        assert!(at("ResourceClaimTemplate") < at("Deployment"), "the template exists before pods need it");
        assert_eq!(objects[at("ResourceClaimTemplate")]["apiVersion"], "resource.k8s.io/v1");
    }

    #[test]
    fn devices_allocated_to_other_claims_are_not_free_but_the_services_own_are() {
        let slices = [slice("gpu-node-1", 2, "NVIDIA H100 80GB HBM3")];
        let svc = service(GENERATED);
        let req = Request::for_service(&svc);
        for holder in [Some("someone-else"), None] {
            let nodes = [dra_node_with("gpu-node-1", &slices, &[allocated("gpu-node-1", "gpu-1", holder)])];
            let sel = select(&req, &catalog().list(&req.model), &nodes, &[], &Engines::builtin());
            let tp2 = sel.rejected.iter().find(|r| r.name == "vllm-nvidia-h100-sxm-80gb-x2-latency-bf16").unwrap();
            assert!(
                tp2.reason.contains("InsufficientFreeAccelerators") && tp2.reason.contains("free: 1 on gpu-node-1"),
                "{holder:?}: {}",
                tp2.reason
            );
        }
        // The service's own claim (its running replica) does not count against it.
        let own = dra_node_with("gpu-node-1", &slices, &[allocated("gpu-node-1", "gpu-1", Some("llama70b"))]);
        assert!(select_and_render(&svc, &[own]).is_ok());
    }

    #[test]
    fn without_slices_nothing_fits_and_each_node_says_why() {
        let svc = service(GENERATED);
        let bare = dra_node("gpu-node-1", &[]);
        let err = select_and_render(&svc, &[bare]).unwrap_err();
        assert!(err.contains("node gpu-node-1 publishes no accelerator in a ResourceSlice"), "{err}");
        assert!(err.contains("install the vendor's DRA driver"), "{err}");
        let unknown = dra_node("gpu-node-1", &[slice("gpu-node-1", 2, "NVIDIA Z900")]);
        let err = select_and_render(&svc, &[unknown]).unwrap_err();
        assert!(err.contains(r#"productName "NVIDIA Z900" that the device table does not list"#), "{err}");
    }

    #[test]
    fn a_fixed_count_narrows_selection_and_user_claims_pass_through_with_their_requests() {
        // count 2 on a node with 4 H100s: the TP2 profile, never a TP1 or TP4 one.
        let nodes = [dra_node("n", &[slice("n", 4, "NVIDIA H100 80GB HBM3")])];
        let fixed = format!(
            "{GENERATED}            count: 2\n            deviceClassName: gpu.example.com\n            attributeSelectors:\n              - key: architecture\n                value: {{stringValue: Hopper}}\n              - key: gpu.nvidia.com/cudaComputeCapability\n                op: GreaterThanOrEqual\n                value: {{versionValue: 9.0.0}}\n            capacitySelectors:\n              - key: memory\n                value: 80Gi\n"
        );
        let r = select_and_render(&service(&fixed), &nodes).unwrap();
        let exact = r.resource_claim_templates[0].spec.spec.devices.as_ref().unwrap().requests.as_ref().unwrap()[0]
            .exactly
            .clone()
            .unwrap();
        assert_eq!((exact.device_class_name.as_str(), exact.count), ("gpu.example.com", Some(2)));
        let cel: Vec<String> = exact.selectors.unwrap().into_iter().map(|s| s.cel.unwrap().expression).collect();
        assert_eq!(
            cel,
            [
                r#"device.attributes["gpu.example.com"].architecture == "Hopper""#,
                r#"device.attributes["gpu.nvidia.com"].cudaComputeCapability.compareTo(semver("9.0.0")) >= 0"#,
                r#"device.capacity["gpu.example.com"].memory.compareTo(quantity("80Gi")) == 0"#,
            ]
        );
        // An existing claim and a user's template: referenced, nothing created.
        let users = "  draResources:\n    - resourceClaimName: shared-gpus\n      requests: [big]\n    - resourceClaimTemplateName: team-template\n";
        let r = select_and_render(&service(users), &nodes).unwrap();
        assert!(r.resource_claim_templates.is_empty());
        let pod = r.deployment.as_ref().unwrap().spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        let claims = pod.resource_claims.as_ref().unwrap();
        assert_eq!(claims[0].resource_claim_name.as_deref(), Some("shared-gpus"));
        assert_eq!(claims[1].resource_claim_template_name.as_deref(), Some("team-template"));
        let container = engine(&r).resources.as_ref().unwrap().claims.clone().unwrap();
        assert_eq!(
            container,
            [
                ResourceClaim { name: "dra-0".into(), request: Some("big".into()) },
                ResourceClaim { name: "dra-1".into(), request: None }
            ]
        );
    }

    #[test]
    fn the_device_plugin_path_is_unchanged_and_a_cluster_without_dra_is_refused_by_name() {
        // A service without draResources never counts slice devices.
        let nodes = [dra_node("n", &[slice("n", 2, "NVIDIA H100 80GB HBM3")])];
        let plain = service("");
        assert!(select_and_render(&plain, &nodes).is_err(), "no extended resource anywhere: nothing fits");
        let svc = service(GENERATED);
        let cat = catalog();
        let req = Request::for_service(&svc);
        let sel = select(&req, &cat.list(&req.model), &nodes, &[], &Engines::builtin());
        let chosen = sel.selected.unwrap();
        let profile = cat.fetch(&chosen.profile).unwrap();
        let err = render(&Input {
            service: &svc,
            profile: &profile,
            digest: "",
            source: "",
            selection: Default::default(),
            group: &chosen.group,
            weights: Weights::Hub,
            platform: Platform::Kubernetes,
            capabilities: Capabilities::default(),
            engines: &Engines::builtin(),
            device_groups: vec![],
        })
        .unwrap_err();
        assert!(
            err.to_string().starts_with("spec.draResources: this cluster does not serve resource.k8s.io/v1"),
            "{err}"
        );
    }

    #[test]
    fn a_group_spanning_two_slice_published_h100_nodes_claims_eight_devices_per_pod() {
        let nodes = ["h100-a", "h100-b"].map(|n| dra_node(n, &[slice(n, 8, "NVIDIA H100 80GB HBM3")]));
        let svc = service_of("big", "meta-llama/Llama-3.1-405B-Instruct", "throughput", GENERATED);
        let r = select_and_render(&svc, &nodes).unwrap();
        assert!(r.leader_worker_set.is_some(), "405B in bf16 needs both nodes: a LeaderWorkerSet group");
        let exact = r.resource_claim_templates[0].spec.spec.devices.as_ref().unwrap().requests.as_ref().unwrap()[0]
            .exactly
            .clone()
            .unwrap();
        assert_eq!(exact.count, Some(8), "each pod claims its own node's 8 GPUs, not the group's 16");
    }

    #[test]
    fn an_existing_claim_shared_by_several_pods_is_refused_with_the_field_and_the_fix() {
        let nodes = [dra_node("n", &[slice("n", 4, "NVIDIA H100 80GB HBM3")])];
        let named = "  draResources:\n    - resourceClaimName: shared-gpus\n";
        assert!(select_and_render(&service(named), &nodes).is_ok(), "one pod may use an existing claim");
        let autoscaler_off = format!("  scale: {{enabled: false, hpa: {{maxReplicas: 3}}}}\n{named}");
        assert!(
            select_and_render(&service(&autoscaler_off), &nodes).is_ok(),
            "an autoscaler switched off runs one pod"
        );
        let two = select_and_render(&service(&format!("  replicas: 2\n{named}")), &nodes).unwrap_err();
        assert!(
            two.starts_with("spec.draResources[0].resourceClaimName: one ResourceClaim is allocated once"),
            "{two}"
        );
        assert!(
            two.contains("up to 2 pods") && two.contains("use claimCreationSpec or resourceClaimTemplateName"),
            "{two}"
        );
        let group = ["h100-a", "h100-b"].map(|n| dra_node(n, &[slice(n, 8, "NVIDIA H100 80GB HBM3")]));
        let big = service_of("big", "meta-llama/Llama-3.1-405B-Instruct", "throughput", named);
        let err = select_and_render(&big, &group).unwrap_err();
        assert!(err.contains("1 replica(s) x 2 pod(s)"), "{err}");
    }
}
