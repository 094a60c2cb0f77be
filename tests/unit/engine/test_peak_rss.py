"""peak_rss_mb is the process's own peak: a worker spawned by a large parent does not report the
parent's size (getrusage's ru_maxrss survives exec; Linux's VmHWM does not)."""

from __future__ import annotations

import multiprocessing as mp
import sys

import numpy as np
import pytest

from pocketlm.engine.bench import peak_rss_mb


def _child_peak(queue) -> None:
    from pocketlm.engine.bench import peak_rss_mb as child_peak

    queue.put(child_peak())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM is Linux's")
def test_a_spawned_worker_reports_its_own_peak_not_its_parents():
    ballast = np.ones(400 * 2**20 // 8)  # 400 MB touched in this process
    parent = peak_rss_mb()
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child_peak, args=(queue,))
    proc.start()
    child = queue.get(timeout=120)
    proc.join(timeout=60)
    assert parent > 400 and ballast[-1] == 1.0
    assert child < parent - 300, (child, parent)
