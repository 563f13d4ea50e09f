//! Accelerators from `ROOT/sys/bus/pci/devices/*`: vendor, device, class, NUMA node, driver.
//! Real sysfs entries are symlinks into `sys/devices/...`; fixture trees may be plain folders.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use crate::api::Vendor;
use crate::hardware::DetectError;
use crate::hardware::devices;
use crate::hardware::inventory::AcceleratorGroup;

/// One PCI function as sysfs shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PciFunction {
    /// Bus address, e.g. `0000:18:00.0`.
    pub address: String,
    /// Vendor id, four lowercase hex digits.
    pub vendor: String,
    /// Device id, four lowercase hex digits.
    pub device: String,
    /// Class code, e.g. `0x030200`.
    pub class: u32,
    /// NUMA node, when the platform reports one.
    pub numa_node: Option<u32>,
    /// Bound driver (`nvidia`, `amdgpu`, `i915`, `xe`, `habanalabs`, `vfio-pci`, ...).
    pub driver: Option<String>,
    /// Device memory the driver reports (amdgpu `mem_info_vram_total`), in bytes.
    pub vram_bytes: Option<u64>,
}

/// Most PCI functions a host can have (256 buses x 32 devices x 8 functions per domain, a few
/// domains); a directory with more entries is not sysfs.
const MAX_FUNCTIONS: usize = 65_536;
/// A sysfs attribute is one short line; a larger file is not one.
const MAX_ATTRIBUTE_BYTES: u64 = 4096;

/// Reads every PCI function under `root`. A tree without `sys/bus/pci/devices` has no PCI
/// devices (containers, some VMs); an unreadable directory is an error. A function whose ids
/// cannot be read or are not hex is reported (a warning naming it) and skipped.
pub fn scan(root: &Path) -> Result<Vec<PciFunction>, DetectError> {
    let dir = root.join("sys/bus/pci/devices");
    if !dir.exists() {
        return Ok(vec![]);
    }
    let entries = fs::read_dir(&dir).map_err(|e| DetectError::unreadable(&dir, e))?;
    let mut functions = vec![];
    for entry in entries.take(MAX_FUNCTIONS) {
        let entry = entry.map_err(|e| DetectError::unreadable(&dir, e))?;
        // A function that vanished or is half-written is skipped, not fatal: hotplug happens.
        match read_function(&entry.path()) {
            Ok(f) => functions.push(f),
            Err(why) => tracing::warn!(function = %entry.path().display(), "PCI function skipped: {why}"),
        }
    }
    functions.sort_by(|a, b| a.address.cmp(&b.address));
    Ok(functions)
}

/// A sysfs attribute, trimmed; bounded and only from a regular file.
fn attribute(path: &Path, name: &str) -> Result<String, String> {
    crate::bounded::read_text(&path.join(name), MAX_ATTRIBUTE_BYTES)
        .map(|s| s.trim().to_string())
        .map_err(|e| e.to_string())
}

/// A PCI vendor or device id: `0x` and one to four hex digits, as four lowercase digits.
pub fn parse_id(text: &str) -> Option<String> {
    let hex = text.strip_prefix("0x").unwrap_or(text);
    (!hex.is_empty() && hex.len() <= 4 && hex.chars().all(|c| c.is_ascii_hexdigit()))
        .then(|| format!("{:0>4}", hex.to_ascii_lowercase()))
}

fn read_function(path: &Path) -> Result<PciFunction, String> {
    let id = |name: &str| -> Result<String, String> {
        let text = attribute(path, name)?;
        parse_id(&text).ok_or_else(|| format!("{name} {text:?} is not a hex PCI id"))
    };
    let vendor = id("vendor")?;
    let device = id("device")?;
    let class_text = attribute(path, "class")?;
    let class = u32::from_str_radix(class_text.trim_start_matches("0x"), 16)
        .map_err(|_| format!("class {class_text:?} is not a hex class code"))?;
    let read = |name: &str| attribute(path, name).ok();
    let numa_node = read("numa_node").and_then(|n| n.parse::<i64>().ok()).and_then(|n| u32::try_from(n).ok());
    Ok(PciFunction {
        address: path.file_name().ok_or("no file name")?.to_string_lossy().into_owned(),
        vendor,
        device,
        class,
        numa_node,
        driver: driver_name(&path.join("driver")),
        vram_bytes: read("mem_info_vram_total").and_then(|v| v.parse().ok()),
    })
}

/// The driver link's target name; fixture trees may hold the name in a plain file instead.
fn driver_name(link: &Path) -> Option<String> {
    if let Ok(target) = fs::read_link(link) {
        return target.file_name().map(|n| n.to_string_lossy().into_owned());
    }
    crate::bounded::read_text(link, MAX_ATTRIBUTE_BYTES).ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

/// Whether a function is an accelerator we serve: display, 3D or processing-accelerator class of
/// NVIDIA, AMD, Intel (display classes only: never a NIC or chipset) or Habana; BMC display
/// devices (ASPEED, Matrox) have other vendor ids and never match.
pub fn is_accelerator(f: &PciFunction) -> Option<Vendor> {
    let base = f.class >> 8;
    let display = matches!(base, 0x0300 | 0x0302 | 0x0380);
    let processing = base == 0x1200;
    match devices::vendor_of(&f.vendor)? {
        Vendor::Nvidia if display || processing => Some(Vendor::Nvidia),
        Vendor::Amd if display || processing => Some(Vendor::Amd),
        Vendor::Intel if display => Some(Vendor::Intel),
        Vendor::Habana if processing || display => Some(Vendor::Habana),
        _ => None,
    }
}

/// Groups accelerator functions by (vendor, product); functions bound to vfio-pci belong to a VM
/// and are left out.
pub fn accelerator_groups(functions: &[PciFunction]) -> Vec<AcceleratorGroup> {
    let mut groups: BTreeMap<(Vendor, String), AcceleratorGroup> = BTreeMap::new();
    for f in functions {
        let Some(vendor) = is_accelerator(f) else { continue };
        if f.driver.as_deref() == Some("vfio-pci") {
            continue;
        }
        let known = devices::lookup(&f.vendor, &f.device);
        let slug = known.map_or_else(|| devices::unknown_slug(&f.vendor, &f.device), |d| d.slug.clone());
        let group = groups.entry((vendor, slug.clone())).or_insert_with(|| AcceleratorGroup {
            vendor,
            product: slug,
            product_name: known.map_or_else(
                || format!("Unknown {vendor} device {}:{}", f.vendor, f.device),
                |d| d.product_name.clone(),
            ),
            pci_vendor_id: f.vendor.clone(),
            pci_device_ids: vec![],
            count: 0,
            memory_mib: known.map_or(0, |d| d.memory_mib),
            resource_name: resource_name(vendor, known, f.driver.as_deref()),
            numa_nodes: vec![],
        });
        group.count += 1;
        if !group.pci_device_ids.contains(&f.device) {
            group.pci_device_ids.push(f.device.clone());
            group.pci_device_ids.sort();
        }
        if let Some(n) = f.numa_node.filter(|n| !group.numa_nodes.contains(n)) {
            group.numa_nodes.push(n);
            group.numa_nodes.sort();
        }
        // The driver's own figure beats the table (e.g. partitioned or OEM boards).
        if let Some(bytes) = f.vram_bytes.filter(|b| *b > 0) {
            group.memory_mib = bytes / (1024 * 1024);
        }
    }
    groups.into_values().collect()
}

fn resource_name(vendor: Vendor, known: Option<&devices::Device>, driver: Option<&str>) -> String {
    if vendor == Vendor::Intel {
        match driver {
            Some("xe") => return "gpu.intel.com/xe".into(),
            Some("i915") => return "gpu.intel.com/i915".into(),
            _ => {}
        }
    }
    known
        .map(|d| d.resource_name.clone())
        .or_else(|| devices::default_resource_name(vendor).map(str::to_string))
        .unwrap_or_default()
}

/// `ROOT/sys/bus/pci/devices`, for error messages.
pub fn devices_dir(root: &Path) -> PathBuf {
    root.join("sys/bus/pci/devices")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn function(root: &Path, address: &str, vendor: &[u8], device: &[u8]) {
        let d = root.join("sys/bus/pci/devices").join(address);
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("vendor"), vendor).unwrap();
        fs::write(d.join("device"), device).unwrap();
        fs::write(d.join("class"), b"0x030200\n").unwrap();
    }

    #[test]
    fn functions_with_bad_ids_are_skipped_and_slugs_hold_only_validated_hex() {
        let root = std::env::temp_dir().join(format!("oim-pci-ids-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        function(&root, "0000:01:00.0", b"0x10de\n", b"../../x y\n");
        function(&root, "0000:02:00.0", b"0x10de\n", b"0x2999\n");
        function(&root, "0000:03:00.0", b"0x10de\n", &vec![b'0'; 5000]);
        function(&root, "0000:04:00.0", b"0x10dex\n", b"0x2999\n");
        let found = scan(&root).unwrap();
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!((found[0].vendor.as_str(), found[0].device.as_str()), ("10de", "2999"));
        let groups = accelerator_groups(&found);
        assert_eq!(groups[0].product, "pci-10de-2999");
        let e = read_function(&root.join("sys/bus/pci/devices/0000:01:00.0")).unwrap_err();
        assert!(e.contains("not a hex PCI id"), "{e}");
        let e = read_function(&root.join("sys/bus/pci/devices/0000:03:00.0")).unwrap_err();
        assert!(e.contains("more than 4096 bytes"), "{e}");
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn ids_parse_only_as_one_to_four_hex_digits() {
        assert_eq!(parse_id("0x10DE").as_deref(), Some("10de"));
        assert_eq!(parse_id("abc").as_deref(), Some("0abc"));
        for bad in ["", "0x", "0x12345", "../x", "10 de", "0xg1"] {
            assert_eq!(parse_id(bad), None, "{bad}");
        }
    }
}
