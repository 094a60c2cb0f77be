"""Classification requests from any thread, run together in batches on one worker thread (the
server's counterpart of the generation scheduler for a classifier).

A request is a list of token lists, queued whole (all or none) and answered whole through a
Future. The worker takes whole queued requests up to `max_batch` inputs at a time (a larger
request runs alone, in batches of max_batch) and classifies them in one call, so concurrent
clients share batches. Up to `max_queue` inputs wait beyond what the worker takes next (a batch
when it is idle, nothing while it runs one: as the generation scheduler counts its free slots);
past that a request is refused (SchedulerBusy); after stop, SchedulerClosed. No torch here: the classifier does the computing.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Protocol

from pocketlm.common.errors import InputError
from pocketlm.common.log import get_logger
from pocketlm.engine.scheduler import SchedulerBusy, SchedulerClosed, SchedulerStats

_log = get_logger("pocketlm.engine")


class BatchClassifier(Protocol):
    """What the batcher runs (engine/classify.Classifier)."""

    labels: tuple[str, ...]
    context_length: int

    def predict(self, inputs: Sequence[Sequence[int]], batch_size: int = 32) -> list[Any]: ...


@dataclass
class _Request:
    inputs: list[list[int]]
    future: Future


class ClassifyBatcher:
    """Batches classification requests onto one worker thread."""

    def __init__(
        self, classifier: BatchClassifier, *, max_batch: int = 32, max_queue: int = 256
    ) -> None:
        if max_batch < 1 or max_queue < 0:
            raise InputError(
                f"max_batch must be >= 1 and max_queue >= 0 ({max_batch}, {max_queue})"
            )
        self.classifier = classifier
        self.max_batch, self.max_queue = max_batch, max_queue
        self._cond = threading.Condition()
        self._waiting: deque[_Request] = deque()
        self._queued_inputs = 0
        self._active = 0
        self._closed = False
        self._drain = True
        self._thread: threading.Thread | None = None
        self._tokens = 0
        self._finished = 0

    @property
    def context_length(self) -> int:
        """The most tokens one input is classified by."""
        return self.classifier.context_length

    @property
    def labels(self) -> tuple[str, ...]:
        return self.classifier.labels

    def start(self) -> ClassifyBatcher:
        """Start the worker (idempotent); returns self."""
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="pocketlm-classify", daemon=True
                )
                self._thread.start()
        return self

    @property
    def max_request(self) -> int:
        """The most inputs one request may hold: a batch and a full queue."""
        return self.max_batch + self.max_queue

    def submit(self, inputs: Sequence[Sequence[int]]) -> Future:
        """Queue one request; its Future gives one prediction per input, in order.
        SchedulerBusy when the queue is full; InputError for a request that could never fit
        (more than max_request inputs)."""
        request = _Request([list(ids) for ids in inputs], Future())
        if len(request.inputs) > self.max_request:
            raise InputError(
                f"{len(request.inputs)} inputs in one request: this server takes at most "
                f"{self.max_request}"
            )
        with self._cond:
            if self._closed:
                raise SchedulerClosed("the server is shutting down and takes no new requests")
            free = 0 if self._active else self.max_batch  # what the idle worker takes at once
            if self._queued_inputs + len(request.inputs) - free > self.max_queue:
                raise SchedulerBusy(
                    f"{self._queued_inputs} inputs wait already; a batch of {self.max_batch} "
                    f"and a queue of {self.max_queue} are full"
                )
            self._waiting.append(request)
            self._queued_inputs += len(request.inputs)
            self._cond.notify_all()
        return request.future

    def stats(self) -> SchedulerStats:
        """Inputs classified now and waiting, tokens classified, inputs finished."""
        with self._cond:
            return SchedulerStats(
                slots=self.max_batch,
                active=self._active,
                queued=self._queued_inputs,
                prompt_tokens=self._tokens,
                generated_tokens=0,
                finished=self._finished,
                running=self._thread is not None and self._thread.is_alive(),
            )

    def stop(self, *, drain: bool = False, timeout: float = 5.0) -> None:
        """Take no new work; finish (drain) or refuse what is queued; join the worker."""
        with self._cond:
            self._closed = True
            self._drain = drain
            if not drain:
                self._refuse_waiting()
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def _refuse_waiting(self) -> None:
        while self._waiting:
            request = self._waiting.popleft()
            request.future.set_exception(SchedulerClosed("the server is shutting down"))
        self._queued_inputs = 0

    def _take(self) -> list[_Request] | None:
        """The next requests to run together (None: stop)."""
        with self._cond:
            while not self._waiting:
                if self._closed:
                    return None
                self._cond.wait(0.5)
            taken = [self._waiting.popleft()]
            size = len(taken[0].inputs)
            while self._waiting and size + len(self._waiting[0].inputs) <= self.max_batch:
                size += len(self._waiting[0].inputs)
                taken.append(self._waiting.popleft())
            self._queued_inputs -= size
            self._active = size
            return taken

    def _loop(self) -> None:
        while (taken := self._take()) is not None:
            taken = [r for r in taken if r.future.set_running_or_notify_cancel()]
            inputs = [ids for r in taken for ids in r.inputs]
            try:
                predictions = self.classifier.predict(inputs, self.max_batch) if inputs else []
            except Exception as exc:  # a bad input or a failing model: fail these requests only
                _log.exception("classifying %d inputs failed", len(inputs))
                for r in taken:
                    r.future.set_exception(exc)
            else:
                at = 0
                for r in taken:
                    r.future.set_result(predictions[at : at + len(r.inputs)])
                    at += len(r.inputs)
            with self._cond:
                self._active = 0
                self._finished += len(inputs)
                self._tokens += sum(min(len(i), self.context_length) for i in inputs)
