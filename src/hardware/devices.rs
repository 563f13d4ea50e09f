//! The compiled-in device table (`devices.yaml`, DESIGN §4): PCI ids to slug, product name,
//! memory and resource name. Every other part of the project names devices by these slugs.

use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use crate::api::Vendor;

const DEVICES_YAML: &str = include_str!("devices.yaml");

/// One product of the device table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Device {
    /// Short lowercase product name, the key everything else uses.
    pub slug: String,
    /// Accelerator vendor.
    pub vendor: Vendor,
    /// PCI vendor id, four lowercase hex digits.
    pub pci_vendor_id: String,
    /// PCI device ids of this product, four lowercase hex digits each.
    pub pci_device_ids: Vec<String>,
    /// Marketing name.
    pub product_name: String,
    /// Memory per device in MiB.
    #[serde(rename = "memoryMiB")]
    pub memory_mib: u64,
    /// Extended resource a pod requests for one device.
    pub resource_name: String,
    /// Memory bandwidth, GB/s (for the roofline estimate).
    #[serde(default, rename = "bandwidthGBs", skip_serializing_if = "Option::is_none")]
    pub bandwidth_gbs: Option<u32>,
    /// Dense bf16 compute, TFLOPS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bf16_tflops: Option<u32>,
    /// Dense FP8 compute, TFLOPS; present only where the device runs FP8 W8A8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fp8_tflops: Option<u32>,
    /// Interconnect bandwidth per device and direction, GB/s.
    #[serde(default, rename = "linkGBs", skip_serializing_if = "Option::is_none")]
    pub link_gbs: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Table {
    devices: Vec<Device>,
}

/// The device table, parsed once. The YAML is compiled in and checked by tests, so a parse
/// failure is a build defect, not user input.
pub fn table() -> &'static [Device] {
    static TABLE: OnceLock<Vec<Device>> = OnceLock::new();
    TABLE.get_or_init(|| {
        serde_saphyr::from_str::<Table>(DEVICES_YAML)
            .expect("src/hardware/devices.yaml is valid (checked by unit tests)")
            .devices
    })
}

/// The product with this PCI vendor and device id (hex, any case, with or without `0x`).
pub fn lookup(pci_vendor: &str, pci_device: &str) -> Option<&'static Device> {
    let v = normalize_id(pci_vendor);
    let d = normalize_id(pci_device);
    table().iter().find(|dev| dev.pci_vendor_id == v && dev.pci_device_ids.contains(&d))
}

/// The product with this slug.
pub fn by_slug(slug: &str) -> Option<&'static Device> {
    table().iter().find(|dev| dev.slug == slug)
}

/// The slug for a device of a known vendor that the table does not list: `pci-<vendor>-<device>`.
pub fn unknown_slug(pci_vendor: &str, pci_device: &str) -> String {
    format!("pci-{}-{}", normalize_id(pci_vendor), normalize_id(pci_device))
}

/// The accelerator vendor owning a PCI vendor id, if it is one we serve.
pub fn vendor_of(pci_vendor: &str) -> Option<Vendor> {
    match normalize_id(pci_vendor).as_str() {
        "10de" => Some(Vendor::Nvidia),
        "1002" => Some(Vendor::Amd),
        "8086" => Some(Vendor::Intel),
        "1da3" => Some(Vendor::Habana),
        _ => None,
    }
}

/// Default extended resource for a vendor's devices that are not in the table.
pub fn default_resource_name(vendor: Vendor) -> Option<&'static str> {
    match vendor {
        Vendor::Nvidia => Some("nvidia.com/gpu"),
        Vendor::Amd => Some("amd.com/gpu"),
        Vendor::Intel => Some("gpu.intel.com/i915"),
        Vendor::Habana => Some("habana.ai/gaudi"),
        Vendor::Cpu => None,
    }
}

/// `0x10DE\n` -> `10de`.
pub fn normalize_id(id: &str) -> String {
    let id = id.trim().to_ascii_lowercase();
    let id = id.strip_prefix("0x").unwrap_or(&id);
    format!("{:0>4}", id)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn table_parses_and_every_entry_is_well_formed() {
        let slug_re = |s: &str| {
            !s.is_empty()
                && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !s.starts_with('-')
        };
        let hex4 = |s: &str| s.len() == 4 && s.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase());
        for d in table() {
            assert!(slug_re(&d.slug), "bad slug {}", d.slug);
            assert!(hex4(&d.pci_vendor_id), "{}: bad vendor id", d.slug);
            assert!(!d.pci_device_ids.is_empty(), "{}: no device ids", d.slug);
            assert!(d.pci_device_ids.iter().all(|i| hex4(i)), "{}: bad device id", d.slug);
            assert!(d.memory_mib >= 4096, "{}: memory", d.slug);
            assert_eq!(vendor_of(&d.pci_vendor_id), Some(d.vendor), "{}: vendor id mismatch", d.slug);
            assert!(d.resource_name.contains('/'), "{}: resource", d.slug);
        }
    }

    #[test]
    fn every_device_vllm_serves_has_roofline_figures() {
        // Gaudi 1 and MI100 are outside vLLM's support lists; MI308X's figures are unpublished.
        for d in table().iter().filter(|d| !["gaudi", "mi100", "mi308x"].contains(&d.slug.as_str())) {
            let (bw, bf16) = (d.bandwidth_gbs.unwrap_or(0), d.bf16_tflops.unwrap_or(0));
            assert!(
                (100..=10_000).contains(&bw) && (50..=3000).contains(&bf16),
                "{}: {bw} GB/s, {bf16} TFLOPS",
                d.slug
            );
            assert!(d.fp8_tflops.is_none_or(|f| f >= bf16), "{}: fp8 below bf16", d.slug);
            assert!(d.link_gbs.is_some(), "{}: no interconnect figure", d.slug);
        }
    }

    #[test]
    fn slugs_and_pci_ids_are_unique() {
        let mut slugs = HashSet::new();
        let mut ids = HashSet::new();
        for d in table() {
            assert!(slugs.insert(d.slug.clone()), "duplicate slug {}", d.slug);
            for id in &d.pci_device_ids {
                assert!(ids.insert((d.pci_vendor_id.clone(), id.clone())), "duplicate id {}:{id}", d.pci_vendor_id);
            }
        }
    }

    #[test]
    fn design_slugs_are_all_present() {
        for slug in [
            "h100-sxm-80gb",
            "h100-pcie-80gb",
            "h100-nvl-94gb",
            "h200-sxm-141gb",
            "a100-sxm-40gb",
            "a100-pcie-80gb",
            "l4",
            "l40s",
            "l40",
            "a10",
            "a10g",
            "t4",
            "b200",
            "mi210",
            "mi250",
            "mi300x",
            "mi325x",
            "mi355x",
            "gaudi2",
            "gaudi3",
            "max-1550",
            "max-1100",
            "flex-170",
            "arc-a770",
        ] {
            assert!(by_slug(slug).is_some(), "device table lacks {slug}");
        }
    }

    #[test]
    fn sysfs_ids_resolve_to_products() {
        let h100 = lookup("0x10de\n", "0x2330\n").unwrap();
        assert_eq!(
            (h100.slug.as_str(), h100.memory_mib, h100.resource_name.as_str()),
            ("h100-sxm-80gb", 81559, "nvidia.com/gpu")
        );
        assert_eq!(lookup("1002", "74A1").unwrap().slug, "mi300x");
        assert_eq!(lookup("1da3", "1020").unwrap().resource_name, "habana.ai/gaudi");
        assert_eq!(lookup("8086", "0bd5").unwrap().slug, "max-1550");
        assert_eq!(lookup("8086", "e20b").unwrap().resource_name, "gpu.intel.com/xe");
        assert!(lookup("10de", "2999").is_none());
        assert_eq!(unknown_slug("0x10de", "0x2999"), "pci-10de-2999");
        assert_eq!(vendor_of("1a03"), None, "ASPEED BMC display is not an accelerator vendor");
    }
}
