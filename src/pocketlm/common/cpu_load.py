"""How busy the machine's cores are with OTHER processes, from the kernel's counters.

A laptop runs other programs. Threads that expect a core each and find it taken wait on each
other (a step ends when its slowest thread does), so a run that sizes its threads by the cores
that are actually free, and re-checks during long work, keeps most of its speed; one that uses
every core regardless can lose most of it. Linux only (/proc); elsewhere the load reads 0.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from pocketlm.common.device import usable_cores

_TICKS_PER_S = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class CpuSample:
    """Cumulative CPU seconds at one moment: of the cores this process may use, and its own."""

    wall_s: float
    busy_s: float  # time the usable cores spent not idle (any process), summed over cores
    own_s: float  # this process's CPU time (all its threads)


def _usable_cpu_ids() -> set[int] | None:
    try:
        return set(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return None


def sample_cpu(now: Callable[[], float] = time.monotonic) -> CpuSample | None:
    """The counters now, or None where /proc is not there."""
    ids = _usable_cpu_ids()
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            lines = [line.split() for line in fh if line.startswith("cpu") and line[3].isdigit()]
        with open("/proc/self/stat", encoding="ascii") as fh:
            own_fields = fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    busy_ticks = 0
    for fields in lines:
        if ids is not None and int(fields[0][3:]) not in ids:
            continue
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[1:9])
        # steal: the hypervisor gave the core to another guest, as good as busy for us
        busy_ticks += user + nice + system + irq + softirq + steal
    own_ticks = int(own_fields[11]) + int(own_fields[12])  # utime + stime
    return CpuSample(now(), busy_ticks / _TICKS_PER_S, own_ticks / _TICKS_PER_S)


def others_busy_cores(before: CpuSample | None, after: CpuSample | None) -> float:
    """Cores' worth of CPU other processes used between two samples (0 when unknown)."""
    if before is None or after is None or after.wall_s <= before.wall_s:
        return 0.0
    others = (after.busy_s - before.busy_s) - (after.own_s - before.own_s)
    return max(0.0, others / (after.wall_s - before.wall_s))


def measure_others_load(seconds: float = 0.5, sleep: Callable[[float], None] = time.sleep) -> float:
    """Cores' worth of CPU other processes use, over `seconds` (this process idle meanwhile)."""
    before = sample_cpu()
    sleep(seconds)
    return others_busy_cores(before, sample_cpu())


def runnable_others(samples: int = 8, interval_s: float = 0.002) -> float:
    """Threads of other processes ready to run right now: the median over a few quick reads of
    the kernel's runnable count, less this reading thread (0 where /proc is not there).
    Instant (~15 ms), for decisions at start-up, where the counters above would need a window."""
    counts = []
    for i in range(samples):
        try:
            with open("/proc/stat", encoding="ascii") as fh:
                running = next(int(x.split()[1]) for x in fh if x.startswith("procs_running"))
        except (OSError, StopIteration, ValueError):
            return 0.0
        counts.append(max(0, running - 1))
        if i + 1 < samples:
            time.sleep(interval_s)
    counts.sort()
    return float(counts[len(counts) // 2])


def free_cores(others_busy: float, cores: int | None = None) -> int:
    """Usable cores not taken by others' load (at least 1). A core counts as taken when it is
    busy more than a quarter of the time: a brief blip should not halve a run's threads."""
    total = cores if cores is not None else usable_cores()
    return max(1, total - math.floor(others_busy + 0.75))
