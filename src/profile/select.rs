//! Selection (DESIGN §5, contract), pure: node groups from inventories (and, when given, Node
//! objects and pods), feasibility with a one-line reason per rejected profile, the ranking, and
//! a generated profile when nothing published fits.

use std::borrow::Cow;
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Node, Pod, PodSpec, PodStatus, ResourceRequirements, Taint, Toleration};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde::Serialize;

use crate::api::{Kpi, Precision, Vendor};
use crate::hardware::inventory::{INVENTORY_ANNOTATION, Inventory};
use crate::profile::catalog::ProfileSummary;
use crate::profile::engines::Engines;
use crate::profile::estimate::roofline::{self, DevicePerf};
use crate::profile::estimate::{self, Arch};
use crate::profile::oci::enum_str;
use crate::profile::schema::{Engine, Parallelism, Performance, Profile, ProfileAccelerator, ProfileResources};

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
/// `performance.source` of generated profiles: the figures are the roofline's, not measured.
pub const ESTIMATED: &str = "estimated";

/// Label the renderer puts on every pod of a service; used to leave its own pods out of the
/// free-device count.
pub const INSTANCE_LABEL: &str = "app.kubernetes.io/instance";
/// Label marking pods the operator manages.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";

/// One node as selection sees it.
#[derive(Debug, Clone, Default)]
pub struct NodeView {
    /// Name.
    pub name: String,
    /// Its published hardware.
    pub inventory: Inventory,
    /// `status.allocatable`; None offline (every device usable).
    pub allocatable: Option<BTreeMap<String, String>>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Taints.
    pub taints: Vec<Taint>,
    /// Cordoned.
    pub unschedulable: bool,
    /// Ready condition.
    pub ready: bool,
    /// Devices DRA drivers publish for this node in ResourceSlices.
    pub dra: crate::hardware::slices::NodeDevices,
}

impl NodeView {
    /// A node known only by its inventory (offline: every device usable and free).
    pub fn offline(inventory: Inventory) -> NodeView {
        NodeView { name: inventory.node.clone(), inventory, ready: true, ..Default::default() }
    }

    /// A Node object; None when it carries no (valid) inventory annotation.
    pub fn from_node(node: &Node) -> Option<NodeView> {
        NodeView::try_from_node(node).ok()
    }

    /// A Node object, or why its inventory annotation cannot be used: missing (no agent yet)
    /// and unparseable (a broken or foreign writer) are different problems with different fixes.
    pub fn try_from_node(node: &Node) -> Result<NodeView, InventoryProblem> {
        let text = node
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(INVENTORY_ANNOTATION))
            .ok_or(InventoryProblem::Missing)?;
        let inventory = Inventory::parse(text).map_err(|e| InventoryProblem::Unparseable(e.to_string()))?;
        Ok(NodeView::with_inventory(node, inventory))
    }

    /// A Node object with `inventory` (an empty one for a node whose devices only DRA drivers
    /// publish: no node agent needed there).
    pub fn with_inventory(node: &Node, inventory: Inventory) -> NodeView {
        let status = node.status.as_ref();
        let spec = node.spec.as_ref();
        NodeView {
            name: node.metadata.name.clone().unwrap_or_default(),
            inventory,
            allocatable: Some(
                status
                    .and_then(|s| s.allocatable.clone())
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0))
                    .collect(),
            ),
            labels: node.metadata.labels.clone().unwrap_or_default(),
            taints: spec.and_then(|s| s.taints.clone()).unwrap_or_default(),
            unschedulable: spec.and_then(|s| s.unschedulable).unwrap_or(false),
            ready: status
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True")),
            dra: Default::default(),
        }
    }
}

/// Why a Node's inventory annotation cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InventoryProblem {
    /// No annotation: the node agent has not run there.
    #[error("has no {INVENTORY_ANNOTATION} annotation; is the node agent running on it?")]
    Missing,
    /// An annotation that does not parse.
    #[error(
        "has an unparseable {INVENTORY_ANNOTATION} annotation ({0}); the node agent rewrites it on its next pass, or remove it"
    )]
    Unparseable(String),
}

/// A pod's claim on accelerators.
#[derive(Debug, Clone, Default)]
pub struct PodUse {
    /// Node it is bound to.
    pub node: String,
    /// Extended-resource requests (resource name -> count).
    pub requests: BTreeMap<String, u32>,
    /// The OIMService it belongs to (`namespace/name`), if the operator manages it.
    pub service: Option<String>,
}

/// `namespace/name` of an OIMService as its pods and requests name it; no namespace is `default`.
pub fn service_id(namespace: Option<&str>, name: &str) -> String {
    format!("{}/{name}", namespace.unwrap_or("default"))
}

impl PodUse {
    /// A bound, non-terminated pod's accelerator requests, counted as the scheduler does:
    /// max(sum over containers, max over init containers) plus the pod overhead, where a
    /// restartable (sidecar) init container also runs beside the containers. Counts saturate:
    /// a huge request never wraps to a small one. None for unbound or finished pods.
    pub fn from_pod(pod: &Pod) -> Option<PodUse> {
        let spec = pod.spec.as_ref()?;
        let node = spec.node_name.clone()?;
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("Pending");
        if matches!(phase, "Succeeded" | "Failed") {
            return None;
        }
        let add = |into: &mut BTreeMap<String, u32>, from: &BTreeMap<String, u32>| {
            for (k, n) in from {
                let e = into.entry(k.clone()).or_insert(0);
                *e = e.saturating_add(*n);
            }
        };
        // Init containers run in order; a regular one runs beside the sidecars started before it.
        let mut sidecars: BTreeMap<String, u32> = BTreeMap::new();
        let mut init_peak: BTreeMap<String, u32> = BTreeMap::new();
        for c in spec.init_containers.iter().flatten() {
            let own = container_devices(c);
            if c.restart_policy.as_deref() == Some("Always") {
                add(&mut sidecars, &own);
                continue;
            }
            let mut with_sidecars = own;
            add(&mut with_sidecars, &sidecars);
            for (k, n) in with_sidecars {
                let e = init_peak.entry(k).or_insert(0);
                *e = (*e).max(n);
            }
        }
        let mut requests = sidecars;
        for c in &spec.containers {
            add(&mut requests, &container_devices(c));
        }
        for (k, n) in init_peak {
            let e = requests.entry(k).or_insert(0);
            *e = (*e).max(n);
        }
        for (k, q) in spec.overhead.iter().flatten().filter(|(k, _)| is_device(k)) {
            let e = requests.entry(k.clone()).or_insert(0);
            *e = e.saturating_add(device_count(&q.0));
        }
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        let service = (labels.get(MANAGED_BY_LABEL).map(String::as_str) == Some("oim-operator"))
            .then(|| labels.get(INSTANCE_LABEL).map(|n| service_id(pod.metadata.namespace.as_deref(), n)))
            .flatten();
        Some(PodUse { node, requests, service })
    }

    /// Strips a watched pod down to what [`PodUse::from_pod`] reads, so a cluster's pods cost
    /// the operator a few hundred bytes each: identity, two labels, node, phase, and the
    /// extended-resource requests and limits.
    pub fn slim(pod: &mut Pod) {
        let m = &mut pod.metadata;
        m.annotations = None;
        m.managed_fields = None;
        m.owner_references = None;
        m.finalizers = None;
        if let Some(labels) = m.labels.as_mut() {
            labels.retain(|k, _| k == MANAGED_BY_LABEL || k == INSTANCE_LABEL);
        }
        if let Some(spec) = pod.spec.take() {
            let keep = |m: Option<BTreeMap<String, Quantity>>| {
                m.map(|m| m.into_iter().filter(|(k, _)| k.contains('/')).collect::<BTreeMap<_, _>>())
            };
            let slim_container = |c: Container| {
                let resources = c.resources.map(|r| ResourceRequirements {
                    requests: keep(r.requests),
                    limits: keep(r.limits),
                    ..Default::default()
                });
                Container { name: c.name, resources, restart_policy: c.restart_policy, ..Default::default() }
            };
            let containers = spec.containers.into_iter().map(slim_container).collect();
            let init_containers = spec.init_containers.map(|cs| cs.into_iter().map(slim_container).collect());
            pod.spec = Some(PodSpec {
                node_name: spec.node_name,
                containers,
                init_containers,
                overhead: keep(spec.overhead),
                ..Default::default()
            });
        }
        let phase = pod.status.take().and_then(|s| s.phase);
        pod.status = Some(PodStatus { phase, ..Default::default() });
    }
}

/// An extended resource that selection counts (not hugepages).
fn is_device(resource: &str) -> bool {
    resource.contains('/') && !resource.starts_with("hugepages")
}

/// One container's devices: the larger of request and limit (the API server makes them equal
/// for extended resources; a limit alone implies the request).
fn container_devices(c: &Container) -> BTreeMap<String, u32> {
    let mut out: BTreeMap<String, u32> = BTreeMap::new();
    let r = c.resources.as_ref();
    let merged = r
        .and_then(|r| r.requests.as_ref())
        .into_iter()
        .flatten()
        .chain(r.and_then(|r| r.limits.as_ref()).into_iter().flatten());
    for (k, q) in merged.filter(|(k, _)| is_device(k)) {
        let e = out.entry(k.clone()).or_insert(0);
        *e = (*e).max(device_count(&q.0));
    }
    out
}

/// A whole-number quantity (`8`, `1k`, `2Ki`) as a device count, saturating at `u32::MAX`;
/// anything else (the API server refuses fractional extended resources) counts 0.
pub fn device_count(q: &str) -> u32 {
    const SUFFIXES: &[(&str, u64)] = &[
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("Pi", 1 << 50),
        ("Ei", 1 << 60),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
        ("P", 1_000_000_000_000_000),
        ("E", 1_000_000_000_000_000_000),
    ];
    let q = q.trim();
    let (digits, scale) = SUFFIXES.iter().find_map(|(s, m)| q.strip_suffix(s).map(|d| (d, *m))).unwrap_or((q, 1));
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return 0;
    }
    // Digits beyond u64 saturate too.
    let n = digits.parse::<u64>().unwrap_or(u64::MAX);
    u32::try_from(n.saturating_mul(scale)).unwrap_or(u32::MAX)
}

/// What the user asked for (from OIMService spec or CLI flags).
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// Hugging Face id.
    pub model: String,
    /// KPI (default throughput).
    pub kpi: Kpi,
    /// Precision filter.
    pub precision: Option<Precision>,
    /// Tensor-parallelism filter.
    pub tensor_parallelism: Option<u32>,
    /// Vendor filter.
    pub vendor: Option<Vendor>,
    /// Product filter.
    pub product: Option<String>,
    /// A pinned profile name.
    pub pinned: Option<String>,
    /// Generate when nothing published fits.
    pub allow_generated: bool,
    /// Replicas (or hpa.minReplicas) that must fit.
    pub replicas: u32,
    /// The service's own name: its pods do not count against free devices.
    pub service: Option<String>,
    /// The service's node selector.
    pub node_selector: BTreeMap<String, String>,
    /// The service's own tolerations (the accelerator toleration is added per group).
    pub tolerations: Vec<Toleration>,
    /// The cluster has no LeaderWorkerSet API: profiles spanning nodes are rejected. False
    /// offline (`oim render` prints what a cluster with the API would get).
    pub lws_missing: bool,
    /// Devices come through DRA claims (`spec.draResources`): only devices DRA drivers publish
    /// in ResourceSlices count, extended resources do not.
    pub dra: bool,
    /// Devices per replica the service's generated DRA claims request, when fixed.
    pub devices: Option<u32>,
}

impl Request {
    /// A request from a resource's profile selector (OIMService and OIMCache share it), for
    /// `replicas`, with no placement constraints yet.
    pub fn from_selector(model: String, p: &crate::api::ProfileSelector, replicas: u32) -> Request {
        Request {
            model,
            kpi: p.kpi.unwrap_or_default(),
            precision: p.precision,
            tensor_parallelism: p.tensor_parallelism.and_then(|t| u32::try_from(t).ok()),
            vendor: p.accelerator.as_ref().and_then(|a| a.vendor),
            product: p.accelerator.as_ref().and_then(|a| a.product.clone()),
            pinned: p.name.clone(),
            allow_generated: p.allow_generated.unwrap_or(true),
            replicas,
            ..Request::default()
        }
    }

    /// The request an OIMService makes: its selector, the replicas (or `hpa.minReplicas`) that
    /// must fit, its placement, and its own name (its pods do not count against free devices).
    pub fn for_service(svc: &crate::api::OIMService) -> Request {
        let p = svc.spec.profile.clone().unwrap_or_default();
        let replicas = u32::try_from(svc.spec.replicas_to_fit().max(1)).unwrap_or(1);
        let mut req = Request::from_selector(svc.spec.model.name.clone(), &p, replicas);
        req.service = svc.metadata.name.as_deref().map(|n| service_id(svc.metadata.namespace.as_deref(), n));
        req.node_selector = svc.spec.node_selector.clone().unwrap_or_default();
        req.tolerations = svc.spec.tolerations.clone().unwrap_or_default();
        if let Some(dra) = svc.spec.dra_resources.as_deref().filter(|d| !d.is_empty()) {
            req.dra = true;
            req.devices = crate::api::dra::requested_count(dra);
        }
        req
    }

    /// The request an OIMCache's selector makes: every device counts as free (the cache is for
    /// later), and the cache's node selector and tolerations narrow the nodes.
    pub fn for_cache(cache: &crate::api::OIMCache) -> Request {
        let p = cache.spec.profile.clone().unwrap_or_default();
        let mut req = Request::from_selector(cache.spec.model(), &p, 1);
        req.node_selector = cache.spec.node_selector.clone().unwrap_or_default();
        req.tolerations = cache.spec.tolerations.clone().unwrap_or_default();
        req
    }
}

/// The hash of what a service's selection depends on (model, profile selector, placement,
/// replicas): a stored selection made for another key is not kept.
pub fn selection_key(svc: &crate::api::OIMService) -> String {
    use sha2::Digest;
    let s = &svc.spec;
    let mut basis =
        serde_json::json!([s.model, s.profile, s.node_selector, s.tolerations, s.affinity, s.replicas_to_fit()]);
    // Only when set, so the keys of services without DRA stay what they were.
    if let (Some(dra), Some(list)) = (&s.dra_resources, basis.as_array_mut()) {
        list.push(serde_json::json!(dra));
    }
    let d = sha2::Sha256::digest(basis.to_string().as_bytes());
    d.iter().take(12).map(|b| format!("{b:02x}")).collect()
}

/// Candidate nodes with equal (vendor, product, resource, devices per node).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Group {
    /// Vendor.
    pub vendor: Vendor,
    /// Product slug (`cpu` for CPU-only nodes).
    pub product: String,
    /// Extended resource ("" for CPU).
    pub resource_name: String,
    /// Usable devices per node (NUMA nodes for CPU).
    pub devices_per_node: u32,
    /// Memory per device, MiB.
    #[serde(rename = "memoryMiB")]
    pub memory_mib: u64,
    /// CPU flags shared by every node (for CPU groups).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cpu_flags: Vec<String>,
    /// CPU groups: one NUMA node's bandwidth and compute for the roofline (the slowest node's).
    #[serde(skip)]
    pub cpu_perf: Option<DevicePerf>,
    /// Nodes and their free devices.
    pub nodes: BTreeMap<String, u32>,
    /// Devices a DRA driver publishes in ResourceSlices (None: an extended resource, or CPU).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dra: Option<DraSource>,
}

/// Where a group's DRA devices come from.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DraSource {
    /// The driver (and, by convention, its DeviceClass), e.g. `gpu.nvidia.com`.
    pub driver: String,
    /// The devices' `productName` attribute, for the claim's selector.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub product_name: Option<String>,
}

impl Group {
    /// Replicas of `per_replica` devices the free devices can hold.
    pub fn replicas_for(&self, per_replica: u32) -> u32 {
        if per_replica == 0 {
            return 0;
        }
        self.nodes.values().fold(0u32, |sum, f| sum.saturating_add(f / per_replica))
    }

    /// Replicas of `nodes` pods with `per_pod` devices each (a LeaderWorkerSet group per
    /// replica) the free devices can hold: pod slots over the nodes, a group's pods on distinct
    /// slots. `nodes` 1 is [`Group::replicas_for`].
    pub fn groups_for(&self, per_pod: u32, nodes: u32) -> u32 {
        self.replicas_for(per_pod) / nodes.max(1)
    }

    /// Nodes with at least `per_pod` free devices.
    pub fn nodes_with(&self, per_pod: u32) -> usize {
        self.nodes.values().filter(|f| **f >= per_pod).count()
    }

    /// `4x nvidia h100-sxm-80gb on 2 nodes`.
    pub fn describe(&self) -> String {
        format!("{}x {} {} on {} node(s)", self.devices_per_node, self.vendor, self.product, self.nodes.len())
    }
}

/// A group that cannot be used at all, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Unusable {
    /// Node.
    pub node: String,
    /// Machine reason: DevicePluginMissing, PartitionedDevices, NotReady, Cordoned, Taint, NodeSelector.
    pub reason: String,
    /// Human message.
    pub message: String,
}

/// A rejected profile.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rejected {
    /// Profile name.
    pub name: String,
    /// One line with the numbers.
    pub reason: String,
}

/// The chosen profile and group.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Selected {
    /// The profile's summary.
    #[serde(flatten)]
    pub profile: ProfileSummary,
    /// Generated by the estimator.
    pub generated: bool,
    /// The group it runs on.
    pub group: Group,
    /// Why this one.
    pub reason: String,
    /// The generated document, when generated.
    #[serde(skip)]
    pub document: Option<Profile>,
}

/// The outcome.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Selection {
    /// The winner, or None.
    pub selected: Option<Selected>,
    /// Every other profile and why.
    pub rejected: Vec<Rejected>,
    /// Nodes left out and why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unusable: Vec<Unusable>,
    /// Machine reason when nothing was selected: NoFeasibleProfile, PinnedProfileInfeasible.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Whether `tolerations` tolerate `taint` (Kubernetes semantics).
pub fn tolerates(tolerations: &[Toleration], taint: &Taint) -> bool {
    tolerations.iter().any(|t| {
        let effect_ok = t.effect.as_deref().is_none_or(|e| e.is_empty() || e == taint.effect);
        let op = t.operator.as_deref().unwrap_or("Equal");
        let key_ok = match (&t.key, op) {
            (None, "Exists") => true,
            (Some(k), _) if k.is_empty() && op == "Exists" => true,
            (Some(k), "Exists") => *k == taint.key,
            (Some(k), _) => *k == taint.key && t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or(""),
            (None, _) => false,
        };
        effect_ok && key_ok
    })
}

fn accelerator_toleration(resource: &str) -> Toleration {
    Toleration {
        key: Some(resource.into()),
        operator: Some("Exists".into()),
        effect: Some("NoSchedule".into()),
        ..Default::default()
    }
}

/// Node groups for a request: candidate nodes (Ready, not cordoned, matching the selector,
/// every NoSchedule/NoExecute taint tolerated), usable and free devices per node.
pub fn groups(nodes: &[NodeView], pods: &[PodUse], req: &Request) -> (Vec<Group>, Vec<Unusable>) {
    let mut unusable = vec![];
    let mut by_key: BTreeMap<(Vendor, String, String, u32), Group> = BTreeMap::new();
    // Pods that hold devices, by node, without this service's own.
    let mut pods_on: BTreeMap<&str, Vec<&PodUse>> = BTreeMap::new();
    for p in pods.iter().filter(|p| req.service.is_none() || p.service != req.service) {
        pods_on.entry(p.node.as_str()).or_default().push(p);
    }
    for node in nodes {
        let skip = |reason: &str, message: String| Unusable { node: node.name.clone(), reason: reason.into(), message };
        if !node.ready {
            unusable.push(skip("NotReady", format!("node {} is not Ready", node.name)));
            continue;
        }
        if node.unschedulable {
            unusable.push(skip("Cordoned", format!("node {} is cordoned", node.name)));
            continue;
        }
        if let Some((k, v)) = req.node_selector.iter().find(|(k, v)| node.labels.get(*k) != Some(*v)) {
            unusable.push(skip("NodeSelector", format!("node {} does not match nodeSelector {k}={v}", node.name)));
            continue;
        }
        let offered = if req.dra { dra_groups(node, &mut unusable) } else { node_groups(node, &mut unusable) };
        for (group, used_resource) in offered {
            let mut tolerations = req.tolerations.clone();
            if !group.resource_name.is_empty() {
                tolerations.push(accelerator_toleration(&group.resource_name));
            }
            let blocking = node
                .taints
                .iter()
                .find(|t| matches!(t.effect.as_str(), "NoSchedule" | "NoExecute") && !tolerates(&tolerations, t));
            if let Some(t) = blocking {
                unusable.push(skip(
                    "Taint",
                    format!(
                        "node {} has taint {}={}:{} the service does not tolerate",
                        node.name,
                        t.key,
                        t.value.as_deref().unwrap_or(""),
                        t.effect
                    ),
                ));
                continue;
            }
            let used: u32 = match &group.dra {
                // DRA devices are held by allocated ResourceClaims, not by pod requests.
                Some(src) => node.dra.used(&src.driver, &group.product, req.service.as_deref()),
                None => pods_on
                    .get(node.name.as_str())
                    .into_iter()
                    .flatten()
                    .map(|p| p.requests.get(&used_resource).copied().unwrap_or(0))
                    .fold(0, u32::saturating_add),
            };
            let free = group.devices_per_node.saturating_sub(used);
            let key = (group.vendor, group.product.clone(), group.resource_name.clone(), group.devices_per_node);
            let entry = by_key.entry(key).or_insert_with(|| Group { nodes: BTreeMap::new(), ..group.clone() });
            if entry.vendor == Vendor::Cpu {
                entry.cpu_flags.retain(|f| group.cpu_flags.contains(f));
                // Equal NUMA counts, different machines: plan for the smallest and slowest.
                entry.memory_mib = entry.memory_mib.min(group.memory_mib);
                if let (Some(a), Some(b)) = (entry.cpu_perf.take(), group.cpu_perf.clone()) {
                    entry.cpu_perf = Some(a.min(b));
                }
            }
            entry.nodes.insert(node.name.clone(), free);
        }
    }
    (by_key.into_values().collect(), unusable)
}

/// A node's groups of DRA devices (from ResourceSlices), or why it has none. Pods request no
/// extended resource for them: their use is the node's allocated claims.
fn dra_groups(node: &NodeView, unusable: &mut Vec<Unusable>) -> Vec<(Group, String)> {
    if node.dra.devices.is_empty() {
        let mut why = format!(
            "node {} publishes no accelerator in a ResourceSlice (resource.k8s.io/v1), and spec.draResources takes devices only from DRA drivers",
            node.name
        );
        for line in &node.dra.unknown {
            why.push_str("; ");
            why.push_str(line);
        }
        why.push_str(": install the vendor's DRA driver on it (e.g. gpu.nvidia.com), or remove spec.draResources to use the device plugin");
        unusable.push(Unusable { node: node.name.clone(), reason: "NoDraDevices".into(), message: why });
        return vec![];
    }
    node.dra
        .devices
        .iter()
        .map(|d| {
            let g = Group {
                vendor: d.vendor,
                product: d.product.clone(),
                resource_name: d.resource_name.clone(),
                devices_per_node: d.count,
                memory_mib: d.memory_mib,
                cpu_flags: vec![],
                cpu_perf: None,
                nodes: BTreeMap::new(),
                dra: Some(DraSource { driver: d.driver.clone(), product_name: d.product_name.clone() }),
            };
            (g, String::new())
        })
        .collect()
}

/// A node's offerable groups (before free-device accounting), with the resource pods use.
fn node_groups(node: &NodeView, unusable: &mut Vec<Unusable>) -> Vec<(Group, String)> {
    let inv = &node.inventory;
    let mut out = vec![];
    let mut by_resource: BTreeMap<&str, Vec<&crate::hardware::inventory::AcceleratorGroup>> = BTreeMap::new();
    for g in &inv.accelerators {
        by_resource.entry(g.resource_name.as_str()).or_default().push(g);
    }
    for (resource, gs) in by_resource {
        // One resource name over several products: offer the node only as its least capable one.
        let least = gs.iter().min_by_key(|g| (g.memory_mib, g.product.clone())).expect("non-empty");
        let Some(pci) = gs.iter().try_fold(0u32, |sum, g| sum.checked_add(g.count)) else {
            unusable.push(Unusable {
                node: node.name.clone(),
                reason: "InvalidInventory".into(),
                message: format!(
                    "node {} reports more {resource} devices than can be counted ({}); its {INVENTORY_ANNOTATION} annotation is wrong: restart the node agent or fix the annotation",
                    node.name,
                    gs.iter().map(|g| g.count.to_string()).collect::<Vec<_>>().join(" + ")
                ),
            });
            continue;
        };
        let mut memory = least.memory_mib;
        let usable = match &node.allocatable {
            None => pci,
            Some(alloc) => {
                let a: u32 = alloc.get(resource).map(|q| device_count(q)).unwrap_or(0);
                if a == 0 {
                    unusable.push(Unusable {
                        node: node.name.clone(),
                        reason: "DevicePluginMissing".into(),
                        message: format!(
                            "node {} has {pci}x {} {} but allocatable {resource} is 0: install the device plugin",
                            node.name, least.vendor, least.product
                        ),
                    });
                    continue;
                }
                if a > pci {
                    match node.labels.get("nvidia.com/gpu.memory").and_then(|m| m.parse::<u64>().ok()) {
                        Some(m) if least.vendor == Vendor::Nvidia => {
                            memory = m;
                            a
                        }
                        _ => {
                            unusable.push(Unusable {
                                node: node.name.clone(),
                                reason: "PartitionedDevices".into(),
                                message: format!("node {} offers {a} {resource} for {pci} devices (MIG, partitions or time-slicing) and no per-unit memory label", node.name),
                            });
                            continue;
                        }
                    }
                } else {
                    a.min(pci)
                }
            }
        };
        let g = Group {
            vendor: least.vendor,
            product: least.product.clone(),
            resource_name: resource.to_string(),
            devices_per_node: usable,
            memory_mib: memory,
            cpu_flags: vec![],
            cpu_perf: None,
            nodes: BTreeMap::new(),
            dra: None,
        };
        out.push((g, resource.to_string()));
    }
    if inv.accelerators.is_empty()
        && let Some(cpu) = &inv.cpu
    {
        // CPU backend: NUMA nodes are the "devices"; memory per NUMA node.
        let numa = cpu.numa_node_count.max(1);
        let g = Group {
            vendor: Vendor::Cpu,
            product: "cpu".into(),
            resource_name: String::new(),
            devices_per_node: numa,
            memory_mib: inv.memory_mib / u64::from(numa),
            cpu_flags: cpu.flags.clone(),
            cpu_perf: Some(DevicePerf::of_cpu(cpu)),
            nodes: BTreeMap::new(),
            dra: None,
        };
        out.push((g, String::new()));
    }
    out
}

/// The best group for a profile (index into `groups`), or why none fits.
fn place(p: &ProfileSummary, groups: &[Group], replicas: u32) -> Result<usize, String> {
    let product_fits = |g: &Group| {
        p.product == g.product
            || (p.product == "any" && p.min_memory_mib.is_none_or(|m| g.memory_mib >= m))
            || p.vendor == Vendor::Cpu
    };
    let matching: Vec<usize> =
        (0..groups.len()).filter(|&i| groups[i].vendor == p.vendor && product_fits(&groups[i])).collect();
    let want = || format!("{}x {} {}", p.count, p.vendor, p.product);
    let nodes = p.nodes.max(1);
    if matching.is_empty() {
        let offered = groups
            .iter()
            .max_by_key(|g| (g.devices_per_node, g.memory_mib))
            .map(|g| format!("{}x {} {}", g.devices_per_node, g.vendor, g.product));
        return Err(match offered {
            Some(o) => format!("needs {} per node; the largest schedulable group offers {o}", want()),
            None => {
                format!("needs {} per node; no node is schedulable for this service (see the unusable nodes)", want())
            }
        });
    }
    let large_enough: Vec<usize> =
        matching.iter().copied().filter(|&i| groups[i].devices_per_node >= p.count).collect();
    if large_enough.is_empty() {
        let best = matching.iter().map(|&i| groups[i].devices_per_node).max().unwrap_or(0);
        return Err(format!("needs {} per node; the largest schedulable group offers {best}", want()));
    }
    // Most room for replicas wins; the product name breaks ties so runs agree.
    let fitting = large_enough
        .iter()
        .map(|&i| (i, groups[i].groups_for(p.count, nodes)))
        .filter(|(_, r)| *r >= replicas)
        .max_by(|(a, ra), (b, rb)| ra.cmp(rb).then_with(|| groups[*b].product.cmp(&groups[*a].product)));
    match fitting {
        Some((i, _)) => Ok(i),
        None if nodes > 1 => Err(group_shortfall(p.count, nodes, replicas, &p.product, &large_enough, groups)),
        None => {
            let free: Vec<String> =
                large_enough.iter().flat_map(|&i| groups[i].nodes.iter().map(|(n, f)| format!("{f} on {n}"))).collect();
            Err(format!(
                "InsufficientFreeAccelerators: needs {} for each of {replicas} replica(s); free: {}",
                want(),
                free.join(", ")
            ))
        }
    }
}

/// Why no group holds `replicas` groups of `nodes` pods with `per_pod` devices each:
/// "needs 2 nodes with 8 free h100-sxm-80gb each; 1 has (8 on a, 3 on b)".
fn group_shortfall(
    per_pod: u32,
    nodes: u32,
    replicas: u32,
    product: &str,
    candidates: &[usize],
    groups: &[Group],
) -> String {
    let best = candidates.iter().map(|&i| groups[i].nodes_with(per_pod)).max().unwrap_or(0);
    let free: Vec<String> =
        candidates.iter().flat_map(|&i| groups[i].nodes.iter().map(|(n, f)| format!("{f} on {n}"))).collect();
    let product = match (product, candidates.first()) {
        ("any", Some(&i)) => groups[i].product.clone(),
        _ => product.to_string(),
    };
    let total = nodes.saturating_mul(replicas);
    let replicas_note = if replicas > 1 { format!(" ({total} nodes for {replicas} replicas)") } else { String::new() };
    format!(
        "InsufficientFreeAccelerators: needs {nodes} nodes with {per_pod} free {product} each{replicas_note}; {best} {} (free: {})",
        if best == 1 { "has" } else { "have" },
        if free.is_empty() { "none".to_string() } else { free.join(", ") }
    )
}

/// Why a profile spanning nodes cannot run in a cluster without the LeaderWorkerSet API.
pub fn lws_missing_reason(nodes: u32) -> String {
    format!(
        "LeaderWorkerSetMissing: spans {nodes} nodes (a LeaderWorkerSet group), but the cluster has no leaderworkerset.x-k8s.io/v1 API; install LeaderWorkerSet and restart the operator, or choose a single-node profile"
    )
}

/// Rejections for the request's filters.
fn filter(p: &ProfileSummary, req: &Request) -> Option<String> {
    if p.model != req.model {
        return Some(format!("serves {}, not {}", p.model, req.model));
    }
    if let Some(want) = req.precision.filter(|w| *w != p.precision) {
        return Some(format!("precision {} is not the requested {}", enum_str(&p.precision), enum_str(&want)));
    }
    if let Some(n) = req.devices.filter(|n| *n != p.count) {
        return Some(format!("uses {} devices per pod; spec.draResources requests {n}", p.count));
    }
    if let Some(tp) = req.tensor_parallelism.filter(|t| *t != p.tensor_parallelism) {
        return Some(format!("tensor parallelism {} is not the requested {tp}", p.tensor_parallelism));
    }
    if let Some(v) = req.vendor.filter(|v| *v != p.vendor) {
        return Some(format!("vendor {} is not the requested {v}", p.vendor));
    }
    if let Some(prod) = req.product.as_ref().filter(|x| **x != p.product && p.product != "any") {
        return Some(format!("product {} is not the requested {prod}", p.product));
    }
    None
}

/// How far a profile's figures can be trusted, best first: measured at the reference concurrency
/// (the one most measured feasible profiles of the KPI report), measured at another concurrency,
/// estimated (`performance.source: estimated`, and every generated profile: each at the
/// concurrency its own KV cache allows, so estimates compare with each other directly), none.
/// Measured figures always rank before estimated ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Evidence {
    Measured,
    MeasuredElsewhere,
    Estimated,
    None,
}

/// Whether a profile's figures are estimates.
fn estimated(p: &ProfileSummary, generated: bool) -> bool {
    generated || p.estimated
}

/// The evidence a profile brings for `kpi`.
fn evidence(p: &ProfileSummary, kpi: Kpi, generated: bool, reference: Option<u32>) -> Evidence {
    let has = match kpi {
        Kpi::Latency => p.ttft_ms_p50.is_some(),
        Kpi::Throughput | Kpi::Quantization => p.throughput_tokens_per_sec.is_some(),
    };
    match (has, estimated(p, generated)) {
        (false, _) => Evidence::None,
        (true, true) => Evidence::Estimated,
        (true, false) if kpi == Kpi::Quantization || p.concurrency == reference => Evidence::Measured,
        (true, false) => Evidence::MeasuredElsewhere,
    }
}

/// Lower is better: for latency and throughput the evidence, then the figure (figures of the
/// same evidence compare); for quantization the weight bytes, then measured before estimated,
/// then throughput per device.
fn figure_key(
    p: &ProfileSummary,
    kpi: Kpi,
    generated: bool,
    reference: Option<u32>,
    arch: Option<&Arch>,
) -> (Evidence, i64, Evidence, i64) {
    let scaled = |v: f64| (v * 1000.0).round() as i64;
    let per_device = p.throughput_tokens_per_sec.map(|t| t / f64::from(p.total_devices().max(1)));
    let ev = evidence(p, kpi, generated, reference);
    let comparable = matches!(ev, Evidence::Measured | Evidence::Estimated);
    match kpi {
        Kpi::Latency => (ev, p.ttft_ms_p50.filter(|_| comparable).map_or(0, scaled), Evidence::Measured, 0),
        Kpi::Throughput => (ev, per_device.filter(|_| comparable).map_or(0, |t| -scaled(t)), Evidence::Measured, 0),
        Kpi::Quantization => {
            let bytes = arch.map(|a| a.weight_bytes(p.precision)).unwrap_or(f64::MAX / 4.0);
            (Evidence::Measured, (bytes / 1e6) as i64, ev, per_device.map_or(0, |t| -scaled(t)))
        }
    }
}

/// The DESIGN ranking as a sort key (lower ranks first): requested KPI, one node before
/// several (a group costs whole nodes and a network hop per token), published before generated,
/// the KPI's figure (measured before estimated), fewer devices, name.
fn rank_key(
    p: &ProfileSummary,
    generated: bool,
    kpi: Kpi,
    reference: Option<u32>,
    arch: Option<&Arch>,
) -> (bool, bool, bool, (Evidence, i64, Evidence, i64), u32, String) {
    (
        p.kpi != kpi,
        p.nodes > 1,
        generated,
        figure_key(p, kpi, generated, reference, arch),
        p.total_devices(),
        p.name.clone(),
    )
}

/// The concurrency most feasible profiles of the requested KPI report figures at (ties: lowest).
fn reference_concurrency<'a>(profiles: impl Iterator<Item = &'a ProfileSummary>, kpi: Kpi) -> Option<u32> {
    let mut counts: BTreeMap<Option<u32>, usize> = BTreeMap::new();
    for p in profiles.filter(|p| p.kpi == kpi && !p.estimated) {
        let has = match kpi {
            Kpi::Latency => p.ttft_ms_p50.is_some(),
            Kpi::Throughput => p.throughput_tokens_per_sec.is_some(),
            Kpi::Quantization => false,
        };
        if has {
            *counts.entry(p.concurrency).or_default() += 1;
        }
    }
    counts.iter().max_by(|a, b| a.1.cmp(b.1).then_with(|| b.0.cmp(a.0))).and_then(|(c, _)| *c)
}

/// Selects among `profiles` (published) for `req` on `nodes`, generating when allowed from the
/// built-in architecture table.
pub fn select(
    req: &Request,
    profiles: &[ProfileSummary],
    nodes: &[NodeView],
    pods: &[PodUse],
    engines: &Engines,
) -> Selection {
    select_with(req, profiles, nodes, pods, engines, None)
}

/// [`select`] with the model's architecture as read from its `config.json` (hub or
/// `--model-config`); None falls back to the built-in table.
pub fn select_with(
    req: &Request,
    profiles: &[ProfileSummary],
    nodes: &[NodeView],
    pods: &[PodUse],
    engines: &Engines,
    arch: Option<&Arch>,
) -> Selection {
    let arch = arch.or_else(|| estimate::arch(&req.model));
    let replicas = req.replicas.max(1);
    let (groups, unusable) = groups(nodes, pods, req);
    let mut rejected = vec![];
    let mut feasible: Vec<(Cow<'_, ProfileSummary>, bool, usize)> = vec![];
    for p in profiles.iter().filter(|p| p.model == req.model) {
        if let Some(pin) = &req.pinned
            && &p.name != pin
        {
            rejected.push(Rejected { name: p.name.clone(), reason: format!("not the pinned profile {pin}") });
            continue;
        }
        if let Some(why) = filter(p, req) {
            rejected.push(Rejected { name: p.name.clone(), reason: why });
            continue;
        }
        if p.nodes > 1 && req.lws_missing {
            rejected.push(Rejected { name: p.name.clone(), reason: lws_missing_reason(p.nodes) });
            continue;
        }
        match place(p, &groups, replicas) {
            Ok(g) => feasible.push((Cow::Borrowed(p), false, g)),
            Err(why) => rejected.push(Rejected { name: p.name.clone(), reason: why }),
        }
    }
    if let Some(pin) = &req.pinned {
        let reason = if feasible.is_empty() { Some("PinnedProfileInfeasible".to_string()) } else { None };
        if !profiles.iter().any(|p| &p.name == pin) {
            rejected.push(Rejected { name: pin.clone(), reason: format!("no profile named {pin} for {}", req.model) });
        }
        return finish(req, arch, &groups, feasible, rejected, unusable, reason, "pinned by profile.name");
    }
    // Generate when no published profile fits on one node: a generated single-node profile
    // still wins over a published one spanning nodes (which then ranks with the candidates).
    if feasible.iter().all(|(p, _, _)| p.nodes > 1) && req.allow_generated {
        let generated = generate(req, arch, &groups, replicas, engines);
        rejected.extend(generated.failed);
        if !generated.candidates.is_empty() {
            let none_published =
                if feasible.is_empty() { "no published profile fits" } else { "no published profile fits on one node" };
            let mut explanations = BTreeMap::new();
            let mut documents = BTreeMap::new();
            let mut candidates = feasible;
            for c in generated.candidates {
                let summary = ProfileSummary::of(&c.profile, String::new(), "generated".into());
                explanations.insert(c.profile.name.clone(), c.explanation);
                documents.insert(c.profile.name.clone(), c.profile);
                candidates.push((Cow::Owned(summary), true, c.group));
            }
            let mut sel = finish(req, arch, &groups, candidates, rejected, unusable, None, "");
            if let Some(s) = sel.selected.as_mut().filter(|s| s.generated) {
                s.reason = format!(
                    "{none_published}; generated from {} ({}); {}",
                    arch.map_or("the built-in table", |a| a.source.as_str()),
                    explain(&s.profile, req.kpi, &s.group),
                    explanations.remove(&s.profile.name).unwrap_or_default()
                );
                s.document = documents.remove(&s.profile.name);
            }
            return sel;
        }
    }
    finish(req, arch, &groups, feasible, rejected, unusable, None, "")
}

#[allow(clippy::too_many_arguments)]
fn finish(
    req: &Request,
    arch: Option<&Arch>,
    groups: &[Group],
    mut feasible: Vec<(Cow<'_, ProfileSummary>, bool, usize)>,
    mut rejected: Vec<Rejected>,
    unusable: Vec<Unusable>,
    reason: Option<String>,
    why: &str,
) -> Selection {
    let reference = reference_concurrency(feasible.iter().map(|f| f.0.as_ref()), req.kpi);
    feasible.sort_by_cached_key(|(p, generated, _)| rank_key(p, *generated, req.kpi, reference, arch));
    let mut it = feasible.into_iter();
    let selected = it.next().map(|(p, generated, group)| {
        let group = groups[group].clone();
        let reason = if why.is_empty() { explain(&p, req.kpi, &group) } else { why.to_string() };
        Selected { profile: p.into_owned(), generated, group, reason, document: None }
    });
    for (p, generated, _) in it {
        let reason = match &selected {
            Some(w) => ranked_below(&p, generated, &w.profile, w.generated, req.kpi, reference, arch),
            None => "feasible but ranked lower".into(),
        };
        rejected.push(Rejected { name: p.name.clone(), reason });
    }
    let reason = reason.or_else(|| selected.is_none().then(|| "NoFeasibleProfile".to_string()));
    Selection { selected, rejected, unusable, reason }
}

/// Why a feasible profile lost to the winner, by the first ranking rule that separates them.
fn ranked_below(
    p: &ProfileSummary,
    generated: bool,
    w: &ProfileSummary,
    w_generated: bool,
    kpi: Kpi,
    reference: Option<u32>,
    arch: Option<&Arch>,
) -> String {
    let k = enum_str(&kpi);
    if p.kpi != kpi && w.kpi == kpi {
        return format!("feasible, but a {} profile and {k} was requested", enum_str(&p.kpi));
    }
    if p.nodes > 1 && w.nodes <= 1 {
        return format!("feasible, but spans {} nodes and {} fits on one", p.nodes, w.name);
    }
    if generated && !w_generated {
        return "feasible, but generated and a published profile fits".into();
    }
    let per_device = |x: &ProfileSummary| x.throughput_tokens_per_sec.map(|t| t / f64::from(x.total_devices().max(1)));
    let (ev, w_ev) = (evidence(p, kpi, generated, reference), evidence(w, kpi, w_generated, reference));
    if kpi != Kpi::Quantization
        && ev == Evidence::Estimated
        && matches!(w_ev, Evidence::Measured | Evidence::MeasuredElsewhere)
    {
        return format!("feasible, but its {k} figures are estimated and {} has measured ones", w.name);
    }
    let both_estimated = estimated(p, generated) && estimated(w, w_generated);
    match kpi {
        Kpi::Latency if both_estimated && p.ttft_ms_p50.is_some() && w.ttft_ms_p50.is_some() => {
            return format!(
                "feasible, but estimated ttft {:.0} ms vs {:.0} ms for {}",
                p.ttft_ms_p50.unwrap_or_default(),
                w.ttft_ms_p50.unwrap_or_default(),
                w.name
            );
        }
        Kpi::Throughput if both_estimated && per_device(p).is_some() && per_device(w).is_some() => {
            return format!(
                "feasible, but an estimated {:.1} tok/s per device (at concurrency {}) vs {:.1} for {}",
                per_device(p).unwrap_or_default(),
                p.concurrency.unwrap_or(1),
                per_device(w).unwrap_or_default(),
                w.name
            );
        }
        Kpi::Quantization if p.precision != w.precision => {
            if let Some(a) = arch {
                return format!(
                    "feasible, but {} weights are {:.1} GiB vs {:.1} GiB of {} for {}",
                    enum_str(&p.precision),
                    a.weight_bytes(p.precision) / GIB,
                    a.weight_bytes(w.precision) / GIB,
                    enum_str(&w.precision),
                    w.name
                );
            }
        }
        _ => {}
    }
    match kpi {
        Kpi::Latency
            if p.concurrency == w.concurrency
                && p.ttft_ms_p50.is_some()
                && w.ttft_ms_p50.is_some()
                && p.ttft_ms_p50 != w.ttft_ms_p50 =>
        {
            return format!(
                "feasible, but ttft p50 {} ms vs {} ms for {}",
                p.ttft_ms_p50.unwrap_or_default(),
                w.ttft_ms_p50.unwrap_or_default(),
                w.name
            );
        }
        Kpi::Throughput
            if p.concurrency == w.concurrency
                && per_device(p).is_some()
                && per_device(w).is_some()
                && per_device(p) != per_device(w) =>
        {
            return format!(
                "feasible, but {:.0} tok/s per device vs {:.0} for {}",
                per_device(p).unwrap_or_default(),
                per_device(w).unwrap_or_default(),
                w.name
            );
        }
        _ => {}
    }
    if kpi != Kpi::Quantization && ev > w_ev {
        return match p.concurrency {
            Some(c) if ev == Evidence::MeasuredElsewhere => format!(
                "feasible, but its figures were measured at concurrency {c}, not {} like {}'s",
                reference.map_or("unstated".to_string(), |r| r.to_string()),
                w.name
            ),
            _ => format!("feasible, but has no {k} figures and {} has", w.name),
        };
    }
    if p.total_devices() != w.total_devices() {
        return format!("feasible, but uses {} devices vs {} for {}", p.total_devices(), w.total_devices(), w.name);
    }
    format!("feasible; ranked after {} by name", w.name)
}

fn explain(p: &ProfileSummary, kpi: Kpi, g: &Group) -> String {
    let est = if p.estimated { " estimated" } else { "" };
    let figure = match kpi {
        Kpi::Latency => p.ttft_ms_p50.map(|t| format!(",{est} ttft p50 {t} ms")),
        Kpi::Throughput => p
            .throughput_tokens_per_sec
            .map(|t| format!(",{est} {:.0} tok/s per device", t / f64::from(p.total_devices().max(1)))),
        Kpi::Quantization => Some(format!(", {} weights", enum_str(&p.precision))),
    };
    let kpi_note = if p.kpi == kpi {
        format!("best {} profile", enum_str(&kpi))
    } else {
        format!("no feasible {} profile; best {} one", enum_str(&kpi), enum_str(&p.kpi))
    };
    let span = if p.nodes > 1 { format!("{} nodes of ", p.nodes) } else { String::new() };
    format!("{kpi_note}{} on {span}{}", figure.unwrap_or_default(), g.describe())
}

/// A generated profile for one group, with the numbers that explain it.
struct Candidate {
    profile: Profile,
    group: usize,
    explanation: String,
}

/// What generation produced: candidates to rank, and why other groups got none.
struct Generated {
    candidates: Vec<Candidate>,
    failed: Vec<Rejected>,
}

/// The precisions to generate: the requested one; for `quantization`, FP8 where the device
/// runs it, then the checkpoint's own; else the checkpoint's own (a quantized checkpoint is
/// served only at its precision).
fn precisions(req: &Request, a: &Arch, g: &Group, perf: Option<&DevicePerf>) -> Vec<Precision> {
    let native = a.native_precision();
    match req.precision {
        Some(p) => vec![p],
        None if req.kpi == Kpi::Quantization
            && !a.quantized()
            && roofline::supports(g.vendor, perf, Precision::Fp8) =>
        {
            vec![Precision::Fp8, native]
        }
        None => vec![native],
    }
}

/// The roofline device of a group: the device table's entry, or the CPU's NUMA node.
fn group_perf(g: &Group) -> Option<DevicePerf> {
    if g.vendor == Vendor::Cpu { g.cpu_perf.clone() } else { DevicePerf::of_slug(&g.product) }
}

/// Generates profiles for every group the estimator can size (DESIGN §5), each with its
/// estimated figures, for the ranking to compare.
fn generate(req: &Request, arch: Option<&Arch>, groups: &[Group], replicas: u32, engines: &Engines) -> Generated {
    let precision_label = enum_str(&req.precision.unwrap_or(Precision::Bf16));
    let Some(arch) = arch else {
        return Generated {
            candidates: vec![],
            failed: vec![Rejected {
                name: format!("generated-vllm-*-{precision_label}"),
                reason: format!(
                    "{} is not in the built-in architecture table and its config.json was not read (pass --model-config, or let the operator reach the hub), so no profile can be generated; publish one",
                    req.model
                ),
            }],
        };
    };
    let mut candidates: Vec<Candidate> = vec![];
    let mut failed = vec![];
    for (gi, g) in groups.iter().enumerate() {
        if req.vendor.is_some_and(|v| v != g.vendor) || req.product.as_ref().is_some_and(|p| *p != g.product) {
            continue;
        }
        let Some(engine) = engines.get(g.vendor) else { continue };
        let perf = group_perf(g);
        for precision in precisions(req, arch, g, perf.as_ref()) {
            let name = format!("generated-vllm-{}-{}-x*-{}", g.vendor, g.product, enum_str(&precision));
            let mut fail = |reason: String| {
                failed.push(Rejected { name: name.clone(), reason: format!("{}: {reason}", g.describe()) })
            };
            if arch.quantized() && precision != arch.native_precision() {
                fail(format!(
                    "the checkpoint is {}; it is served at that precision only",
                    enum_str(&arch.native_precision())
                ));
                continue;
            }
            if !roofline::supports(g.vendor, perf.as_ref(), precision) {
                fail(format!("{} has no {} kernels in vLLM", g.product, enum_str(&precision)));
                continue;
            }
            let sized = if g.vendor == Vendor::Cpu {
                estimate::size_cpu(arch, precision, g.memory_mib, g.devices_per_node).map(|s| vec![Sized::Cpu(s)])
            } else {
                estimate::size(arch, precision, g.memory_mib, g.devices_per_node)
                    .map(|s| {
                        let mut all = if req.kpi == Kpi::Throughput || req.tensor_parallelism.is_some() {
                            estimate::larger(arch, precision, g.memory_mib, g.devices_per_node, &s)
                        } else {
                            vec![]
                        };
                        all.insert(0, s);
                        all.into_iter().map(Sized::Gpu).collect()
                    })
                    // One node cannot hold it: span nodes, where the cluster can run groups.
                    .or_else(|single| {
                        let multi =
                            estimate::size_multi_node(arch, precision, g.memory_mib, g.devices_per_node, &single)?;
                        if req.lws_missing {
                            return Err(format!("{}; one node: {single}", lws_missing_reason(multi.pipeline)));
                        }
                        Ok(vec![Sized::Gpu(multi)])
                    })
            };
            let mut sized = match sized {
                Ok(s) => s,
                Err(why) => {
                    fail(why);
                    continue;
                }
            };
            // A fixed TP or DRA device count per pod fixes each pod's TP (a group keeps its PP
            // across nodes).
            if let Some(want) = req.tensor_parallelism.or(req.devices) {
                let sizes: Vec<String> = sized.iter().map(|s| format!("TP{}", s.tensor())).collect();
                sized.retain(|s| s.tensor() == want);
                if sized.is_empty() {
                    fail(format!("the estimator sizes {} here, not the requested TP{want}", sizes.join(" or ")));
                    continue;
                }
            }
            for sized in sized {
                let tp = sized.tensor();
                let nodes = sized.pipeline();
                if nodes > 1 && g.groups_for(tp, nodes) < replicas {
                    fail(group_shortfall(tp, nodes, replicas, &g.product, &[gi], groups));
                    continue;
                }
                if g.replicas_for(tp) < replicas {
                    fail(format!("needs {tp}x per replica for {replicas} replica(s), not free"));
                    continue;
                }
                let estimate =
                    perf.as_ref().map(|p| roofline::estimate(arch, precision, p, tp, sized.kv_capacity_tokens()));
                let profile = generated_profile(req, arch, precision, g, &sized, estimate.as_ref(), engine);
                if candidates.iter().any(|c| c.profile.name == profile.name) {
                    continue; // the same product in two node shapes: the first group serves it
                }
                let figures = match (&estimate, &perf) {
                    (Some(e), Some(p)) => format!(
                        "estimated on {} ({:.0} GB/s, {:.0} TFLOPS): ttft {:.0} ms for {} prompt tokens, {:.1} tok/s single stream, {:.0} tok/s at concurrency {} ({:.1} per device)",
                        p.name,
                        p.bandwidth / 1e9,
                        p.flops_of(precision) / 1e12,
                        e.ttft_ms,
                        roofline::PROMPT_TOKENS,
                        e.tokens_per_sec_single,
                        e.tokens_per_sec,
                        e.concurrency,
                        e.tokens_per_sec / f64::from(tp)
                    ),
                    _ => {
                        format!("no performance estimate: the device table has no bandwidth/compute for {}", g.product)
                    }
                };
                candidates.push(Candidate { explanation: format!("{}; {figures}", sized.why()), profile, group: gi });
            }
        }
    }
    if candidates.is_empty() && failed.is_empty() {
        failed.push(Rejected {
            name: format!("generated-vllm-*-{precision_label}"),
            reason: "no schedulable group to generate a profile for".into(),
        });
    }
    Generated { candidates, failed }
}

/// A sizing for either engine.
enum Sized {
    Gpu(estimate::Sizing),
    Cpu(estimate::CpuSizing),
}

impl Sized {
    fn tensor(&self) -> u32 {
        match self {
            Sized::Gpu(s) => s.tensor,
            Sized::Cpu(s) => s.tensor,
        }
    }
    fn pipeline(&self) -> u32 {
        match self {
            Sized::Gpu(s) => s.pipeline.max(1),
            Sized::Cpu(_) => 1,
        }
    }
    fn kv_capacity_tokens(&self) -> f64 {
        match self {
            Sized::Gpu(s) => s.kv_capacity_tokens,
            Sized::Cpu(s) => s.kv_capacity_tokens,
        }
    }
    fn why(&self) -> &str {
        match self {
            Sized::Gpu(s) => &s.why,
            Sized::Cpu(s) => &s.why,
        }
    }
}

fn generated_profile(
    req: &Request,
    arch: &Arch,
    precision: Precision,
    g: &Group,
    sized: &Sized,
    estimate: Option<&roofline::Estimate>,
    engine: &crate::profile::engines::EngineSpec,
) -> Profile {
    let gib = |bytes: f64| (bytes / GIB).ceil() as u64;
    let tp = sized.tensor();
    let mut args = BTreeMap::new();
    let mut env = engine.env.clone();
    let (memory_gib, cpu) = match sized {
        Sized::Gpu(s) => {
            args.insert("max-model-len".to_string(), serde_json::json!(s.max_model_len));
            args.insert("gpu-memory-utilization".to_string(), serde_json::json!(estimate::GPU_MEMORY_UTILIZATION));
            (estimate::gpu_host_memory_gib(arch, tp), (4 + 2 * tp).to_string())
        }
        Sized::Cpu(s) => {
            args.insert("max-model-len".to_string(), serde_json::json!(s.max_model_len));
            env.insert("VLLM_CPU_KVCACHE_SPACE".into(), s.kv_space_gib.to_string());
            // vLLM binds one OpenMP thread per physical core of each NUMA node it uses.
            let cores = g.cpu_perf.as_ref().map_or(4, |p| p.cores.max(4));
            (s.memory_gib, (cores * tp).to_string())
        }
    };
    let pp = sized.pipeline();
    if tp > 1 {
        args.insert("tensor-parallel-size".to_string(), serde_json::json!(tp));
    }
    if pp > 1 {
        args.insert("pipeline-parallel-size".to_string(), serde_json::json!(pp));
    }
    if precision == Precision::Fp8 && arch.native_precision() != Precision::Fp8 {
        args.insert("quantization".to_string(), serde_json::json!("fp8"));
    }
    let shm = if tp > 1 { "8Gi" } else { "2Gi" };
    let product = if g.vendor == Vendor::Cpu { "any".to_string() } else { g.product.clone() };
    let performance = estimate.map(|e| {
        let round = |v: f64| (v * 10.0).round() / 10.0;
        if req.kpi == Kpi::Latency {
            Performance {
                ttft_ms_p50: Some(round(e.ttft_ms)),
                itl_ms_p50: Some(round(e.itl_ms)),
                throughput_tokens_per_sec: Some(round(e.tokens_per_sec_single)),
                concurrency: Some(1),
                source: Some(ESTIMATED.into()),
            }
        } else {
            Performance {
                ttft_ms_p50: None,
                itl_ms_p50: Some(round(e.itl_ms_at_concurrency)),
                throughput_tokens_per_sec: Some(round(e.tokens_per_sec)),
                concurrency: Some(e.concurrency),
                source: Some(ESTIMATED.into()),
            }
        }
    });
    Profile {
        schema: crate::profile::schema::PROFILE_SCHEMA.into(),
        name: format!(
            "generated-vllm-{}-{}-x{tp}{}-{}",
            g.vendor,
            g.product,
            if pp > 1 { format!("-n{pp}") } else { String::new() },
            enum_str(&precision)
        ),
        model: req.model.clone(),
        weights: None,
        weights_revision: None,
        kpi: req.kpi,
        precision,
        engine: Engine { name: "vllm".into(), version: engine.version.clone(), image: engine.image.clone() },
        accelerator: ProfileAccelerator { vendor: g.vendor, product, count: tp, min_memory_mib: Some(g.memory_mib) },
        nodes: pp,
        parallelism: Parallelism { tensor: tp, pipeline: pp },
        args,
        env,
        resources: ProfileResources {
            cpu,
            memory: format!("{memory_gib}Gi"),
            shared_memory: Some(shm.into()),
            ephemeral_storage: Some(format!("{}Gi", gib(arch.weight_bytes(arch.native_precision()) * 1.2) + 10)),
            extra: engine.resource_extras.clone(),
        },
        performance,
        generated: true,
    }
}

#[cfg(test)]
mod count_tests;
#[cfg(test)]
mod tests;
