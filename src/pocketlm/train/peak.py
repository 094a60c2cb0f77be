"""The machine's measured matmul peak, for honest MFU (model FLOPs utilisation) numbers."""

from __future__ import annotations

import time
from functools import lru_cache

import torch


@lru_cache(maxsize=8)
def measured_peak_flops(device_type: str, dtype_name: str = "float32", size: int = 1536) -> float:
    """Best FLOP/s of a square matmul on this device and dtype (a ~0.3 s probe, cached per process)."""
    dtype = getattr(torch, dtype_name)
    device = torch.device(device_type)
    if device.type == "cuda":
        size = 8192
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    best = float("inf")
    for i in range(6):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i:
            best = min(best, time.perf_counter() - t0)
    return 2 * size**3 / best
