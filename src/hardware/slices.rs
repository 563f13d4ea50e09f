//! Devices that DRA drivers publish in `resource.k8s.io/v1` ResourceSlices, mapped to the device
//! table: per node, how many devices of which product each driver offers.
//!
//! k8s-openapi is built for Kubernetes 1.33 (DESIGN §1), whose generated API has no
//! `resource.k8s.io/v1` module (DRA went GA in 1.34). The v1 objects here are typed locally and
//! reuse the `v1beta2` field types, which have the same schema for every field read or written.

use std::collections::BTreeMap;

use k8s_openapi::api::resource::v1beta2::{Device, ResourceClaimSpec, ResourceClaimStatus, ResourceSliceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};

use crate::api::Vendor;
use crate::hardware::devices::{self, Device as TableDevice};

/// `resource.k8s.io/v1` ResourceSlice (cluster-scoped).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ResourceSlice {
    /// Standard metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// What the driver publishes.
    pub spec: ResourceSliceSpec,
}

impl k8s_openapi::Resource for ResourceSlice {
    const API_VERSION: &'static str = "resource.k8s.io/v1";
    const GROUP: &'static str = "resource.k8s.io";
    const KIND: &'static str = "ResourceSlice";
    const VERSION: &'static str = "v1";
    const URL_PATH_SEGMENT: &'static str = "resourceslices";
    type Scope = k8s_openapi::ClusterResourceScope;
}

impl k8s_openapi::ListableResource for ResourceSlice {
    const LIST_KIND: &'static str = "ResourceSliceList";
}

impl k8s_openapi::Metadata for ResourceSlice {
    type Ty = ObjectMeta;
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// `resource.k8s.io/v1` ResourceClaim (namespaced): only its allocation is read.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ResourceClaim {
    /// Standard metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// What was asked for (dropped when watched).
    #[serde(default)]
    pub spec: ResourceClaimSpec,
    /// The allocation, once the scheduler made one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<ResourceClaimStatus>,
}

impl k8s_openapi::Resource for ResourceClaim {
    const API_VERSION: &'static str = "resource.k8s.io/v1";
    const GROUP: &'static str = "resource.k8s.io";
    const KIND: &'static str = "ResourceClaim";
    const VERSION: &'static str = "v1";
    const URL_PATH_SEGMENT: &'static str = "resourceclaims";
    type Scope = k8s_openapi::NamespaceResourceScope;
}

impl k8s_openapi::ListableResource for ResourceClaim {
    const LIST_KIND: &'static str = "ResourceClaimList";
}

impl k8s_openapi::Metadata for ResourceClaim {
    type Ty = ObjectMeta;
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl ResourceClaim {
    /// Strips a watched claim to its identity, the two labels naming its service, and the
    /// allocated devices.
    pub fn slim(&mut self) {
        let m = &mut self.metadata;
        m.managed_fields = None;
        m.annotations = None;
        m.owner_references = None;
        m.finalizers = None;
        if let Some(labels) = m.labels.as_mut() {
            labels.retain(|k, _| {
                k == crate::profile::select::MANAGED_BY_LABEL || k == crate::profile::select::INSTANCE_LABEL
            });
        }
        self.spec = ResourceClaimSpec::default();
        if let Some(status) = self.status.as_mut() {
            status.devices = None;
            status.reserved_for = None;
            if let Some(a) = status.allocation.as_mut() {
                a.node_selector = None;
                if let Some(d) = a.devices.as_mut() {
                    d.config = None;
                }
            }
        }
    }

    /// The OIMService (`namespace/name`) whose template made this claim, if the operator's.
    fn service(&self) -> Option<String> {
        let labels = self.metadata.labels.as_ref()?;
        (labels.get(crate::profile::select::MANAGED_BY_LABEL).map(String::as_str) == Some("oim-operator"))
            .then(|| labels.get(crate::profile::select::INSTANCE_LABEL))
            .flatten()
            .map(|n| crate::profile::select::service_id(self.metadata.namespace.as_deref(), n))
    }
}

/// Attributes selection reads; a watched slice keeps only these (and the `memory` capacity).
const READ_ATTRIBUTES: &[&str] = &["type", "productName", "deviceID", "deviceId", "pciDeviceID", "pciDeviceId"];

impl ResourceSlice {
    /// Strips a watched slice to what [`by_node`] reads, so a large DRA inventory (drivers
    /// publish dozens of attributes per device) costs the operator little memory.
    pub fn slim(&mut self) {
        let m = &mut self.metadata;
        m.managed_fields = None;
        m.annotations = None;
        m.labels = None;
        m.owner_references = None;
        let spec = &mut self.spec;
        spec.node_selector = None;
        spec.shared_counters = None;
        for d in spec.devices.iter_mut().flatten() {
            let driver = spec.driver.as_str();
            let wanted = |k: &String| {
                let short = k.strip_prefix(driver).and_then(|r| r.strip_prefix('/')).unwrap_or(k);
                READ_ATTRIBUTES.contains(&short) || short == "memory"
            };
            if let Some(a) = d.attributes.as_mut() {
                a.retain(|k, _| wanted(k));
            }
            if let Some(c) = d.capacity.as_mut() {
                c.retain(|k, _| wanted(k));
            }
            d.consumes_counters = None;
            d.node_selector = None;
            d.taints = None;
        }
    }
}

/// Devices of one product one driver publishes on a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DraDevices {
    /// The DRA driver, e.g. `gpu.nvidia.com` (also its DeviceClass by convention).
    pub driver: String,
    /// Vendor.
    pub vendor: Vendor,
    /// Device-table slug.
    pub product: String,
    /// The `productName` attribute as published, for the claim's selector.
    pub product_name: Option<String>,
    /// Memory per device, MiB (the `memory` capacity, else the table's).
    pub memory_mib: u64,
    /// Extended resource of the product (its taint key on GPU nodes).
    pub resource_name: String,
    /// Devices.
    pub count: u32,
}

/// What the slices say about one node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeDevices {
    /// Devices mapped to the device table.
    pub devices: Vec<DraDevices>,
    /// Devices that map to no product, one line per (driver, description), for explanations.
    pub unknown: Vec<String>,
    /// Devices of [`NodeDevices::devices`] allocated to a ResourceClaim, one entry each.
    pub allocated: Vec<Allocated>,
}

/// One device allocated to a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocated {
    /// Its driver.
    pub driver: String,
    /// Its device-table slug.
    pub product: String,
    /// The OIMService whose claim holds it (`namespace/name`), if the operator's.
    pub service: Option<String>,
}

impl NodeDevices {
    /// Devices of `driver`/`product` allocated to claims other than `service`'s own.
    pub fn used(&self, driver: &str, product: &str, service: Option<&str>) -> u32 {
        let others = self
            .allocated
            .iter()
            .filter(|a| a.driver == driver && a.product == product)
            .filter(|a| service.is_none() || a.service.as_deref() != service)
            .count();
        u32::try_from(others).unwrap_or(u32::MAX)
    }
}

/// The vendor a driver name belongs to (`gpu.nvidia.com`, `gpu.amd.com`, `gpu.intel.com`,
/// `habana.ai`).
pub fn vendor_of_driver(driver: &str) -> Option<Vendor> {
    let d = driver.to_ascii_lowercase();
    let owned_by = |domain: &str| d == domain || d.ends_with(&format!(".{domain}"));
    if owned_by("nvidia.com") {
        Some(Vendor::Nvidia)
    } else if owned_by("amd.com") {
        Some(Vendor::Amd)
    } else if owned_by("intel.com") {
        Some(Vendor::Intel)
    } else if owned_by("habana.ai") {
        Some(Vendor::Habana)
    } else {
        None
    }
}

/// A device attribute as a string (string, int or version value), by short or qualified name.
fn attribute(d: &Device, driver: &str, name: &str) -> Option<String> {
    let attrs = d.attributes.as_ref()?;
    let a = attrs.get(name).or_else(|| attrs.get(&format!("{driver}/{name}")))?;
    a.string.clone().or_else(|| a.version.clone()).or_else(|| a.int.map(|i| i.to_string()))
}

/// The device-table product of a published device: by `productName` (the table's name, or
/// nvidia-smi's name as GPU Feature Discovery spells it), else by a PCI device id attribute.
fn product_of(d: &Device, driver: &str, vendor: Vendor) -> Option<&'static TableDevice> {
    if let Some(name) = attribute(d, driver, "productName") {
        let by_name =
            devices::table().iter().find(|t| t.vendor == vendor && t.product_name.eq_ignore_ascii_case(&name));
        let by_gfd = || crate::hardware::labels::gfd_slug(&name.replace(' ', "-")).and_then(devices::by_slug);
        if let Some(t) = by_name.or_else(by_gfd) {
            return Some(t);
        }
    }
    let pci_vendor = devices::table().iter().find(|t| t.vendor == vendor)?.pci_vendor_id.clone();
    ["deviceID", "deviceId", "pciDeviceID", "pciDeviceId"]
        .iter()
        .find_map(|k| attribute(d, driver, k))
        .and_then(|id| devices::lookup(&pci_vendor, &id))
}

/// A capacity quantity in MiB (binary and decimal suffixes; None when it does not parse).
pub fn quantity_mib(q: &str) -> Option<u64> {
    const UNITS: &[(&str, f64)] = &[
        ("Ki", 1024.0),
        ("Mi", 1048576.0),
        ("Gi", 1073741824.0),
        ("Ti", 1099511627776.0),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
    ];
    let q = q.trim();
    let (n, scale) = UNITS.iter().find_map(|(u, s)| q.strip_suffix(u).map(|n| (n, *s))).unwrap_or((q, 1.0));
    let bytes = n.parse::<f64>().ok().filter(|b| b.is_finite() && *b >= 0.0)? * scale;
    Some((bytes / 1048576.0).round() as u64)
}

/// Per node, the devices the slices publish and which of them `claims` hold. Only the newest
/// generation of each pool counts (older slices are being replaced); devices of slices not bound
/// to one node (`allNodes`, `nodeSelector`) are left out: they are network-attached and not a
/// node's accelerators.
pub fn by_node<'a>(
    slices: impl IntoIterator<Item = &'a ResourceSlice>,
    claims: impl IntoIterator<Item = &'a ResourceClaim>,
) -> BTreeMap<String, NodeDevices> {
    let slices: Vec<&ResourceSlice> = slices.into_iter().collect();
    let mut newest: BTreeMap<(&str, &str), i64> = BTreeMap::new();
    for s in &slices {
        let g = newest.entry((s.spec.driver.as_str(), s.spec.pool.name.as_str())).or_insert(i64::MIN);
        *g = (*g).max(s.spec.pool.generation);
    }
    // By (node, driver, product slug), and unmapped devices by (node, driver, what) -> count.
    let mut known: BTreeMap<(String, String, String), DraDevices> = BTreeMap::new();
    let mut unknown: BTreeMap<(String, String, String), u32> = BTreeMap::new();
    // (driver, pool, device) -> (node, slug), to place allocations.
    let mut where_is: BTreeMap<(&str, &str, &str), (String, String)> = BTreeMap::new();
    for s in slices {
        let spec = &s.spec;
        if newest.get(&(spec.driver.as_str(), spec.pool.name.as_str())) != Some(&spec.pool.generation) {
            continue;
        }
        for d in spec.devices.iter().flatten() {
            let Some(node) = spec.node_name.clone().or_else(|| d.node_name.clone()) else { continue };
            let kind = attribute(d, &spec.driver, "type");
            let vendor = vendor_of_driver(&spec.driver);
            let product = vendor
                .filter(|_| kind.as_deref().is_none_or(|k| k == "gpu"))
                .and_then(|v| product_of(d, &spec.driver, v));
            match product {
                Some(t) => {
                    where_is.insert(
                        (spec.driver.as_str(), spec.pool.name.as_str(), d.name.as_str()),
                        (node.clone(), t.slug.clone()),
                    );
                    let memory = d
                        .capacity
                        .as_ref()
                        .and_then(|c| c.get("memory").or_else(|| c.get(&format!("{}/memory", spec.driver))))
                        .and_then(|c| quantity_mib(&c.value.0))
                        .filter(|m| *m > 0)
                        .unwrap_or(t.memory_mib);
                    let e = known.entry((node, spec.driver.clone(), t.slug.clone())).or_insert_with(|| DraDevices {
                        driver: spec.driver.clone(),
                        vendor: t.vendor,
                        product: t.slug.clone(),
                        product_name: None,
                        memory_mib: u64::MAX,
                        resource_name: t.resource_name.clone(),
                        count: 0,
                    });
                    e.count = e.count.saturating_add(1);
                    e.memory_mib = e.memory_mib.min(memory);
                    e.product_name = e.product_name.take().or_else(|| attribute(d, &spec.driver, "productName"));
                }
                None => {
                    let what = match (kind.as_deref(), attribute(d, &spec.driver, "productName")) {
                        (Some(k), _) if k != "gpu" => format!("of type {k:?} (partitions are not counted)"),
                        (_, Some(p)) => format!("with productName {p:?} that the device table does not list"),
                        (_, None) => "with no productName or PCI device id attribute".to_string(),
                    };
                    *unknown.entry((node, spec.driver.clone(), what)).or_insert(0) += 1;
                }
            }
        }
    }
    let mut out: BTreeMap<String, NodeDevices> = BTreeMap::new();
    for ((node, _, _), d) in known {
        out.entry(node).or_default().devices.push(d);
    }
    for ((node, driver, what), n) in unknown {
        out.entry(node).or_default().unknown.push(format!("driver {driver} publishes {n} device(s) {what}"));
    }
    for claim in claims {
        let results = claim.status.as_ref().and_then(|s| s.allocation.as_ref()).and_then(|a| a.devices.as_ref());
        for r in results.and_then(|d| d.results.as_ref()).into_iter().flatten() {
            if let Some((node, product)) = where_is.get(&(r.driver.as_str(), r.pool.as_str(), r.device.as_str()))
                && let Some(n) = out.get_mut(node)
            {
                n.allocated.push(Allocated {
                    driver: r.driver.clone(),
                    product: product.clone(),
                    service: claim.service(),
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A slice as a DRA driver publishes it, from YAML.
    pub fn slice(yaml: &str) -> ResourceSlice {
        serde_saphyr::from_str(yaml).unwrap_or_else(|e| panic!("fixture: {e}"))
    }

    const H100S: &str = r#"
apiVersion: resource.k8s.io/v1
kind: ResourceSlice
metadata: {name: gpu-node-1-gpu.nvidia.com}
spec:
  driver: gpu.nvidia.com
  nodeName: gpu-node-1
  pool: {name: gpu-node-1, generation: 2, resourceSliceCount: 1}
  devices:
    - name: gpu-0
      attributes:
        type: {string: gpu}
        productName: {string: NVIDIA H100 80GB HBM3}
        architecture: {string: Hopper}
      capacity:
        memory: {value: 81559Mi}
    - name: gpu-1
      attributes:
        type: {string: gpu}
        productName: {string: NVIDIA H100 80GB HBM3}
      capacity:
        memory: {value: 81559Mi}
    - name: gpu-0-mig-1g
      attributes:
        type: {string: mig}
        productName: {string: NVIDIA H100 80GB HBM3}
"#;

    #[test]
    fn an_nvidia_driver_slice_counts_two_h100s_and_names_the_partition_it_leaves_out() {
        let mut slimmed = slice(H100S);
        slimmed.slim();
        let nodes = by_node([&slimmed], []);
        assert_eq!(nodes, by_node([&slice(H100S)], []), "slimming keeps what selection reads");
        assert!(slimmed.spec.devices.as_ref().unwrap()[0].attributes.as_ref().unwrap().get("architecture").is_none());
        let n = &nodes["gpu-node-1"];
        assert_eq!(n.devices.len(), 1);
        let d = &n.devices[0];
        assert_eq!((d.product.as_str(), d.count, d.memory_mib, d.vendor), ("h100-sxm-80gb", 2, 81559, Vendor::Nvidia));
        assert_eq!(d.product_name.as_deref(), Some("NVIDIA H100 80GB HBM3"));
        assert_eq!(d.driver, "gpu.nvidia.com");
        assert_eq!(
            n.unknown,
            vec![r#"driver gpu.nvidia.com publishes 1 device(s) of type "mig" (partitions are not counted)"#]
        );
    }

    #[test]
    fn an_older_pool_generation_is_ignored_and_unknown_products_are_explained() {
        let old = H100S.replace("generation: 2", "generation: 1").replace("gpu-node-1-gpu", "old");
        let nodes = by_node([&slice(H100S), &slice(&old)], []);
        assert_eq!(nodes["gpu-node-1"].devices[0].count, 2, "generation 1 is being replaced; not counted twice");
        let future = H100S.replace("NVIDIA H100 80GB HBM3", "NVIDIA Z900");
        let n = &by_node([&slice(&future)], [])["gpu-node-1"];
        assert!(n.devices.is_empty());
        assert!(
            n.unknown.iter().any(
                |l| l.contains(r#"2 device(s) with productName "NVIDIA Z900" that the device table does not list"#)
            ),
            "{:?}",
            n.unknown
        );
    }

    #[test]
    fn amd_devices_map_by_pci_device_id_and_quantities_read_in_mib() {
        let amd = slice(
            r#"
spec:
  driver: gpu.amd.com
  nodeName: mi-node
  pool: {name: mi-node, generation: 0, resourceSliceCount: 1}
  devices:
    - name: gpu-0
      attributes:
        deviceID: {string: "0x74a1"}
"#,
        );
        let d = &by_node([&amd], [])["mi-node"].devices[0];
        assert_eq!((d.product.as_str(), d.vendor, d.resource_name.as_str()), ("mi300x", Vendor::Amd, "amd.com/gpu"));
        assert_eq!(quantity_mib("80Gi"), Some(81920));
        assert_eq!(quantity_mib("1G"), Some(954));
        assert_eq!(quantity_mib("lots"), None);
    }
}
