//! Fallback when sysfs shows no accelerator (e.g. a VM without the PCI tree, or a restricted
//! sandbox): the labels that GPU Feature Discovery, the AMD labeller, Habana's feature discovery,
//! Intel's NFD rules or NFD's PCI source already published on the Node.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::api::Vendor;
use crate::hardware::devices::{self, Device};
use crate::hardware::inventory::AcceleratorGroup;

/// GFD's `nvidia.com/gpu.product` (sanitised `nvidia-smi` name) to device-table slug.
const GFD_PRODUCTS: &[(&str, &str)] = &[
    ("NVIDIA-H100-80GB-HBM3", "h100-sxm-80gb"),
    ("NVIDIA-H100-PCIe", "h100-pcie-80gb"),
    ("NVIDIA-H100-NVL", "h100-nvl-94gb"),
    ("NVIDIA-H200", "h200-sxm-141gb"),
    ("NVIDIA-H200-NVL", "h200-nvl-141gb"),
    ("NVIDIA-A100-SXM4-80GB", "a100-sxm-80gb"),
    ("NVIDIA-A100-SXM4-40GB", "a100-sxm-40gb"),
    ("NVIDIA-A100-80GB-PCIe", "a100-pcie-80gb"),
    ("NVIDIA-A100-PCIE-40GB", "a100-pcie-40gb"),
    ("NVIDIA-L40S", "l40s"),
    ("NVIDIA-L40", "l40"),
    ("NVIDIA-L4", "l4"),
    ("NVIDIA-A10", "a10"),
    ("NVIDIA-A10G", "a10g"),
    ("Tesla-T4", "t4"),
    ("NVIDIA-B200", "b200"),
    ("NVIDIA-GB200", "gb200"),
    ("NVIDIA-B300-SXM6-AC", "b300"),
];

/// The device-table slug of a GFD product name (`NVIDIA-H100-80GB-HBM3`), any case.
pub fn gfd_slug(product: &str) -> Option<&'static str> {
    GFD_PRODUCTS.iter().find(|(p, _)| p.eq_ignore_ascii_case(product)).map(|(_, s)| *s)
}

/// Accelerator groups read from vendor labels; empty when none are present.
pub fn from_node_labels(
    labels: &BTreeMap<String, String>,
    allocatable: &BTreeMap<String, Quantity>,
) -> Vec<AcceleratorGroup> {
    let mut groups: Vec<AcceleratorGroup> = vec![];
    let mut push = |g: Option<AcceleratorGroup>| {
        if let Some(g) = g.filter(|g| g.count > 0 && !groups.iter().any(|o| o.vendor == g.vendor)) {
            groups.push(g);
        }
    };
    push(nvidia_gfd(labels));
    push(by_device_id(labels.get("amd.com/gpu.device-id"), "1002", labels.get("amd.com/gpu.count"), allocatable));
    push(by_device_id(labels.get("habana.ai/device.id"), "1da3", labels.get("habana.ai/device.count"), allocatable));
    push(intel_nfd(labels));
    for g in nfd_pci(labels, allocatable) {
        push(Some(g));
    }
    groups
}

fn group(dev: &Device, count: u32, memory_mib: Option<u64>) -> AcceleratorGroup {
    AcceleratorGroup { memory_mib: memory_mib.unwrap_or(dev.memory_mib), ..AcceleratorGroup::of(dev, count) }
}

fn nvidia_gfd(labels: &BTreeMap<String, String>) -> Option<AcceleratorGroup> {
    let product = labels.get("nvidia.com/gpu.product")?;
    // MIG and sharing suffixes describe partitions, not the board.
    let board = product.split("-MIG-").next().unwrap_or(product).trim_end_matches("-SHARED");
    let slug = GFD_PRODUCTS.iter().find(|(p, _)| p.eq_ignore_ascii_case(board)).map(|(_, s)| *s)?;
    let count = labels.get("nvidia.com/gpu.count")?.parse().ok()?;
    let memory =
        labels.get("nvidia.com/gpu.memory").and_then(|m| m.parse().ok()).filter(|_| !product.contains("-MIG-"));
    Some(group(devices::by_slug(slug)?, count, memory))
}

fn count_from(label: Option<&String>, dev: &Device, allocatable: &BTreeMap<String, Quantity>) -> Option<u32> {
    label.and_then(|c| c.parse().ok()).or_else(|| allocatable.get(&dev.resource_name).and_then(|q| q.0.parse().ok()))
}

fn by_device_id(
    id: Option<&String>,
    pci_vendor: &str,
    count: Option<&String>,
    allocatable: &BTreeMap<String, Quantity>,
) -> Option<AcceleratorGroup> {
    let dev = devices::lookup(pci_vendor, id?)?;
    Some(group(dev, count_from(count, dev, allocatable)?, None))
}

/// `gpu.intel.com/device-id.<class>-<device>.count=N`.
fn intel_nfd(labels: &BTreeMap<String, String>) -> Option<AcceleratorGroup> {
    labels.iter().find_map(|(k, v)| {
        let rest = k.strip_prefix("gpu.intel.com/device-id.")?.strip_suffix(".count")?;
        let (class, device) = rest.split_once('-')?;
        if !class.starts_with("03") {
            return None;
        }
        Some(group(devices::lookup("8086", device)?, v.parse().ok()?, None))
    })
}

/// `feature.node.kubernetes.io/pci-<fields>.present` where the fields include vendor and device
/// (e.g. the AMD GPU Operator's `[vendor, device]`); the count comes from allocatable.
fn nfd_pci(labels: &BTreeMap<String, String>, allocatable: &BTreeMap<String, Quantity>) -> Vec<AcceleratorGroup> {
    let mut out = vec![];
    for key in labels.keys() {
        let Some(fields) = key.strip_prefix("feature.node.kubernetes.io/pci-").and_then(|k| k.strip_suffix(".present"))
        else {
            continue;
        };
        let parts: Vec<&str> = fields.split('_').collect();
        for pair in parts.windows(2) {
            if devices::vendor_of(pair[0]).is_none() {
                continue;
            }
            if let Some(dev) = devices::lookup(pair[0], pair[1])
                && let Some(count) = count_from(None, dev, allocatable)
            {
                out.push(group(dev, count, None));
            }
        }
    }
    out
}

/// Vendor of a fallback group, for logs.
pub fn describe(groups: &[AcceleratorGroup]) -> String {
    groups
        .iter()
        .map(|g| format!("{}x {} {}", g.count, Vendor::as_str(g.vendor), g.product))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn alloc(pairs: &[(&str, &str)]) -> BTreeMap<String, Quantity> {
        pairs.iter().map(|(k, v)| (k.to_string(), Quantity(v.to_string()))).collect()
    }

    #[test]
    fn gpu_feature_discovery_labels_give_product_count_and_memory() {
        let g = from_node_labels(
            &map(&[
                ("nvidia.com/gpu.product", "NVIDIA-H100-80GB-HBM3"),
                ("nvidia.com/gpu.count", "8"),
                ("nvidia.com/gpu.memory", "81559"),
            ]),
            &BTreeMap::new(),
        );
        assert_eq!((g[0].product.as_str(), g[0].count, g[0].memory_mib), ("h100-sxm-80gb", 8, 81559));
    }

    #[test]
    fn amd_habana_and_intel_labels_map_through_the_device_table() {
        let amd = from_node_labels(&map(&[("amd.com/gpu.device-id", "74a1")]), &alloc(&[("amd.com/gpu", "8")]));
        assert_eq!((amd[0].product.as_str(), amd[0].count), ("mi300x", 8));
        let gaudi = from_node_labels(
            &map(&[("habana.ai/device.id", "1020"), ("habana.ai/device.count", "8")]),
            &BTreeMap::new(),
        );
        assert_eq!((gaudi[0].product.as_str(), gaudi[0].resource_name.as_str()), ("gaudi2", "habana.ai/gaudi"));
        let intel = from_node_labels(&map(&[("gpu.intel.com/device-id.0380-0bd5.count", "4")]), &BTreeMap::new());
        assert_eq!((intel[0].product.as_str(), intel[0].count), ("max-1550", 4));
    }

    #[test]
    fn nfd_vendor_device_labels_count_from_allocatable_and_presence_alone_says_nothing() {
        let g = from_node_labels(
            &map(&[("feature.node.kubernetes.io/pci-1002_74a1.present", "true")]),
            &alloc(&[("amd.com/gpu", "8")]),
        );
        assert_eq!((g[0].product.as_str(), g[0].count), ("mi300x", 8));
        assert!(
            from_node_labels(&map(&[("feature.node.kubernetes.io/pci-0302_10de.present", "true")]), &alloc(&[]))
                .is_empty()
        );
        assert!(
            from_node_labels(
                &map(&[("nvidia.com/gpu.product", "Some-Future-GPU"), ("nvidia.com/gpu.count", "2")]),
                &alloc(&[])
            )
            .is_empty()
        );
    }
}
