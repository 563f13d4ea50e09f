//! The checked-in simulated nodes agree with the device table and the inventory contract.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Node;
use oim::hardware::devices;
use oim::hardware::inventory::{INVENTORY_ANNOTATION, Inventory};

fn standard_nodes() -> Vec<Node> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/cluster/nodes");
    let mut nodes = vec![];
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let text = std::fs::read_to_string(&path).unwrap();
            nodes.push(serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display())));
        }
    }
    nodes
}

#[test]
fn every_simulated_node_publishes_a_valid_inventory_that_matches_its_capacity_and_labels() {
    let nodes = standard_nodes();
    let mut products: BTreeMap<String, u32> = BTreeMap::new();
    for node in &nodes {
        let name = node.metadata.name.clone().unwrap();
        let annotation = &node.metadata.annotations.as_ref().unwrap()[INVENTORY_ANNOTATION];
        let inv = Inventory::parse(annotation).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(inv.node, name);
        let status = node.status.as_ref().unwrap();
        let allocatable = status.allocatable.as_ref().unwrap();
        for key in ["pods", "cpu", "memory", "ephemeral-storage"] {
            assert!(allocatable.contains_key(key), "{name} lacks allocatable {key}");
        }
        for g in &inv.accelerators {
            let dev = devices::by_slug(&g.product)
                .unwrap_or_else(|| panic!("{name}: {} is not a device-table slug", g.product));
            assert_eq!(
                (g.vendor, g.memory_mib, g.resource_name.as_str()),
                (dev.vendor, dev.memory_mib, dev.resource_name.as_str()),
                "{name}"
            );
            assert_eq!(allocatable[&g.resource_name].0, g.count.to_string(), "{name}: allocatable vs PCI count");
            if g.resource_name == "habana.ai/gaudi" {
                assert!(allocatable.contains_key("hugepages-2Mi"), "{name}: Gaudi pods need hugepages");
            }
            *products.entry(g.product.clone()).or_default() += g.count;
        }
        let labels = node.metadata.labels.as_ref().unwrap();
        for (k, v) in inv.labels() {
            assert_eq!(labels.get(&k), Some(&v), "{name}: label {k}");
        }
    }
    let expected: BTreeMap<String, u32> =
        [("h100-sxm-80gb", 8), ("l4", 2), ("a100-sxm-40gb", 4), ("mi300x", 8), ("gaudi2", 8), ("max-1550", 4)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
    assert_eq!(products, expected);
    let cpu_only: Vec<_> = nodes
        .iter()
        .filter(|n| {
            Inventory::parse(&n.metadata.annotations.as_ref().unwrap()[INVENTORY_ANNOTATION])
                .unwrap()
                .accelerators
                .is_empty()
        })
        .collect();
    assert_eq!(cpu_only.len(), 1);
    assert_eq!(
        cpu_only[0].metadata.labels.as_ref().unwrap().get("oim.opea.dev/cpu.amx").map(String::as_str),
        Some("true")
    );
}
