"""A bounded pool of worker threads whose results are handled on the caller's thread.

At most `concurrency` jobs are handed out at a time (so a kill loses at most that many requests
in flight), and only the caller's thread handles results (one writer: no locks on the files).
The threads are daemons and `stop` is set when the caller fails or is interrupted, so a Ctrl-C
never waits for a request that hangs or a retry that sleeps.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable
from typing import TypeVar

J = TypeVar("J")
R = TypeVar("R")
_END = object()


def run_pool(
    jobs: Iterable[J],
    work: Callable[[J], R],
    handle: Callable[[J, R], None],
    *,
    concurrency: int,
    stop: threading.Event,
) -> None:
    """Run work(job) on `concurrency` threads and handle(job, result) here as each finishes;
    an exception in work or handle stops the pool (stop is set) and is raised here."""
    todo: queue.Queue = queue.Queue()
    done: queue.Queue = queue.Queue()
    threads = [
        threading.Thread(target=_worker, args=(todo, done, work), daemon=True, name=f"synth-{i}")
        for i in range(concurrency)
    ]
    for t in threads:
        t.start()
    pending = iter(jobs)
    outstanding = 0
    finished = False
    try:
        while True:
            while outstanding < concurrency and (job := next(pending, _END)) is not _END:
                todo.put(job)
                outstanding += 1
            if outstanding == 0:
                break
            job, result, error = done.get()
            outstanding -= 1
            if error is not None:
                raise error
            handle(job, result)
        finished = True
    finally:
        if not finished:
            stop.set()  # retries sleeping on the stop event wake up and give up
        for _ in threads:
            todo.put(_END)


def _worker(todo: queue.Queue, done: queue.Queue, work: Callable) -> None:
    while (job := todo.get()) is not _END:
        try:
            done.put((job, work(job), None))
        except BaseException as exc:  # handed to the caller's thread, which raises it
            done.put((job, None, exc))
