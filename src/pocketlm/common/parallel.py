"""Order-preserving parallel map over worker processes with a bounded number of tasks in flight."""

from __future__ import annotations

import multiprocessing as mp
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

A = TypeVar("A")
R = TypeVar("R")


def resolve_workers(workers: int) -> int:
    """0 -> number of usable CPU cores; otherwise the given count (>= 1)."""
    if workers > 0:
        return workers
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def ordered_map(
    fn: Callable[[A], R], items: Iterable[A], workers: int, max_in_flight: int | None = None
) -> Iterator[R]:
    """Yield fn(item) in input order; at most `max_in_flight` items are pending, so memory stays bounded.

    workers <= 1 runs inline (no processes). Workers are spawned (not forked) so that threads
    in the parent (tokenizers, torch) cannot deadlock them.
    """
    if workers <= 1:
        for item in items:
            yield fn(item)
        return
    limit = max_in_flight or 2 * workers
    with mp.get_context("spawn").Pool(workers) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.apply_async(fn, (item,)))
            if len(pending) >= limit:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()
