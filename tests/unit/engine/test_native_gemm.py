"""The prefill GEMM kernels on their own (native_gemm_check.c, built here with the C compiler):
every edge of the packed-input GEMMs (rows that are no multiple of the register tile, token counts
that are no multiple of 16, columns over several blocks, odd columns) against a double-precision
reference at each ISA level this CPU runs; nothing written outside the outputs; the same bits
whether rows are computed in the engine's chunks or at once (results cannot depend on how the
workers split the rows). The model-level tests cover the same kernels through whole models."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import engine_isa_params

HERE = Path(__file__).resolve().parent
NATIVE = HERE.parents[2] / "src" / "pocketlm" / "engine" / "native"
# every kernel file: the tables (kernels*.c) and the GEMMs they point at (gemm_xt_*.c)
KERNELS = sorted(p.name for p in (*NATIVE.glob("kernels*.c"), *NATIVE.glob("gemm_xt_*.c")))


@pytest.fixture(scope="module")
def gemm_check(tmp_path_factory) -> Path:
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler here")
    out = tmp_path_factory.mktemp("gemm") / "gemm_check"
    cmd = [cc, "-O2", "-std=gnu11", "-fno-math-errno", "-I", str(NATIVE)]
    cmd += [str(HERE / "native_gemm_check.c"), *(str(NATIVE / s) for s in KERNELS)]
    subprocess.run([*cmd, "-o", str(out), "-lm"], check=True, capture_output=True, timeout=300)
    return out


@pytest.mark.parametrize("isa", engine_isa_params())
def test_prefill_gemms_match_a_double_reference_at_every_edge(gemm_check, isa):
    run = subprocess.run([str(gemm_check), isa], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.strip().endswith("0 failures")
