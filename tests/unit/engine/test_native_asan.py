"""The native kernels under AddressSanitizer (slow tier): the C extension is rebuilt with
-fsanitize=address into a temporary directory and runs every precision (fp32, bf16, int8, int4;
tied and untied, q/k/v biases, q_dim wider than dim and ffn_dim, dims that leave vector tails, and
two models with every family option between them: model_variants.MANY and PARALLEL) at every ISA
level this CPU runs, prefill, decode and batched decode, with each weight in its own
heap buffer. Any out-of-bounds access aborts the run with ASan's report; a control run that
reads one row past a buffer must be caught, so the instrumentation is known to be live.
(ASan does not see inside AVX-512 masked loads, which cannot fault on masked-out lanes.)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from pocketlm.checkpoint.layout import CONFIG_FILE
from pocketlm.model.config import ModelConfig
from tests.conftest import engine_isa_params
from tests.unit.engine.model_variants import MANY, PARALLEL, TIED, WIDE, save_variants

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
NATIVE = REPO / "src" / "pocketlm" / "engine" / "native"
SOURCES = tuple(sorted(p.name for p in NATIVE.glob("*.c")))  # every file setup.py builds

pytestmark = pytest.mark.slow


def _libasan(cc: str) -> str | None:
    try:
        found = subprocess.run(
            [cc, "-print-file-name=libasan.so"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return found if os.path.isabs(found) and os.path.exists(found) else None


@pytest.fixture(scope="module")
def asan_build(tmp_path_factory) -> tuple[Path, str]:
    """(the extension built with AddressSanitizer, the libasan to preload)."""
    cc = shutil.which("gcc") or shutil.which("cc")
    libasan = _libasan(cc) if cc else None
    if libasan is None:
        pytest.skip("no C compiler with AddressSanitizer (libasan) here")
    out = tmp_path_factory.mktemp("asan") / "_native_asan.so"
    cmd = [cc, "-shared", "-fPIC", "-g", "-O1", "-std=gnu11", "-pthread", "-fno-math-errno"]
    cmd += ["-fsanitize=address", "-fno-omit-frame-pointer", "-fno-common"]
    cmd += ["-I", sysconfig.get_paths()["include"], *(str(NATIVE / s) for s in SOURCES)]
    subprocess.run([*cmd, "-o", str(out), "-lm"], check=True, capture_output=True, timeout=600)
    return out, libasan


@pytest.fixture(scope="module")
def asan_models(synthetic_pipeline, tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("asan-models")
    tok = synthetic_pipeline["tokenizer"]
    tails = ModelConfig(  # float-only dims that are no multiple of 16: every kernel's tail code
        vocab_size=515, dim=40, n_layers=1, n_heads=2, n_kv_heads=1, ffn_dim=72, max_seq_len=64
    )
    models = [*save_variants(root, "tied", TIED, tok).values()]
    models += save_variants(root, "wide", WIDE, tok).values()
    models += save_variants(root, "tails", tails, tok, schemes=("bf16",)).values()
    models += save_variants(root, "many", MANY, tok).values()
    models += save_variants(root, "parallel", PARALLEL, tok, schemes=("int8",)).values()
    return models


def _run(args: list[str], libasan: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "LD_PRELOAD": libasan,
        "ASAN_OPTIONS": "detect_leaks=0:halt_on_error=1:exitcode=99",
        "PYTHONMALLOC": "malloc",  # Python's own small objects in malloc too, inside redzones
        "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    runner = HERE / "native_asan_runner.py"
    return subprocess.run(
        [sys.executable, str(runner), *args], capture_output=True, text=True, env=env, timeout=1200
    )


def test_asan_catches_a_read_past_a_buffer(asan_build):
    """The control: without it, a clean run below could mean the instrumentation was off."""
    so, libasan = asan_build
    r = _run([str(so), "--overflow"], libasan)
    assert r.returncode == 99, r.stdout + r.stderr
    assert "heap-buffer-overflow" in r.stderr and "plm_dequant_rows" in r.stderr, r.stderr


def test_native_kernels_run_clean_under_asan(asan_build, asan_models, tmp_path):
    so, libasan = asan_build
    isas = [p.values[0] for p in engine_isa_params() if not p.marks]
    assert isas, "no ISA level runs here"
    out = tmp_path / "logits.npz"
    r = _run([str(so), str(out), ",".join(isas), *map(str, asan_models)], libasan)
    assert r.returncode == 0 and "AddressSanitizer" not in r.stderr, r.stdout + r.stderr[-5000:]
    got = np.load(out)
    assert len(got.files) == 3 * len(isas) * len(asan_models)
    # The instrumented build computes what the installed one does (it really ran the kernels).
    from pocketlm.engine.native_backend import NativeBackend

    ids = [1, *range(5, 44)]
    for d in asan_models:
        for isa in isas:
            b = NativeBackend(
                d, ModelConfig.load(d / CONFIG_FILE), threads=2, isa=isa, max_batch=32
            )
            ref = b.extend(0, ids)
            assert np.allclose(got[f"{d.name}/{isa}/extend"], ref, rtol=1e-4, atol=1e-5), (d, isa)
