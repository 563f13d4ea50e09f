//! Device counting on cluster data: huge counts never panic or wrap, pods count as the
//! scheduler counts them, and a broken inventory annotation is named as broken.

use k8s_openapi::api::core::v1::{Container, Node, Pod, PodSpec, PodStatus, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::*;
use crate::hardware::devices;
use crate::hardware::inventory::AcceleratorGroup;

fn gpus(n: &str) -> Option<ResourceRequirements> {
    let m: BTreeMap<String, Quantity> = [("nvidia.com/gpu".to_string(), Quantity(n.into()))].into();
    Some(ResourceRequirements { requests: Some(m.clone()), limits: Some(m), ..Default::default() })
}

fn container(n: &str, restart: Option<&str>) -> Container {
    Container {
        name: "c".into(),
        resources: gpus(n),
        restart_policy: restart.map(str::to_string),
        ..Default::default()
    }
}

fn pod(containers: Vec<Container>, init: Vec<Container>, overhead: Option<&str>) -> Pod {
    Pod {
        metadata: ObjectMeta { name: Some("p".into()), ..Default::default() },
        spec: Some(PodSpec {
            node_name: Some("n".into()),
            containers,
            init_containers: Some(init),
            overhead: overhead.map(|o| [("nvidia.com/gpu".to_string(), Quantity(o.into()))].into()),
            ..Default::default()
        }),
        status: Some(PodStatus { phase: Some("Running".into()), ..Default::default() }),
    }
}

fn used(p: &Pod) -> u32 {
    PodUse::from_pod(p).unwrap().requests.get("nvidia.com/gpu").copied().unwrap_or(0)
}

#[test]
fn pods_count_as_the_scheduler_counts_them() {
    // Two containers of 2 run together: 4.
    assert_eq!(used(&pod(vec![container("2", None), container("2", None)], vec![], None)), 4);
    // An init container of 6 runs alone before them: max(4, 6) = 6.
    assert_eq!(used(&pod(vec![container("2", None), container("2", None)], vec![container("6", None)], None)), 6);
    // A sidecar (restartable init container) runs beside the containers: 2 + 2 + 1.
    assert_eq!(
        used(&pod(vec![container("2", None), container("2", None)], vec![container("1", Some("Always"))], None)),
        5
    );
    // Pod overhead comes on top.
    assert_eq!(used(&pod(vec![container("2", None)], vec![container("3", None)], Some("1"))), 4);
    // A regular init container runs beside the sidecars started before it: max(2 + 1, 3 + 1) + 1.
    let mut p = pod(vec![container("2", None)], vec![container("1", Some("Always")), container("3", None)], Some("1"));
    assert_eq!(used(&p), 5);
    // Stripping a watched pod keeps what counting needs.
    PodUse::slim(&mut p);
    assert_eq!(used(&p), 5);
}

#[test]
fn huge_requests_saturate_instead_of_wrapping() {
    let huge = pod(vec![container("4294967295", None), container("4294967295", None)], vec![], None);
    assert_eq!(used(&huge), u32::MAX);
    assert_eq!(used(&pod(vec![container("99999999999999999999999", None)], vec![], None)), u32::MAX);
    assert_eq!(device_count("1k"), 1000);
    assert_eq!(device_count("2Ki"), 2048);
    assert_eq!(device_count("9E"), u32::MAX);
    assert_eq!(device_count("1.5"), 0);
    // Pods with huge requests on a node leave it with no free device, not a wrapped-around many.
    let inv = Inventory {
        node: "n".into(),
        accelerators: vec![AcceleratorGroup::of(devices::by_slug("h100-sxm-80gb").unwrap(), 8)],
        ..Inventory::default()
    };
    let node = NodeView { name: "n".into(), inventory: inv, ready: true, ..Default::default() };
    let pods = vec![PodUse::from_pod(&huge).unwrap(), PodUse::from_pod(&huge).unwrap()];
    let (groups, _) = groups(std::slice::from_ref(&node), &pods, &Request::default());
    assert_eq!(groups[0].nodes["n"], 0);
}

#[test]
fn an_inventory_whose_counts_overflow_makes_the_node_unusable_with_a_reason() {
    let h100 = devices::by_slug("h100-sxm-80gb").unwrap();
    let mut a = AcceleratorGroup::of(h100, u32::MAX);
    a.product = "h100-sxm-80gb".into();
    let mut b = AcceleratorGroup::of(h100, 2);
    b.product = "h100-other".into();
    let inv = Inventory { node: "big".into(), accelerators: vec![a, b], ..Inventory::default() };
    let node = NodeView { name: "big".into(), inventory: inv, ready: true, ..Default::default() };
    let (groups, unusable) = groups(&[node], &[], &Request::default());
    assert!(groups.is_empty());
    assert_eq!(unusable[0].reason, "InvalidInventory");
    assert!(unusable[0].message.contains("4294967295 + 2"), "{}", unusable[0].message);
    // Every free count over the group sums without overflow too.
    let g = Group {
        vendor: Vendor::Nvidia,
        product: "h100-sxm-80gb".into(),
        resource_name: "nvidia.com/gpu".into(),
        devices_per_node: u32::MAX,
        memory_mib: 81_559,
        cpu_flags: vec![],
        cpu_perf: None,
        nodes: [("a".to_string(), u32::MAX), ("b".to_string(), u32::MAX)].into(),
        dra: None,
    };
    assert_eq!(g.replicas_for(1), u32::MAX);
}

#[test]
fn a_broken_inventory_annotation_is_unparseable_not_missing() {
    let node = |annotation: Option<&str>| Node {
        metadata: ObjectMeta {
            name: Some("n".into()),
            annotations: annotation.map(|a| [(INVENTORY_ANNOTATION.to_string(), a.to_string())].into()),
            ..Default::default()
        },
        ..Default::default()
    };
    assert_eq!(NodeView::try_from_node(&node(None)).unwrap_err(), InventoryProblem::Missing);
    let e = NodeView::try_from_node(&node(Some("{not json"))).unwrap_err();
    assert!(matches!(e, InventoryProblem::Unparseable(_)), "{e:?}");
    assert!(e.to_string().contains("unparseable"), "{e}");
}
