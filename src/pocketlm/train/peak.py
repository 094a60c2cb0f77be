"""The machine's measured matmul peak, for honest MFU (model FLOPs utilisation) numbers."""

from __future__ import annotations

import time
from functools import lru_cache

import torch


def probe_peak_flops(
    device_type: str, dtype_name: str = "float32", size: int = 1536, min_seconds: float = 0.4
) -> float:
    """Best FLOP/s of a square matmul over at least `min_seconds` of repeats (first one dropped).

    Best, not mean: another process on the cores only ever lowers a probe, so the fastest repeat
    is the closest to what the hardware can do.
    """
    dtype = getattr(torch, dtype_name)
    device = torch.device(device_type)
    if device.type == "cuda":
        size = 8192
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    best, spent, i = float("inf"), 0.0, 0
    while i < 6 or spent < min_seconds:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
        if i:  # the first repeat pays for thread start-up and cold caches
            best, spent = min(best, seconds), spent + seconds
        i += 1
    return 2 * size**3 / best


@lru_cache(maxsize=8)
def measured_peak_flops(device_type: str, dtype_name: str = "float32") -> float:
    """probe_peak_flops, measured once per process (the live MFU of a run divides by it)."""
    return probe_peak_flops(device_type, dtype_name)


def remeasured_peak_flops(device_type: str, dtype_name: str = "float32") -> float:
    """The higher of the cached probe and a fresh one, for a run's final MFU: a probe taken at a
    busy moment reads low (seen here: 180 against 340 GFLOP/s) and would inflate the MFU."""
    return max(
        measured_peak_flops(device_type, dtype_name), probe_peak_flops(device_type, dtype_name)
    )
