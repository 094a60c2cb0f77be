"""Continuous batching: many generations share one Backend, one decode step for all at once.

Requests (prompt ids + SamplingParams + a sink for their events) wait in a bounded queue. One
background thread loops: drop cancelled requests (their slots are free again at once), admit
waiting requests into free slots, prefill them (long prompts in chunks, so running sequences keep
streaming), then run ONE batched decode step that appends one token to every active sequence.
Each sequence samples and stops through its own `SequenceState`, exactly as the single-sequence
engine does, so at temperature 0 a request gets the same tokens alone or in a crowd (up to the
floating-point rounding of batched kernels).

A request submitted with `echo` also scores its prompt: it is run with `extend` (logits after
every token, in chunks of at most ECHO_CHUNK tokens so a long prompt never holds a (T, V) block)
and its first event carries each prompt token's log-probability (None for the first token, which
nothing predicts). With generate=False it ends right there (finish_reason "length", no token):
scoring a text without generating, as OpenAI's echo with max_tokens 0.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from pocketlm.common.errors import InputError, PocketLMError
from pocketlm.common.log import get_logger
from pocketlm.engine.backend import Backend
from pocketlm.engine.generation import (
    GenerationChunk,
    SequenceState,
    TokenLogprob,
    prompt_logprobs,
)
from pocketlm.engine.sampling import SamplingParams
from pocketlm.tokenizer.tokenizer import Tokenizer

_log = get_logger("pocketlm.engine")
ECHO_CHUNK = 256  # most prompt tokens one extend of an echoed prompt runs (logits: (chunk, V))


def _failure(exc: Exception) -> str:
    """What a client is told when its generation fails: a PocketLM error says what went wrong
    and how to fix it; anything else is an internal error (logged here, never echoed)."""
    if isinstance(exc, PocketLMError):
        return f"generation failed: {exc}"
    return "generation failed: internal error (the server's log has the details)"


class SchedulerBusy(PocketLMError):
    """The waiting queue is full: try again later."""


class SchedulerClosed(PocketLMError):
    """The scheduler is shutting down or stopped and takes no new work."""


@dataclass(frozen=True)
class SeqEvent:
    """One step of one sequence: new text, the token behind it, and (last) why it ended.

    `error` is set (and `finish_reason` is None) when the sequence ended without finishing:
    cancelled at shutdown, or a failure; `done` is True on the last event of a sequence.
    """

    text: str
    token_ids: tuple[int, ...]
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    logprob: TokenLogprob | None = None
    error: str | None = None
    # echo: per prompt token its log-probability (None for the first), on the first event only
    prompt_logprobs: tuple[TokenLogprob | None, ...] | None = None

    @property
    def done(self) -> bool:
        """True on the sequence's last event."""
        return self.finish_reason is not None or self.error is not None


Sink = Callable[[SeqEvent], None]


@dataclass(eq=False)
class GenerationRequest:
    """A submitted sequence: cancel() it at any time; without a sink, read events() from it."""

    prompt_ids: list[int]
    params: SamplingParams
    logprobs: int | None = None
    sink: Sink | None = None
    adapter: int = -1  # the backend's adapter index for it (backend.use_adapter); -1: none
    echo: int | None = None  # score the prompt too, listing this many top alternatives a token
    generate: bool = True  # False (echo only): end after scoring the prompt
    submitted_at: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    finished_at: float | None = None
    _cancelled: threading.Event = field(default_factory=threading.Event)
    _queue: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    _scheduler: BatchScheduler | None = None

    @property
    def cancelled(self) -> bool:
        """True once cancel() was called."""
        return self._cancelled.is_set()

    def cancel(self) -> None:
        """Stop this sequence; its slot is freed at the scheduler's next step (no more events)."""
        self._cancelled.set()
        if self._scheduler is not None:
            self._scheduler.wake()

    def emit(self, event: SeqEvent) -> None:
        """Deliver an event to the sink (a failing sink cancels the request)."""
        if self.first_token_at is None and event.token_ids:
            self.first_token_at = time.perf_counter()
        if event.done:
            self.finished_at = time.perf_counter()
        if self.sink is None:
            self._queue.put(event)
            return
        try:
            self.sink(event)
        except Exception:  # e.g. the client's event loop has closed
            self._cancelled.set()

    def events(self, timeout: float | None = None) -> Iterator[SeqEvent]:
        """Events as they come, up to the last one (only without a sink); queue.Empty on timeout."""
        while True:
            event = self._queue.get(timeout=timeout)
            yield event
            if event.done:
                return


@dataclass
class _Running:
    request: GenerationRequest
    slot: int
    state: SequenceState
    prefilled: int = 0
    next_token: int | None = None  # the token to feed at the next decode step
    echoed: list[TokenLogprob | None] = field(default_factory=list)  # prompt logprobs so far
    last_row: object = None  # echo: the logits after the last prefilled token (V,)


@dataclass(frozen=True)
class SchedulerStats:
    """A snapshot of the slots, the queue and the token counters."""

    slots: int
    active: int
    queued: int
    prompt_tokens: int
    generated_tokens: int
    finished: int
    running: bool


class BatchScheduler:
    """Continuous batching over the slots of one Backend, driven by one background thread."""

    def __init__(
        self,
        backend: Backend,
        tokenizer: Tokenizer,
        *,
        max_queue: int = 32,
        idle_wait_s: float = 0.5,
    ) -> None:
        if max_queue < 0:
            raise InputError(f"max_queue must be >= 0, got {max_queue}")
        self.backend = backend
        self.tokenizer = tokenizer
        self.max_queue = max_queue
        self.idle_wait_s = idle_wait_s
        self._cond = threading.Condition()
        self._waiting: deque[GenerationRequest] = deque()
        self._free = list(range(backend.slots))[::-1]  # pop() takes the lowest slot
        self._prefilling: list[_Running] = []
        self._active: list[_Running] = []
        self._closed = False
        self._drain = True
        self._thread: threading.Thread | None = None
        self._prompt_tokens = 0
        self._generated_tokens = 0
        self._finished = 0

    # ---- public API (any thread) ----------------------------------------------------------------
    @property
    def context_length(self) -> int:
        """The most tokens one sequence holds (prompt + generated)."""
        return self.backend.context_length

    def start(self) -> BatchScheduler:
        """Start the background loop (idempotent); returns self."""
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="pocketlm-scheduler", daemon=True
                )
                self._thread.start()
        return self

    def submit(
        self,
        prompt_ids: Sequence[int],
        params: SamplingParams,
        *,
        logprobs: int | None = None,
        sink: Sink | None = None,
    ) -> GenerationRequest:
        """Queue one sequence; SchedulerBusy when the queue is full, InputError for a bad prompt."""
        return self.submit_many([(prompt_ids, params, logprobs, sink)])[0]

    def submit_many(
        self,
        specs: Sequence[tuple],
        *,
        adapter: int = -1,
        echo: int | None = None,
        generate: bool = True,
    ) -> list[GenerationRequest]:
        """Queue several sequences all or none: (prompt ids, params, logprobs, sink) each, all
        run with the backend's adapter index `adapter` (-1: none; backend.use_adapter); echo:
        score each prompt too (this many top alternatives a token); generate=False: only that."""
        if adapter != -1 and not hasattr(self.backend, "use_adapter"):
            raise InputError(f"the {self.backend.name} backend serves no adapters")
        if not generate and echo is None:
            raise InputError("a request that generates nothing must echo its prompt's logprobs")
        requests = []
        for ids, params, logprobs, sink in specs:
            self._check_prompt(ids)
            requests.append(
                GenerationRequest(
                    list(ids), params, logprobs, sink, adapter, echo, generate, _scheduler=self
                )
            )
        with self._cond:
            if self._closed:
                raise SchedulerClosed("the server is shutting down and takes no new requests")
            would_wait = len(self._waiting) + len(requests) - len(self._free)
            if would_wait > self.max_queue:
                raise SchedulerBusy(
                    f"all {self.backend.slots} slots are busy and the queue of "
                    f"{self.max_queue} is full"
                )
            self._waiting.extend(requests)
            self._cond.notify_all()
        return requests

    def generate(
        self, prompt_ids: Sequence[int], params: SamplingParams, *, timeout: float | None = None
    ) -> Iterator[SeqEvent]:
        """Submit one sequence and yield its events (closing the iterator cancels it)."""
        request = self.submit(prompt_ids, params)
        try:
            yield from request.events(timeout)
        finally:
            request.cancel()

    def wake(self) -> None:
        """Make the loop look at cancellations and new work now."""
        with self._cond:
            self._cond.notify_all()

    def stats(self) -> SchedulerStats:
        """Slots, active and queued sequences, token counters."""
        with self._cond:
            return SchedulerStats(
                slots=self.backend.slots,
                active=len(self._active) + len(self._prefilling),
                queued=len(self._waiting),
                prompt_tokens=self._prompt_tokens,
                generated_tokens=self._generated_tokens,
                finished=self._finished,
                running=self._thread is not None and self._thread.is_alive(),
            )

    def stop(self, *, drain: bool = False, timeout: float = 5.0) -> None:
        """Take no new work; finish (drain) or cancel what is queued and running; join the loop."""
        with self._cond:
            self._closed = True
            self._drain = drain
            self._cond.notify_all()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if drain and thread.is_alive():  # draining took too long: cancel the rest
                with self._cond:
                    self._drain = False
                    self._cond.notify_all()
                thread.join(timeout)

    # ---- the loop (scheduler thread only) -------------------------------------------------------
    def _check_prompt(self, ids: Sequence[int]) -> None:
        if len(ids) == 0:
            raise InputError("the prompt is empty")
        if len(ids) > self.context_length:
            raise InputError(
                f"the prompt has {len(ids)} tokens but the model's context is "
                f"{self.context_length} tokens"
            )
        vocab = self.backend.vocab_size
        bad = next((i for i in ids if not 0 <= int(i) < vocab), None)
        if bad is not None:
            raise InputError(f"prompt token id {bad} is outside the vocabulary of {vocab}")

    def _loop(self) -> None:
        while True:
            with self._cond:
                self._drop_cancelled()
                if self._closed and not self._drain:
                    self._abort_all("the server is shutting down")
                    return
                if self._closed and not (self._waiting or self._prefilling or self._active):
                    return
                while self._free and self._waiting:
                    self._admit(self._waiting.popleft())
                if not (self._prefilling or self._active):
                    self._cond.wait(self.idle_wait_s)
                    continue
            try:
                self._prefill_step()
                self._decode_step()
            except Exception as exc:  # never let the loop die: fail what was running
                _log.exception("scheduler step failed")
                with self._cond:
                    for run in self._prefilling + self._active:
                        self._end(run, error=_failure(exc))

    def _admit(self, request: GenerationRequest) -> None:
        slot = self._free.pop()
        if hasattr(self.backend, "use_adapter"):
            self.backend.use_adapter(slot, request.adapter)
        ids = request.prompt_ids
        room = self.context_length - len(ids) + 1  # the last token never needs a cache slot
        state = SequenceState(
            self.tokenizer,
            request.params,
            ids,
            max_new_tokens=min(request.params.max_new_tokens, room),
            logprobs=request.logprobs,
        )
        self._prefilling.append(_Running(request, slot, state))
        self._prompt_tokens += len(ids)

    def _drop_cancelled(self) -> None:
        if any(r.cancelled for r in self._waiting):
            self._waiting = deque(r for r in self._waiting if not r.cancelled)
        for run in [r for r in self._prefilling + self._active if r.request.cancelled]:
            self._release(run)

    def _abort_all(self, reason: str) -> None:
        for request in self._waiting:
            request.emit(SeqEvent("", (), None, len(request.prompt_ids), 0, error=reason))
        self._waiting.clear()
        for run in self._prefilling + self._active:
            self._end(run, error=reason)

    def _release(self, run: _Running) -> None:
        for group in (self._prefilling, self._active):
            if run in group:
                group.remove(run)
        self.backend.release(run.slot)
        self._free.append(run.slot)
        self._free.sort(reverse=True)
        self._finished += 1

    def _end(self, run: _Running, *, error: str) -> None:
        run.request.emit(
            SeqEvent(
                "", (), None, len(run.request.prompt_ids), len(run.state.generated), None, error
            )
        )
        self._release(run)

    def _prefill_step(self) -> None:
        budget = self.backend.prefill_chunk
        for run in list(self._prefilling):
            if run.request.cancelled:
                continue
            ids = run.request.prompt_ids
            left = len(ids) - run.prefilled
            take = left if budget is None else min(budget, left)
            if run.request.echo is not None:
                take = min(take, ECHO_CHUNK)
            try:
                logits = self._prefill(run, ids[run.prefilled : run.prefilled + take])
            except Exception as exc:  # this request fails; the others go on
                _log.exception("prefill failed")
                with self._cond:
                    self._end(run, error=_failure(exc))
                continue
            run.prefilled += take
            if run.prefilled == len(ids):
                self._prefilling.remove(run)
                self._active.append(run)
                if run.request.generate:
                    self._sample(run, logits)
                else:
                    self._echo_only(run)
            if budget is None or (budget := budget - take) <= 0:
                return  # the rest waits for the next step: running sequences keep streaming

    def _prefill(self, run: _Running, chunk: list[int]):
        """Prefill a chunk of the prompt; logits (V,) after it. Echo: extend instead, and
        record each token's log-probability under the logits before it."""
        if run.request.echo is None:
            return self.backend.prefill(run.slot, chunk)
        rows = self.backend.extend(run.slot, chunk)  # (n, V): after each token of the chunk
        if run.prefilled == 0:
            run.echoed.append(None)  # nothing predicts the first token
            scored, before = chunk[1:], rows[:-1]
        else:  # the chunk's first token is predicted by the previous chunk's last logits
            scored = chunk
            before = np.concatenate([run.last_row[None, :], rows[:-1]])  # (n, V)
        run.echoed += prompt_logprobs(before, scored, run.request.echo)
        run.last_row = rows[-1]
        return rows[-1]

    def _echo_only(self, run: _Running) -> None:
        """End a scoring request: its prompt's logprobs, no token generated."""
        n = len(run.request.prompt_ids)
        run.request.emit(SeqEvent("", (), "length", n, 0, prompt_logprobs=tuple(run.echoed)))
        with self._cond:
            self._release(run)

    def _decode_step(self) -> None:
        runs = [r for r in self._active if r.next_token is not None and not r.request.cancelled]
        if not runs:
            return
        logits = self.backend.decode([r.slot for r in runs], [r.next_token for r in runs])
        for run, row in zip(runs, logits):
            self._sample(run, row)

    def _sample(self, run: _Running, logits) -> None:
        try:
            token, chunk = run.state.step(logits)
        except PocketLMError as exc:
            with self._cond:
                self._end(run, error=str(exc))
            return
        run.next_token = token
        with self._cond:
            self._generated_tokens += 1
        event = self._event(run, chunk)
        if run.echoed:  # the first event carries the prompt's logprobs
            event = replace(event, prompt_logprobs=tuple(run.echoed))
            run.echoed = []
        run.request.emit(event)
        if chunk.finish_reason is not None:
            with self._cond:
                self._release(run)

    @staticmethod
    def _event(run: _Running, chunk: GenerationChunk) -> SeqEvent:
        return SeqEvent(
            chunk.text,
            chunk.token_ids,
            chunk.finish_reason,
            len(run.request.prompt_ids),
            len(run.state.generated),
            chunk.logprob,
        )
