//! The inventory document (DESIGN §4, contract) that `oim detect` prints and the node agent
//! publishes in the `oim.opea.dev/inventory` annotation, plus the labels derived from it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::api::Vendor;

/// Value of the `schema` field.
pub const INVENTORY_SCHEMA: &str = "oim.opea.dev/inventory/v1";
/// Node annotation holding the whole inventory as JSON.
pub const INVENTORY_ANNOTATION: &str = "oim.opea.dev/inventory";
/// Label: vendor of the node's main accelerator group.
pub const LABEL_VENDOR: &str = "oim.opea.dev/accelerator.vendor";
/// Label: product slug of the main group.
pub const LABEL_PRODUCT: &str = "oim.opea.dev/accelerator.product";
/// Label: device count of the main group.
pub const LABEL_COUNT: &str = "oim.opea.dev/accelerator.count";
/// Label: floor(memoryMiB / 1024) of the main group.
pub const LABEL_MEMORY_GIB: &str = "oim.opea.dev/accelerator.memory-gib";
/// Label: the CPU has AMX.
pub const LABEL_CPU_AMX: &str = "oim.opea.dev/cpu.amx";
/// Label: the CPU has AVX-512.
pub const LABEL_CPU_AVX512: &str = "oim.opea.dev/cpu.avx512";

/// One node's hardware.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Inventory {
    /// Always [`INVENTORY_SCHEMA`].
    pub schema: String,
    /// Node name; empty outside a cluster.
    #[serde(default)]
    pub node: String,
    /// One entry per (vendor, product) group.
    #[serde(default)]
    pub accelerators: Vec<AcceleratorGroup>,
    /// CPU facts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuInfo>,
    /// Host memory in MiB.
    #[serde(default, rename = "memoryMiB")]
    pub memory_mib: u64,
}

impl Default for Inventory {
    fn default() -> Self {
        Inventory {
            schema: INVENTORY_SCHEMA.into(),
            node: String::new(),
            accelerators: vec![],
            cpu: None,
            memory_mib: 0,
        }
    }
}

/// Devices of one product on a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AcceleratorGroup {
    /// nvidia | amd | intel | habana.
    pub vendor: Vendor,
    /// Device-table slug, or `pci-<vendor>-<device>` for an unknown device.
    pub product: String,
    /// Marketing name.
    #[serde(default)]
    pub product_name: String,
    /// PCI vendor id.
    pub pci_vendor_id: String,
    /// PCI device ids seen in this group.
    #[serde(default)]
    pub pci_device_ids: Vec<String>,
    /// PCI functions found (vfio-pci-bound ones excluded).
    pub count: u32,
    /// Memory per device in MiB.
    #[serde(rename = "memoryMiB")]
    pub memory_mib: u64,
    /// Extended resource a pod requests.
    pub resource_name: String,
    /// NUMA nodes the devices sit on.
    #[serde(default)]
    pub numa_nodes: Vec<u32>,
}

impl AcceleratorGroup {
    /// `count` devices of a device-table product (memory and resource from the table).
    pub fn of(device: &crate::hardware::devices::Device, count: u32) -> AcceleratorGroup {
        AcceleratorGroup {
            vendor: device.vendor,
            product: device.slug.clone(),
            product_name: device.product_name.clone(),
            pci_vendor_id: device.pci_vendor_id.clone(),
            pci_device_ids: vec![device.pci_device_ids[0].clone()],
            count,
            memory_mib: device.memory_mib,
            resource_name: device.resource_name.clone(),
            numa_nodes: vec![],
        }
    }
}

/// CPU facts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct CpuInfo {
    /// `GenuineIntel`, `AuthenticAMD`, ...
    pub vendor: String,
    /// Model name.
    pub model: String,
    /// Physical packages.
    pub sockets: u32,
    /// Physical cores over all sockets.
    pub cores: u32,
    /// Logical CPUs.
    pub threads: u32,
    /// ISA flags relevant to inference (avx2, avx512f, amx_tile, ...).
    #[serde(default)]
    pub flags: Vec<String>,
    /// NUMA nodes.
    pub numa_node_count: u32,
}

impl CpuInfo {
    /// The CPU has AMX tiles.
    pub fn has_amx(&self) -> bool {
        self.flags.iter().any(|f| f == "amx_tile")
    }
    /// The CPU has AVX-512 foundation instructions.
    pub fn has_avx512(&self) -> bool {
        self.flags.iter().any(|f| f == "avx512f")
    }
}

/// Errors reading an inventory document.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    /// Not JSON/YAML of the inventory shape.
    #[error("not an inventory document: {0}")]
    Parse(String),
    /// Another schema.
    #[error("schema is {found:?}; expected {INVENTORY_SCHEMA:?}")]
    Schema {
        /// What the document said.
        found: String,
    },
}

impl Inventory {
    /// Parses a JSON or YAML inventory and checks its schema.
    pub fn parse(text: &str) -> Result<Self, InventoryError> {
        let inv: Inventory = serde_saphyr::from_str(text).map_err(|e| InventoryError::Parse(e.to_string()))?;
        if inv.schema != INVENTORY_SCHEMA {
            return Err(InventoryError::Schema { found: inv.schema });
        }
        Ok(inv)
    }

    /// The node's main group: largest count x memoryMiB (ties: vendor, then product, for a
    /// stable answer).
    pub fn main_group(&self) -> Option<&AcceleratorGroup> {
        self.accelerators.iter().max_by(|a, b| {
            (u64::from(a.count) * a.memory_mib)
                .cmp(&(u64::from(b.count) * b.memory_mib))
                .then_with(|| b.vendor.cmp(&a.vendor))
                .then_with(|| b.product.cmp(&a.product))
        })
    }

    /// The `oim.opea.dev/*` labels the agent publishes for this inventory. Keys absent from
    /// the map are labels the agent must remove.
    pub fn labels(&self) -> BTreeMap<String, String> {
        let mut labels = BTreeMap::new();
        if let Some(g) = self.main_group() {
            labels.insert(LABEL_VENDOR.into(), g.vendor.to_string());
            labels.insert(LABEL_PRODUCT.into(), g.product.clone());
            labels.insert(LABEL_COUNT.into(), g.count.to_string());
            labels.insert(LABEL_MEMORY_GIB.into(), (g.memory_mib / 1024).to_string());
        }
        if let Some(cpu) = &self.cpu {
            if cpu.has_amx() {
                labels.insert(LABEL_CPU_AMX.into(), "true".into());
            }
            if cpu.has_avx512() {
                labels.insert(LABEL_CPU_AVX512.into(), "true".into());
            }
        }
        labels
    }
}

/// Fixtures shared by unit tests.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;

    /// A CPU-only two-socket Sapphire Rapids node with AVX-512 and AMX.
    pub(crate) fn sapphire_rapids(node: &str) -> Inventory {
        Inventory {
            node: node.into(),
            cpu: Some(CpuInfo {
                vendor: "GenuineIntel".into(),
                model: "Intel(R) Xeon(R) Platinum 8480+".into(),
                sockets: 2,
                cores: 112,
                threads: 224,
                flags: vec!["avx512f".into(), "amx_tile".into()],
                numa_node_count: 2,
            }),
            memory_mib: 515_000,
            ..Inventory::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H100_NODE: &str = r#"
schema: oim.opea.dev/inventory/v1
node: gpu-node-1
accelerators:
  - vendor: nvidia
    product: h100-sxm-80gb
    productName: NVIDIA H100 SXM5 80GB
    pciVendorId: "10de"
    pciDeviceIds: ["2330"]
    count: 8
    memoryMiB: 81559
    resourceName: nvidia.com/gpu
    numaNodes: [0, 1]
cpu: {vendor: GenuineIntel, model: "Intel(R) Xeon(R) Platinum 8480+", sockets: 2, cores: 112, threads: 224, flags: [avx512f, amx_tile], numaNodeCount: 2}
memoryMiB: 2063000
"#;

    #[test]
    fn design_example_parses_and_round_trips_through_json_and_yaml() {
        let inv = Inventory::parse(H100_NODE).unwrap();
        assert_eq!(inv.accelerators[0].count, 8);
        assert_eq!(inv.accelerators[0].vendor, Vendor::Nvidia);
        let json = serde_json::to_string(&inv).unwrap();
        assert!(json.contains(r#""memoryMiB":81559"#), "{json}");
        assert!(json.contains(r#""pciVendorId":"10de""#), "{json}");
        assert_eq!(Inventory::parse(&json).unwrap(), inv);
        let yaml = serde_saphyr::to_string(&inv).unwrap();
        assert_eq!(Inventory::parse(&yaml).unwrap(), inv);
    }

    #[test]
    fn labels_describe_the_main_group_and_cpu_features() {
        let mut inv = Inventory::parse(H100_NODE).unwrap();
        // A single small extra GPU must not become the main group.
        let mut l4 = inv.accelerators[0].clone();
        l4.product = "l4".into();
        l4.count = 1;
        l4.memory_mib = 23034;
        inv.accelerators.push(l4);
        let labels = inv.labels();
        assert_eq!(labels[LABEL_PRODUCT], "h100-sxm-80gb");
        assert_eq!(labels[LABEL_COUNT], "8");
        assert_eq!(labels[LABEL_MEMORY_GIB], "79");
        assert_eq!(labels[LABEL_CPU_AMX], "true");
        assert_eq!(labels[LABEL_CPU_AVX512], "true");
    }

    #[test]
    fn empty_node_is_a_valid_answer_and_has_no_accelerator_labels() {
        let inv = Inventory::parse("schema: oim.opea.dev/inventory/v1\n").unwrap();
        assert!(inv.accelerators.is_empty());
        assert!(inv.labels().is_empty());
    }

    #[test]
    fn wrong_schema_and_garbage_are_errors_not_panics() {
        assert!(matches!(Inventory::parse("schema: other/v9\n"), Err(InventoryError::Schema { .. })));
        assert!(Inventory::parse("accelerators: [1, 2").is_err());
        assert!(Inventory::parse("").is_err());
    }
}
