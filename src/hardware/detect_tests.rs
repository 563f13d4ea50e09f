//! Detection on fixture trees laid out like real sysfs (`tests/fixtures/sysfs/`, symlinks and
//! all): each case's full inventory.

use std::path::PathBuf;

use super::detect;
use super::inventory::Inventory;
use crate::api::Vendor;

fn fixture(case: &str) -> Inventory {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sysfs").join(case);
    detect(&root).unwrap_or_else(|e| panic!("{case}: {e}"))
}

/// (vendor, product, count, memoryMiB, resourceName, numaNodes)
type Group<'a> = (Vendor, &'a str, u32, u64, &'a str, &'a [u32]);

#[track_caller]
fn assert_inventory(case: &str, groups: &[Group], cpu: (&str, u32, u32, u32, bool), memory_mib: u64) {
    let inv = fixture(case);
    let got: Vec<_> = inv
        .accelerators
        .iter()
        .map(|g| {
            (g.vendor, g.product.as_str(), g.count, g.memory_mib, g.resource_name.as_str(), g.numa_nodes.as_slice())
        })
        .collect();
    assert_eq!(got, groups, "{case}: accelerators");
    let c = inv.cpu.as_ref().unwrap_or_else(|| panic!("{case}: no cpu"));
    assert_eq!((c.vendor.as_str(), c.sockets, c.cores, c.threads, c.has_amx()), cpu, "{case}: cpu");
    assert_eq!(c.numa_node_count, cpu.1, "{case}: one NUMA node per socket in the fixture");
    assert_eq!(inv.memory_mib, memory_mib, "{case}: memory");
    // Every document is valid for the contract parser.
    assert_eq!(Inventory::parse(&serde_json::to_string(&inv).unwrap()).unwrap(), inv);
}

#[test]
fn eight_h100_sxm_beside_a_bmc_nics_and_a_chipset() {
    assert_inventory(
        "h100-sxm-8x",
        &[(Vendor::Nvidia, "h100-sxm-80gb", 8, 81559, "nvidia.com/gpu", &[0, 1])],
        ("GenuineIntel", 2, 112, 224, true),
        2_063_000,
    );
    let inv = fixture("h100-sxm-8x");
    assert_eq!(inv.accelerators[0].pci_device_ids, ["2330"]);
    assert_eq!(inv.labels()["oim.opea.dev/accelerator.memory-gib"], "79");
}

#[test]
fn four_a100_pcie_40gb() {
    assert_inventory(
        "a100-pcie-40gb-4x",
        &[(Vendor::Nvidia, "a100-pcie-40gb", 4, 40960, "nvidia.com/gpu", &[0, 1])],
        ("AuthenticAMD", 2, 128, 256, false),
        1_031_000,
    );
}

#[test]
fn one_l4() {
    assert_inventory(
        "l4-1x",
        &[(Vendor::Nvidia, "l4", 1, 23034, "nvidia.com/gpu", &[0])],
        ("AuthenticAMD", 1, 8, 16, false),
        64_000,
    );
}

#[test]
fn mixed_l40s_and_t4_are_two_groups_and_the_l40s_pair_is_the_main_one() {
    assert_inventory(
        "l40s-2x-t4-1x",
        &[
            (Vendor::Nvidia, "l40s", 2, 46068, "nvidia.com/gpu", &[0]),
            (Vendor::Nvidia, "t4", 1, 15360, "nvidia.com/gpu", &[1]),
        ],
        ("AuthenticAMD", 2, 128, 256, false),
        515_000,
    );
    assert_eq!(fixture("l40s-2x-t4-1x").main_group().unwrap().product, "l40s");
}

#[test]
fn eight_mi300x_with_memory_from_the_amdgpu_driver() {
    assert_inventory(
        "mi300x-8x",
        &[(Vendor::Amd, "mi300x", 8, 196288, "amd.com/gpu", &[0, 1])],
        ("AuthenticAMD", 2, 192, 384, false),
        2_321_000,
    );
}

#[test]
fn two_mi250_report_each_gcd_as_a_device() {
    assert_inventory(
        "mi250-2x",
        &[(Vendor::Amd, "mi250", 4, 65520, "amd.com/gpu", &[0, 1])],
        ("AuthenticAMD", 2, 128, 256, false),
        1_031_000,
    );
}

#[test]
fn eight_gaudi2_and_eight_gaudi3() {
    assert_inventory(
        "gaudi2-8x",
        &[(Vendor::Habana, "gaudi2", 8, 98304, "habana.ai/gaudi", &[0, 1])],
        ("GenuineIntel", 2, 80, 160, false),
        1_031_000,
    );
    assert_inventory(
        "gaudi3-8x",
        &[(Vendor::Habana, "gaudi3", 8, 131072, "habana.ai/gaudi", &[0, 1])],
        ("GenuineIntel", 2, 112, 224, true),
        2_063_000,
    );
}

#[test]
fn four_max_1550_but_never_the_intel_nic_or_chipset() {
    assert_inventory(
        "max1550-4x",
        &[(Vendor::Intel, "max-1550", 4, 131072, "gpu.intel.com/i915", &[0, 1])],
        ("GenuineIntel", 2, 112, 224, true),
        1_031_000,
    );
}

#[test]
fn cpu_only_sapphire_rapids_has_amx_labels_and_no_accelerators() {
    assert_inventory("cpu-spr-amx", &[], ("GenuineIntel", 2, 112, 224, true), 515_000);
    let labels = fixture("cpu-spr-amx").labels();
    assert_eq!(labels.get("oim.opea.dev/cpu.amx").map(String::as_str), Some("true"));
    assert!(!labels.contains_key("oim.opea.dev/accelerator.product"));
}

#[test]
fn an_unknown_nvidia_device_is_reported_with_a_pci_slug_not_dropped() {
    assert_inventory(
        "unknown-nvidia",
        &[(Vendor::Nvidia, "pci-10de-2999", 2, 0, "nvidia.com/gpu", &[0])],
        ("AuthenticAMD", 1, 8, 16, false),
        64_000,
    );
}

#[test]
fn gpus_bound_to_vfio_pci_belong_to_a_vm_and_are_not_counted() {
    assert_inventory(
        "vfio-bound",
        &[(Vendor::Nvidia, "h100-sxm-80gb", 1, 81559, "nvidia.com/gpu", &[1])],
        ("GenuineIntel", 2, 112, 224, true),
        1_031_000,
    );
}

#[test]
fn a_bmc_vga_and_intel_nics_are_not_accelerators() {
    assert_inventory("bmc-and-nics-only", &[], ("GenuineIntel", 2, 80, 160, false), 257_000);
}

#[test]
fn plain_folders_work_like_symlinks_and_a_missing_root_is_an_error() {
    let dir = std::env::temp_dir().join(format!("oim-plain-sysfs-{}", std::process::id()));
    let dev = dir.join("sys/bus/pci/devices/0000:01:00.0");
    std::fs::create_dir_all(&dev).unwrap();
    for (f, v) in
        [("vendor", "0x10de"), ("device", "0x27b8"), ("class", "0x030200"), ("numa_node", "-1"), ("driver", "nvidia")]
    {
        std::fs::write(dev.join(f), format!("{v}\n")).unwrap();
    }
    let inv = detect(&dir).unwrap();
    assert_eq!((inv.accelerators[0].product.as_str(), inv.accelerators[0].count), ("l4", 1));
    assert!(inv.accelerators[0].numa_nodes.is_empty(), "-1 means unknown");
    assert!(inv.cpu.is_none(), "no proc/cpuinfo: unknown, not an error");
    std::fs::remove_dir_all(&dir).unwrap();
    let err = detect(&dir).unwrap_err().to_string();
    assert!(err.contains("cannot read") && err.contains("--root"), "{err}");
}
