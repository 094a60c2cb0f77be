"""Run the native kernels from an AddressSanitizer build (subprocess of test_native_asan.py).

Usage: python native_asan_runner.py ASAN_SO OUT.npz ISA[,ISA...] MODEL_DIR...  runs, for each
model and ISA level, the native backend's prefill (GEMM kernels), decode (GEMV kernels) and a
batched decode over three slots, with every weight copied into its own heap buffer so that a
read past any tensor lands in ASan's redzone (memory-mapped pages would not), and saves the
logits. `python native_asan_runner.py ASAN_SO --overflow` instead reads one row past a heap
buffer through plm_dequant_rows: the control that shows the instrumentation is live.
"""

from __future__ import annotations

import ctypes
import importlib.util
import sys
from pathlib import Path

import numpy as np


def load_asan_module(path: str) -> None:
    """Make the ASan build THE pocketlm.engine._native for everything imported after this."""
    spec = importlib.util.spec_from_file_location("pocketlm.engine._native", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules["pocketlm.engine._native"] = module


def overflow(path: str) -> None:
    class Matrix(ctypes.Structure):
        _fields_ = [(n, ctypes.c_int) for n in ("dtype", "rows", "cols", "group")] + [
            (n, ctypes.c_void_p) for n in ("data", "scale_f32", "scale_f16")
        ]

    lib = ctypes.CDLL(path)
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    cols = 8
    one_row = libc.malloc(4 * cols)  # one row of floats; the matrix below claims two
    out = (ctypes.c_float * (2 * cols))()
    m = Matrix(0, 2, cols, 0, one_row, None, None)
    lib.plm_dequant_rows(ctypes.byref(m), 0, 2, out)
    print("read past the buffer without a report")


def main() -> None:
    so, out = sys.argv[1], sys.argv[2]
    if out == "--overflow":
        overflow(so)
        return
    load_asan_module(so)
    from pocketlm.checkpoint import safetensors_mmap
    from pocketlm.checkpoint.layout import CONFIG_FILE
    from pocketlm.engine import _native
    from pocketlm.engine.native_backend import NativeBackend
    from pocketlm.model.config import ModelConfig

    assert _native.__file__ == so, _native.__file__  # the instrumented build, not the installed one
    mapped_get = safetensors_mmap.MappedTensors.get
    safetensors_mmap.MappedTensors.get = lambda self, name: np.array(mapped_get(self, name))
    isas, models = sys.argv[3].split(","), [Path(p) for p in sys.argv[4:]]
    ids = [1, *range(5, 44)]  # 40 tokens in chunks of 32 and 8: the GEMM and GEMV kernels
    results = {}
    for d in models:
        config = ModelConfig.load(d / CONFIG_FILE)
        for isa in isas:
            # kv_rewind 0: a sliding layer's cache rolls after 8 + 32 positions (MANY's window 8)
            b = NativeBackend(d, config, threads=2, isa=isa, slots=3, max_batch=32, kv_rewind=0)
            key = f"{d.name}/{isa}"
            results[key + "/extend"] = b.extend(0, ids)
            results[key + "/decode"] = np.stack([b.decode([0], [t])[0] for t in ids[:4]])
            b.prefill(1, ids[:7])
            b.prefill(2, ids[:3])
            results[key + "/batched"] = b.decode([0, 1, 2], [5, 6, 7])
    np.savez(out, **results)
    print(f"ran {len(results)} kernel cases under AddressSanitizer")


if __name__ == "__main__":
    main()
