#!/usr/bin/env python3
"""Writes the simulated kwok nodes in this folder from one table.

Each node carries capacity/allocatable (pods, cpu, memory, ephemeral-storage, the vendor resource,
hugepages-2Mi on Gaudi), the labels the vendor plugins and NFD would publish, our agent's labels and
an `oim.opea.dev/inventory` annotation that is a valid inventory document (device-table slugs).
Re-run after changing the table; `cargo test` checks the files against src/hardware/devices.yaml.
"""
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))

SPR_FLAGS = ["avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8"]
GENOA_FLAGS = ["avx2", "avx512f", "avx512_bf16", "avx512_vnni"]
ICX_FLAGS = ["avx2", "avx512f", "avx512_vnni"]

def cpu(vendor, model, sockets, cores, flags):
    return {"vendor": vendor, "model": model, "sockets": sockets, "cores": cores, "threads": cores * 2,
            "flags": flags, "numaNodeCount": sockets}

NODES = [
    # name, vendor, slug, productName, pciVendor, pciDevice, count, memMiB, resource, vendor labels, cpu, hostMiB, cpus
    ("oim-h100-0", "nvidia", "h100-sxm-80gb", "NVIDIA H100 SXM5 80GB", "10de", "2330", 8, 81559, "nvidia.com/gpu",
     {"nvidia.com/gpu.present": "true", "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3", "nvidia.com/gpu.count": "8",
      "nvidia.com/gpu.memory": "81559", "nvidia.com/gpu.family": "hopper", "nvidia.com/gpu.compute.major": "9",
      "nvidia.com/gpu.compute.minor": "0", "nvidia.com/mig.strategy": "none", "feature.node.kubernetes.io/pci-10de.present": "true"},
     cpu("GenuineIntel", "Intel(R) Xeon(R) Platinum 8480+", 2, 112, SPR_FLAGS), 2063000, 224),
    ("oim-l4-0", "nvidia", "l4", "NVIDIA L4", "10de", "27b8", 1, 23034, "nvidia.com/gpu",
     {"nvidia.com/gpu.present": "true", "nvidia.com/gpu.product": "NVIDIA-L4", "nvidia.com/gpu.count": "1",
      "nvidia.com/gpu.memory": "23034", "nvidia.com/gpu.family": "ada-lovelace", "nvidia.com/gpu.compute.major": "8",
      "nvidia.com/gpu.compute.minor": "9", "feature.node.kubernetes.io/pci-10de.present": "true"},
     cpu("AuthenticAMD", "AMD EPYC 7R13 Processor", 1, 8, ["avx2"]), 64000, 16),
    ("oim-l4-1", "nvidia", "l4", "NVIDIA L4", "10de", "27b8", 1, 23034, "nvidia.com/gpu",
     {"nvidia.com/gpu.present": "true", "nvidia.com/gpu.product": "NVIDIA-L4", "nvidia.com/gpu.count": "1",
      "nvidia.com/gpu.memory": "23034", "nvidia.com/gpu.family": "ada-lovelace", "nvidia.com/gpu.compute.major": "8",
      "nvidia.com/gpu.compute.minor": "9", "feature.node.kubernetes.io/pci-10de.present": "true"},
     cpu("AuthenticAMD", "AMD EPYC 7R13 Processor", 1, 8, ["avx2"]), 64000, 16),
    ("oim-a100-0", "nvidia", "a100-sxm-40gb", "NVIDIA A100 SXM4 40GB", "10de", "20b0", 4, 40960, "nvidia.com/gpu",
     {"nvidia.com/gpu.present": "true", "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-40GB", "nvidia.com/gpu.count": "4",
      "nvidia.com/gpu.memory": "40960", "nvidia.com/gpu.family": "ampere", "nvidia.com/gpu.compute.major": "8",
      "nvidia.com/gpu.compute.minor": "0", "nvidia.com/mig.strategy": "none", "feature.node.kubernetes.io/pci-10de.present": "true"},
     cpu("AuthenticAMD", "AMD EPYC 7742 64-Core Processor", 2, 128, ["avx2"]), 1031000, 256),
    ("oim-mi300x-0", "amd", "mi300x", "AMD Instinct MI300X", "1002", "74a1", 8, 196608, "amd.com/gpu",
     {"amd.com/gpu.device-id": "74a1", "amd.com/gpu.product-name": "AMD_Instinct_MI300X", "amd.com/gpu.vram": "192G",
      "amd.com/gpu.cu-count": "304", "amd.com/gpu.family": "AI", "amd.com/gpu.compute-memory-partition": "spx_nps1",
      "feature.node.kubernetes.io/amd-gpu": "true", "feature.node.kubernetes.io/pci-1002.present": "true"},
     cpu("AuthenticAMD", "AMD EPYC 9654 96-Core Processor", 2, 192, GENOA_FLAGS), 2321000, 384),
    ("oim-gaudi2-0", "habana", "gaudi2", "Intel Gaudi 2 (HL-225)", "1da3", "1020", 8, 98304, "habana.ai/gaudi",
     {"habana.ai/device.count": "8", "habana.ai/device.id": "1020", "habana.ai/device.family": "gaudi",
      "intel.feature.node.kubernetes.io/gaudi": "true", "feature.node.kubernetes.io/pci-1da3.present": "true"},
     cpu("GenuineIntel", "Intel(R) Xeon(R) Platinum 8380 CPU @ 2.30GHz", 2, 80, ICX_FLAGS), 1031000, 160),
    ("oim-max1550-0", "intel", "max-1550", "Intel Data Center GPU Max 1550", "8086", "0bd5", 4, 131072, "gpu.intel.com/i915",
     {"intel.feature.node.kubernetes.io/gpu": "true", "gpu.intel.com/family": "Max_Series", "gpu.intel.com/product": "Max_1550",
      "gpu.intel.com/device.count": "4", "gpu.intel.com/device-id.0380-0bd5.present": "true",
      "gpu.intel.com/device-id.0380-0bd5.count": "4", "gpu.intel.com/tiles": "8"},
     cpu("GenuineIntel", "Intel(R) Xeon(R) Platinum 8480+", 2, 112, SPR_FLAGS), 1031000, 224),
    ("oim-cpu-spr-0", "cpu", None, None, None, None, 0, 0, None,
     {"feature.node.kubernetes.io/cpu-cpuid.AMXTILE": "true", "feature.node.kubernetes.io/cpu-cpuid.AVX512F": "true"},
     cpu("GenuineIntel", "Intel(R) Xeon(R) Platinum 8480+", 2, 112, SPR_FLAGS), 515000, 224),
]

def write(name, vendor, slug, product_name, pci_vendor, pci_device, count, mem, resource, vendor_labels, cpu_info, host_mib, cpus):
    inventory = {"schema": "oim.opea.dev/inventory/v1", "node": name, "accelerators": [], "cpu": cpu_info, "memoryMiB": host_mib}
    labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64", "type": "kwok",
              "oim.test/pool": "standard"}
    labels.update(vendor_labels)
    capacity = {"pods": "110", "cpu": str(cpus), "memory": f"{host_mib}Mi", "ephemeral-storage": "2Ti"}
    if slug:
        numa = list(range(cpu_info["numaNodeCount"]))
        inventory["accelerators"].append({
            "vendor": vendor, "product": slug, "productName": product_name, "pciVendorId": pci_vendor,
            "pciDeviceIds": [pci_device], "count": count, "memoryMiB": mem, "resourceName": resource,
            "numaNodes": numa})
        labels.update({"oim.opea.dev/accelerator.vendor": vendor, "oim.opea.dev/accelerator.product": slug,
                       "oim.opea.dev/accelerator.count": str(count), "oim.opea.dev/accelerator.memory-gib": str(mem // 1024)})
        capacity[resource] = str(count)
        if vendor == "habana":
            capacity["hugepages-2Mi"] = "200Gi"
    if "amx_tile" in cpu_info["flags"]:
        labels["oim.opea.dev/cpu.amx"] = "true"
    if "avx512f" in cpu_info["flags"]:
        labels["oim.opea.dev/cpu.avx512"] = "true"
    node = {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": dict(sorted(labels.items())),
                     "annotations": {"kwok.x-k8s.io/node": "fake",
                                     "oim.opea.dev/inventory": json.dumps(inventory, separators=(",", ":"))}},
        "spec": {},
        "status": {"capacity": capacity, "allocatable": dict(capacity)},
    }
    # JSON is valid YAML; kubectl and serde-saphyr read it as is.
    with open(os.path.join(HERE, f"{name}.yaml"), "w") as f:
        f.write(f"# Simulated node, written by generate.py: {count or 'no'} accelerator(s) {slug or ''}\n")
        f.write(json.dumps(node, indent=2) + "\n")

for n in NODES:
    write(*n)
