//! CPU and host memory from `ROOT/proc/cpuinfo`, `ROOT/proc/meminfo` and the NUMA nodes in
//! `ROOT/sys/devices/system/node`.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use crate::hardware::DetectError;
use crate::hardware::inventory::CpuInfo;

/// ISA flags that matter for the CPU backend and for labels; the rest are dropped.
const RELEVANT_FLAGS: &[&str] = &[
    "avx2",
    "avx512f",
    "avx512_bf16",
    "avx512_vnni",
    "avx512_fp16",
    "avx_vnni",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
    "amx_fp16",
];

/// Parses `/proc/cpuinfo`. None when the file has no processor entries (e.g. non-x86 formats
/// without the fields we read still count threads).
pub fn parse_cpuinfo(text: &str) -> Option<CpuInfo> {
    let mut info = CpuInfo::default();
    let mut packages = BTreeSet::new();
    let mut cores = BTreeSet::new();
    let mut package = String::new();
    let mut flags = BTreeSet::new();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else { continue };
        let (key, value) = (key.trim(), value.trim());
        match key {
            "processor" => info.threads += 1,
            "vendor_id" if info.vendor.is_empty() => info.vendor = value.to_string(),
            "model name" if info.model.is_empty() => info.model = value.to_string(),
            "physical id" => {
                package = value.to_string();
                packages.insert(package.clone());
            }
            "core id" => {
                cores.insert((package.clone(), value.to_string()));
            }
            "flags" => {
                flags.extend(value.split_whitespace().filter(|f| RELEVANT_FLAGS.contains(f)).map(str::to_string))
            }
            _ => {}
        }
    }
    if info.threads == 0 {
        return None;
    }
    info.sockets = u32::try_from(packages.len()).unwrap_or(u32::MAX).max(1);
    info.cores = if cores.is_empty() { info.threads } else { u32::try_from(cores.len()).unwrap_or(u32::MAX) };
    info.flags = RELEVANT_FLAGS.iter().filter(|f| flags.contains(**f)).map(|f| f.to_string()).collect();
    Some(info)
}

/// MemTotal from `/proc/meminfo`, in MiB.
pub fn parse_meminfo(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib / 1024)
}

/// `/proc/cpuinfo` of a 2,048-thread host is about 3 MiB.
const MAX_CPUINFO_BYTES: u64 = 16 << 20;
/// `/proc/meminfo` is a few KiB.
const MAX_MEMINFO_BYTES: u64 = 64 << 10;
/// More NUMA nodes than any host has (Linux allows 1,024).
const MAX_NODE_ENTRIES: usize = 4096;

/// Number of `nodeN` entries under `ROOT/sys/devices/system/node` (1 when absent).
pub fn numa_node_count(root: &Path) -> u32 {
    let dir = root.join("sys/devices/system/node");
    let count = fs::read_dir(dir)
        .map(|entries| {
            entries
                .take(MAX_NODE_ENTRIES)
                .filter_map(Result::ok)
                .filter(|e| {
                    let name = e.file_name();
                    let name = name.to_string_lossy();
                    name.strip_prefix("node").is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
                })
                .count()
        })
        .unwrap_or(0);
    u32::try_from(count).unwrap_or(u32::MAX).max(1)
}

/// CPU facts and host memory under `root`; missing files mean "unknown", not an error.
pub fn detect(root: &Path) -> Result<(Option<CpuInfo>, u64), DetectError> {
    // Bounded and regular files only: `cpuinfo -> /dev/urandom` is refused, not read forever.
    let read = |name: &str, limit: u64| match crate::bounded::read_text(&root.join(name), limit) {
        Ok(t) => Some(t),
        Err(crate::bounded::ReadError::Io { .. }) => None,
        Err(e) => {
            tracing::warn!("{e}; CPU facts from it are left out");
            None
        }
    };
    let cpu = read("proc/cpuinfo", MAX_CPUINFO_BYTES).and_then(|t| parse_cpuinfo(&t)).map(|mut c| {
        c.numa_node_count = numa_node_count(root);
        c
    });
    let memory = read("proc/meminfo", MAX_MEMINFO_BYTES).and_then(|t| parse_meminfo(&t)).unwrap_or(0);
    Ok((cpu, memory))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO_SOCKETS: &str = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\nphysical id\t: 0\ncore id\t: 0\nflags\t\t: fpu avx2 avx512f amx_tile amx_bf16\n\nprocessor\t: 1\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\nphysical id\t: 0\ncore id\t: 0\nflags\t\t: fpu avx2 avx512f amx_tile amx_bf16\n\nprocessor\t: 2\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\nphysical id\t: 1\ncore id\t: 0\nflags\t\t: fpu avx2 avx512f amx_tile amx_bf16\n";

    #[test]
    fn sockets_cores_threads_and_relevant_flags() {
        let c = parse_cpuinfo(TWO_SOCKETS).unwrap();
        assert_eq!((c.sockets, c.cores, c.threads), (2, 2, 3));
        assert_eq!(c.flags, ["avx2", "avx512f", "amx_tile", "amx_bf16"]);
        assert!(c.has_amx() && c.has_avx512());
    }

    #[test]
    fn a_cpuinfo_that_is_a_device_or_too_large_is_refused_at_once() {
        let root = std::env::temp_dir().join(format!("oim-cpuinfo-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(root.join("proc")).unwrap();
        std::os::unix::fs::symlink("/dev/urandom", root.join("proc/cpuinfo")).unwrap();
        std::os::unix::fs::symlink("/dev/zero", root.join("proc/meminfo")).unwrap();
        let start = std::time::Instant::now();
        assert_eq!(detect(&root).unwrap(), (None, 0));
        assert!(start.elapsed() < std::time::Duration::from_secs(2));
        fs::remove_file(root.join("proc/meminfo")).unwrap();
        let f = fs::File::create(root.join("proc/meminfo")).unwrap();
        f.set_len(MAX_MEMINFO_BYTES + 1).unwrap();
        assert_eq!(detect(&root).unwrap().1, 0, "an oversized meminfo is not read");
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn meminfo_total_in_mib() {
        assert_eq!(parse_meminfo("MemTotal:       2112512000 kB\nMemFree: 1 kB\n"), Some(2_063_000));
        assert_eq!(parse_meminfo("garbage"), None);
        assert!(parse_cpuinfo("").is_none());
    }
}
