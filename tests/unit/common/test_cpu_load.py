"""Other programs' CPU load, from the kernel's counters: a busy process is seen, and the cores
left free follow from it."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from pocketlm.common.cpu_load import (
    CpuSample,
    free_cores,
    measure_others_load,
    others_busy_cores,
    runnable_others,
    sample_cpu,
)

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def test_others_load_is_the_cores_busy_minus_this_process():
    a = CpuSample(wall_s=10.0, busy_s=100.0, own_s=5.0)
    b = CpuSample(wall_s=12.0, busy_s=103.5, own_s=6.5)  # 3.5 core-s busy, 1.5 of them ours
    assert others_busy_cores(a, b) == pytest.approx(1.0)
    assert others_busy_cores(b, a) == 0.0 and others_busy_cores(None, b) == 0.0


@pytest.mark.parametrize(
    ("others", "cores", "free"),
    [(0.0, 2, 2), (0.2, 2, 2), (0.3, 2, 1), (1.0, 2, 1), (1.9, 2, 1), (1.3, 8, 6), (9.0, 4, 1)],
)
def test_free_cores_leave_each_busy_core_to_its_owner(others, cores, free):
    assert free_cores(others, cores) == free


@linux
def test_a_spinning_process_is_seen_as_one_busy_core():
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)  # let it start spinning
        assert measure_others_load(0.6) >= 0.6  # other load on the machine can only add
        assert runnable_others() >= 1
    finally:
        spinner.kill()
        spinner.wait()
    own = sample_cpu()
    assert own is not None and own.busy_s > 0 and own.own_s > 0
