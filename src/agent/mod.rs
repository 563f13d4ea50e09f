//! The node agent: detect this node's hardware, publish it on the Node with server-side apply
//! (field manager `oim-node-agent`), re-detect on an interval, write only on change.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;
use tracing::{info, warn};

use crate::hardware::inventory::{INVENTORY_ANNOTATION, Inventory};
use crate::hardware::{self, DetectError};

/// The agent's field manager; it owns the `oim.opea.dev/*` labels and the inventory annotation.
pub const FIELD_MANAGER: &str = "oim-node-agent";

/// Errors of one agent pass.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Detection failed.
    #[error(transparent)]
    Detect(#[from] DetectError),
    /// The API server refused or could not be reached.
    #[error("cannot update node {node}: {source}")]
    Kube {
        /// The node.
        node: String,
        /// Why.
        source: kube::Error,
    },
}

/// Settings of the agent.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// This node.
    pub node_name: String,
    /// sysfs/procfs root.
    pub root: PathBuf,
    /// Re-detection interval.
    pub interval: Duration,
}

/// What the agent wants on the Node: its labels and the inventory annotation.
pub fn desired(inventory: &Inventory) -> (BTreeMap<String, String>, String) {
    let json = serde_json::to_string(inventory).expect("inventory serializes");
    (inventory.labels(), json)
}

/// True when the Node already carries exactly `labels` among the agent's keys and `annotation`.
pub fn up_to_date(node: &Node, labels: &BTreeMap<String, String>, annotation: &str) -> bool {
    let empty = BTreeMap::new();
    let current = node.metadata.labels.as_ref().unwrap_or(&empty);
    let ours: BTreeMap<&String, &String> = current.iter().filter(|(k, _)| is_agent_label(k)).collect();
    let want: BTreeMap<&String, &String> = labels.iter().collect();
    let current_annotation = node.metadata.annotations.as_ref().and_then(|a| a.get(INVENTORY_ANNOTATION));
    ours == want && current_annotation.map(String::as_str) == Some(annotation)
}

fn is_agent_label(key: &str) -> bool {
    key.starts_with("oim.opea.dev/accelerator.") || key.starts_with("oim.opea.dev/cpu.")
}

/// One pass: detect, compare, apply when different. Returns whether it wrote.
pub async fn sync_once(client: &Client, config: &AgentConfig) -> Result<bool, AgentError> {
    let mut inventory = hardware::detect(&config.root)?;
    inventory.node = config.node_name.clone();
    let nodes: Api<Node> = Api::all(client.clone());
    let kube_err = |source| AgentError::Kube { node: config.node_name.clone(), source };
    let node = nodes.get(&config.node_name).await.map_err(kube_err)?;
    if inventory.accelerators.is_empty() {
        inventory.accelerators = fallback_from_labels(&node);
    }
    let (labels, annotation) = desired(&inventory);
    if up_to_date(&node, &labels, &annotation) {
        return Ok(false);
    }
    // Applying the full set under our field manager also removes labels we set before for
    // hardware that is gone. Force: these keys are the agent's by contract.
    let patch = json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": config.node_name, "labels": labels, "annotations": {INVENTORY_ANNOTATION: annotation}},
    });
    nodes
        .patch(&config.node_name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
        .await
        .map_err(kube_err)?;
    let main = inventory
        .main_group()
        .map(|g| format!("{}x {}", g.count, g.product))
        .unwrap_or_else(|| "no accelerators".into());
    info!(node = %config.node_name, hardware = %main, "published the node inventory");
    Ok(true)
}

/// Accelerators from other publishers' labels, for nodes whose sysfs shows none. Our own labels
/// are excluded so a stale publication can never confirm itself.
fn fallback_from_labels(node: &Node) -> Vec<crate::hardware::inventory::AcceleratorGroup> {
    let labels: BTreeMap<String, String> = node
        .metadata
        .labels
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| !k.starts_with("oim.opea.dev/"))
        .collect();
    let allocatable = node.status.as_ref().and_then(|s| s.allocatable.clone()).unwrap_or_default();
    let groups = crate::hardware::labels::from_node_labels(&labels, &allocatable);
    if !groups.is_empty() {
        info!(node = ?node.metadata.name, hardware = %crate::hardware::labels::describe(&groups), "sysfs shows no accelerator; using vendor labels");
    }
    groups
}

/// Runs until SIGTERM or Ctrl-C. A failed pass is logged and retried at the next tick.
pub async fn run(client: Client, config: AgentConfig) {
    let mut tick = tokio::time::interval(config.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "cannot listen for SIGTERM; stop with Ctrl-C");
            return run_until_ctrl_c(client, config, tick).await;
        }
    };
    loop {
        tokio::select! {
            _ = tick.tick() => pass(&client, &config).await,
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    info!("node agent stopped");
}

async fn run_until_ctrl_c(client: Client, config: AgentConfig, mut tick: tokio::time::Interval) {
    loop {
        tokio::select! {
            _ = tick.tick() => pass(&client, &config).await,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
}

async fn pass(client: &Client, config: &AgentConfig) {
    if let Err(e) = sync_once(client, config).await {
        warn!(error = %e, "node inventory not published; retrying at the next interval");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hardware::inventory::LABEL_PRODUCT;

    #[test]
    fn a_node_with_the_same_labels_and_annotation_needs_no_write_and_a_stale_label_does() {
        let inv = Inventory::parse(
            &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/cluster/nodes/oim-h100-0.yaml"))
                .map(|t| {
                    let node: Node = serde_saphyr::from_str(&t).unwrap();
                    node.metadata.annotations.unwrap()[INVENTORY_ANNOTATION].clone()
                })
                .unwrap(),
        )
        .unwrap();
        let (labels, annotation) = desired(&inv);
        let mut node = Node::default();
        let mut current = labels.clone();
        current.insert("kubernetes.io/hostname".into(), "x".into());
        node.metadata.labels = Some(current.clone());
        node.metadata.annotations = Some([(INVENTORY_ANNOTATION.to_string(), annotation.clone())].into());
        assert!(up_to_date(&node, &labels, &annotation), "foreign labels do not matter");
        current.insert("oim.opea.dev/accelerator.extra".into(), "1".into());
        node.metadata.labels = Some(current);
        assert!(!up_to_date(&node, &labels, &annotation), "a label for hardware that is gone must be removed");
        let mut changed = labels.clone();
        changed.insert(LABEL_PRODUCT.into(), "l4".into());
        node.metadata.labels = Some(changed);
        assert!(!up_to_date(&node, &labels, &annotation));
    }
}
