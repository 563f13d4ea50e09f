//! Hardware facts: the device table, the inventory document, and detection from sysfs/procfs
//! under a root directory (`/` on a node, a fixture tree in tests).

pub mod cpu;
pub mod devices;
pub mod inventory;
pub mod labels;
pub mod pci;
pub mod slices;

use std::path::{Path, PathBuf};

use inventory::Inventory;

/// Detection failed in a way the caller must see.
#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    /// ROOT (or a directory under it) cannot be read.
    #[error("cannot read {path}: {source}; pass --root pointing at a readable tree with sys/ and proc/")]
    Unreadable {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

impl DetectError {
    fn unreadable(path: &Path, source: std::io::Error) -> Self {
        DetectError::Unreadable { path: path.to_path_buf(), source }
    }
}

/// The inventory of the machine (or fixture tree) at `root`. Finding nothing is an answer.
pub fn detect(root: &Path) -> Result<Inventory, DetectError> {
    std::fs::read_dir(root).map_err(|e| DetectError::unreadable(root, e))?;
    let functions = pci::scan(root)?;
    let (cpu, memory_mib) = cpu::detect(root)?;
    Ok(Inventory { accelerators: pci::accelerator_groups(&functions), cpu, memory_mib, ..Inventory::default() })
}

#[cfg(test)]
mod detect_tests;
