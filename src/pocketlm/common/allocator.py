"""Process memory-allocator settings for training on CPU (glibc malloc; a no-op elsewhere)."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD = -1  # mallopt parameter numbers from glibc's malloc.h
_M_MMAP_THRESHOLD = -3
# Blocks below this come from the heap. Older glibc refuses more than 32 MiB: then that is used.
_MMAP_THRESHOLDS_BYTES = (1 << 30, 32 << 20)
_TRIM_THRESHOLD_BYTES = (1 << 31) - 1


def reuse_freed_memory() -> bool:
    """Let glibc keep freed blocks for reuse instead of returning them to the OS; True if applied.

    By default glibc serves every allocation above a (dynamic, <= 32 MiB) threshold with a fresh
    mmap and unmaps it on free, so each training step's activations and gradients are
    page-faulted and zeroed by the kernel again: 2-10k page faults per step at 1-6M parameters,
    7-10% of a CPU step. With large blocks served from the heap and no trimming, a step reuses
    the pages of the last one (0 faults). The process then keeps its peak memory until it exits,
    which a training process does anyway. Process-wide and not undone; a no-op (that still
    answers True) when another allocator such as jemalloc is preloaded.
    """
    if not sys.platform.startswith("linux"):
        return False
    mallopt = None
    for name in ("libc.so.6", ctypes.util.find_library("c"), None):  # None: the process's symbols
        try:
            mallopt = ctypes.CDLL(name).mallopt
            break
        except (OSError, AttributeError, TypeError):  # musl and others have no mallopt
            continue
    if mallopt is None:
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok_mmap = any(mallopt(_M_MMAP_THRESHOLD, size) == 1 for size in _MMAP_THRESHOLDS_BYTES)
    ok_trim = mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD_BYTES) == 1
    return ok_mmap and ok_trim
