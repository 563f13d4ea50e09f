//! Hardware facts: the device table and the inventory document. Detection from sysfs/procfs
//! lands here too (`pci.rs`, `cpu.rs`).

pub mod devices;
pub mod inventory;
