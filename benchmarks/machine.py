"""The machine a benchmark ran on, measured at the time: CPU model and the flags that decide which
kernels run, cores, read bandwidth and matmul peak. Every benchmark records it with its numbers,
since machines of the same kind differ (AVX512-BF16 or not, 22 or 33 GB/s).

    python benchmarks/machine.py        # print it as JSON
"""

from __future__ import annotations

import json
import os
import platform
import time
from typing import Any

import torch

KERNEL_FLAGS = (
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)


def cpu_model_and_flags() -> tuple[str, list[str]]:
    """(model name, the kernel-relevant flags this CPU has) from /proc/cpuinfo."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                if model and flags:
                    break
    except OSError:
        pass
    return model, [f for f in KERNEL_FLAGS if f in flags]


def read_bandwidth_gbs(threads: int, mib: int = 1024, repeats: int = 5) -> float:
    """Best of `repeats` torch.sum passes over a `mib` MiB fp32 tensor, in GB/s."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = torch.ones(mib * (1 << 20) // 4, dtype=torch.float32)
        x.sum()  # fault the pages in
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            x.sum()
            best = min(best, time.perf_counter() - t0)
        return x.numel() * 4 / best / 1e9
    finally:
        torch.set_num_threads(previous)


def describe_machine() -> dict[str, Any]:
    """CPU, flags, cores, read bandwidth (1 thread and all) and matmul peaks (fp32, bf16)."""
    from pocketlm.common.device import usable_cores
    from pocketlm.train.peak import measured_peak_flops

    model, flags = cpu_model_and_flags()
    cores = usable_cores()
    out: dict[str, Any] = {
        "cpu": model,
        "kernel_flags": flags,
        "cores": cores,
        "os_cpus": os.cpu_count(),
        "torch": torch.__version__,
        "read_gbs_1_thread": round(read_bandwidth_gbs(1), 1),
        f"read_gbs_{cores}_threads": round(read_bandwidth_gbs(cores), 1),
        "matmul_gflops_fp32": round(measured_peak_flops("cpu", "float32") / 1e9),
    }
    if "avx512_bf16" in flags or "amx_bf16" in flags:
        out["matmul_gflops_bf16"] = round(measured_peak_flops("cpu", "bfloat16") / 1e9)
    return out


if __name__ == "__main__":
    print(json.dumps(describe_machine(), indent=2))
