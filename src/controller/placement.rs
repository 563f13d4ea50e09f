//! One shared view of the cluster's nodes and device-holding pods for selection.
//!
//! Every reconcile needs all nodes (inventory parsed) and every pod's device use. Built per
//! reconcile that is O(nodes + pods) of parsing and copying each time: over 1,000 nodes and
//! thousands of services it dominates CPU and memory. Instead the node and pod watches mark the
//! view stale, and the next reconcile that asks rebuilds it once; all others share it (`Arc`).
//! Devices DRA drivers publish in ResourceSlices join their nodes here (their watch marks the
//! view stale the same way); a node with such devices needs no node agent inventory.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::runtime::reflector::Store;

use crate::hardware::inventory::Inventory;
use crate::hardware::slices::{self, ResourceClaim, ResourceSlice};
use crate::profile::select::{InventoryProblem, NodeView, PodUse};

/// Nodes and pods as selection sees them, at one moment.
#[derive(Debug, Default)]
pub struct Placement {
    /// Nodes with a usable inventory.
    pub nodes: Arc<[NodeView]>,
    /// Nodes whose inventory annotation does not parse: (node, why).
    pub unparseable: Arc<[(String, String)]>,
    /// Pods holding devices.
    pub pods: Arc<[PodUse]>,
}

/// The shared view and whether it is stale.
#[derive(Default)]
pub struct Snapshots {
    changes: AtomicU64,
    built: Mutex<Option<(u64, Arc<Placement>)>>,
}

impl Snapshots {
    /// A node or pod changed: the next reader rebuilds.
    pub fn changed(&self) {
        self.changes.fetch_add(1, Ordering::Release);
    }

    /// The current view, rebuilt from the stores only when something changed since it was built;
    /// `dra` (slices, claims) where the cluster serves `resource.k8s.io/v1`.
    pub fn get(
        &self,
        nodes: &Store<Node>,
        pods: &Store<Pod>,
        dra: Option<(&Store<ResourceSlice>, &Store<ResourceClaim>)>,
    ) -> Arc<Placement> {
        let mut built = self.built.lock().unwrap_or_else(|e| e.into_inner());
        // Read the counter under the lock, before reading the stores: a change that lands while
        // building bumps it again, so the next reader rebuilds.
        let now = self.changes.load(Ordering::Acquire);
        if let Some((at, view)) = built.as_ref()
            && *at == now
        {
            return view.clone();
        }
        let (slices, claims) = dra.map(|(s, c)| (s.state(), c.state())).unwrap_or_default();
        let view = Arc::new(build(&nodes.state(), &pods.state(), &slices, &claims));
        *built = Some((now, view.clone()));
        view
    }
}

/// One line per node whose inventory does not parse, for the "none fits" explanation.
pub fn unparseable_lines(p: &Placement) -> Vec<String> {
    p.unparseable
        .iter()
        .map(|(node, why)| format!("node {node} {}", InventoryProblem::Unparseable(why.clone())))
        .collect()
}

fn build(
    nodes: &[Arc<Node>],
    pods: &[Arc<Pod>],
    slices: &[Arc<ResourceSlice>],
    claims: &[Arc<ResourceClaim>],
) -> Placement {
    let mut usable = Vec::with_capacity(nodes.len());
    let mut unparseable = vec![];
    let mut dra = slices::by_node(slices.iter().map(|s| s.as_ref()), claims.iter().map(|c| c.as_ref()));
    for node in nodes {
        let name = node.metadata.name.clone().unwrap_or_default();
        let published = dra.remove(&name);
        let view = match (NodeView::try_from_node(node), published.as_ref()) {
            (Ok(view), _) => Some(view),
            (Err(InventoryProblem::Unparseable(why)), _) => {
                unparseable.push((name, why));
                None
            }
            // No agent inventory, but a DRA driver publishes its devices.
            (Err(InventoryProblem::Missing), Some(_)) => Some(NodeView::with_inventory(node, Inventory::default())),
            (Err(InventoryProblem::Missing), None) => None,
        };
        if let Some(mut view) = view {
            view.dra = published.unwrap_or_default();
            usable.push(view);
        }
    }
    Placement {
        nodes: usable.into(),
        unparseable: unparseable.into(),
        pods: pods.iter().filter_map(|p| PodUse::from_pod(p)).collect::<Vec<_>>().into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::reflector;
    use kube::runtime::watcher::Event;

    fn node(name: &str, inventory: Option<&str>) -> Node {
        let mut n = Node::default();
        n.metadata.name = Some(name.into());
        if let Some(text) = inventory {
            n.metadata.annotations =
                Some([(crate::hardware::inventory::INVENTORY_ANNOTATION.to_string(), text.to_string())].into());
        }
        n
    }

    #[test]
    fn the_view_is_shared_until_a_change_and_names_unparseable_inventories() {
        let (nodes, mut writer) = reflector::store::<Node>();
        let (pods, _) = reflector::store::<Pod>();
        writer.apply_watcher_event(&Event::Apply(node("broken", Some("{not json"))));
        writer.apply_watcher_event(&Event::Apply(node("no-agent", None)));
        let snapshots = Snapshots::default();
        let first = snapshots.get(&nodes, &pods, None);
        assert_eq!(first.unparseable.len(), 1);
        assert_eq!(first.unparseable[0].0, "broken");
        assert!(first.nodes.is_empty());
        assert!(Arc::ptr_eq(&first, &snapshots.get(&nodes, &pods, None)), "no change: the same view is shared");
        writer.apply_watcher_event(&Event::Delete(node("broken", Some("{not json"))));
        snapshots.changed();
        let second = snapshots.get(&nodes, &pods, None);
        assert!(!Arc::ptr_eq(&first, &second), "a change rebuilds");
        assert!(second.unparseable.is_empty());
        let lines = unparseable_lines(&first);
        assert!(lines[0].starts_with("node broken has an unparseable"), "{lines:?}");
    }

    #[test]
    fn a_node_without_an_agent_joins_the_view_through_its_resource_slice() {
        let (nodes, mut writer) = reflector::store::<Node>();
        let (pods, _) = reflector::store::<Pod>();
        let (slices, mut slice_writer) = reflector::store::<ResourceSlice>();
        let (claims, _) = reflector::store::<ResourceClaim>();
        writer.apply_watcher_event(&Event::Apply(node("dra-only", None)));
        let snapshots = Snapshots::default();
        assert!(
            snapshots.get(&nodes, &pods, Some((&slices, &claims))).nodes.is_empty(),
            "no inventory, no slice: not a candidate"
        );
        let slice: ResourceSlice = serde_saphyr::from_str(
            "metadata: {name: dra-only-gpu}\nspec:\n  driver: gpu.nvidia.com\n  nodeName: dra-only\n  pool: {name: dra-only, generation: 1, resourceSliceCount: 1}\n  devices:\n    - name: gpu-0\n      attributes:\n        productName: {string: NVIDIA L4}\n",
        )
        .unwrap();
        slice_writer.apply_watcher_event(&Event::Apply(slice));
        snapshots.changed();
        let view = snapshots.get(&nodes, &pods, Some((&slices, &claims)));
        assert_eq!(view.nodes.len(), 1);
        assert_eq!((view.nodes[0].dra.devices[0].product.as_str(), view.nodes[0].dra.devices[0].count), ("l4", 1));
    }
}
