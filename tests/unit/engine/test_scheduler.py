"""Continuous batching: crowds equal solo runs, bounded queue, cancel, shutdown, chunked prefill."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import numpy as np
import pytest

from pocketlm.common.errors import InputError
from pocketlm.engine.generation import SequenceState
from pocketlm.engine.sampling import SamplingParams
from pocketlm.engine.scheduler import BatchScheduler, SchedulerBusy, SchedulerClosed
from pocketlm.tokenizer.tokenizer import Tokenizer

GREEDY = SamplingParams(temperature=0.0, max_new_tokens=12)


@pytest.fixture(scope="module")
def tok(synthetic_pipeline) -> Tokenizer:
    return Tokenizer.load(synthetic_pipeline["tokenizer"])


class ScriptedBatch:
    """A Backend without a model (no extend/truncate: the scheduler never uses them): the next
    token is a fixed function of the slot's last token."""

    name = "scripted"

    def __init__(
        self,
        *,
        slots: int = 2,
        vocab: int = 512,
        context: int = 64,
        prefill_chunk: int | None = None,
        delay_s: float = 0.0,
        stop_id: int | None = None,
    ) -> None:
        self._slots, self._vocab, self._context = slots, vocab, context
        self.prefill_chunk = prefill_chunk
        self.delay_s = delay_s
        self.stop_id = stop_id  # emitted after 5 tokens when set
        self.history: list[list[int]] = [[] for _ in range(slots)]
        self.calls: list[tuple] = []
        self.lock = threading.Lock()

    slots = property(lambda self: self._slots)
    context_length = property(lambda self: self._context)
    vocab_size = property(lambda self: self._vocab)
    device = property(lambda self: "cpu")

    def position(self, slot: int) -> int:
        return len(self.history[slot])

    def _logits(self, slot: int) -> np.ndarray:
        seq = self.history[slot]
        logits = np.zeros(self._vocab, dtype=np.float32)
        if self.stop_id is not None and len(seq) >= 10:
            logits[self.stop_id] = 10.0
        else:
            logits[100 + (seq[-1] * 7 + len(seq)) % 300] = 10.0  # plain (non-special) tokens
        return logits

    def prefill(self, slot: int, token_ids: Sequence[int]) -> np.ndarray:
        self.calls.append(("prefill", slot, len(token_ids)))
        self.history[slot].extend(int(t) for t in token_ids)
        assert len(self.history[slot]) <= self._context
        return self._logits(slot)

    def decode(self, slots: Sequence[int], token_ids: Sequence[int]) -> np.ndarray:
        self.calls.append(("decode", tuple(slots)))
        time.sleep(self.delay_s)
        assert len(set(slots)) == len(slots)
        for s, t in zip(slots, token_ids):
            self.history[s].append(int(t))
        return np.stack([self._logits(s) for s in slots])

    def release(self, slot: int) -> None:
        self.history[slot] = []


def _text(scheduler: BatchScheduler, ids, params=GREEDY) -> tuple[str, list[int], str | None]:
    text, tokens, reason = "", [], None
    for event in scheduler.generate(ids, params, timeout=30):
        assert event.error is None, event.error
        text += event.text
        tokens += event.token_ids
        reason = event.finish_reason
    return text, tokens, reason


def _crowd(scheduler, prompts, params=GREEDY) -> list[tuple]:
    results: list = [None] * len(prompts)

    def one(i: int) -> None:
        results[i] = _text(scheduler, prompts[i], params)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def test_crowd_equals_alone_with_scripted_backend(tok):
    prompts = [[tok.bos_id, 100 + i, 200 + i] for i in range(6)]
    alone = []
    for p in prompts:
        s = BatchScheduler(ScriptedBatch(slots=1), tok).start()
        alone.append(_text(s, p))
        s.stop()
    backend = ScriptedBatch(slots=3)
    crowd = BatchScheduler(backend, tok).start()
    try:
        assert _crowd(crowd, prompts) == alone
        assert any(c[0] == "decode" and len(c[1]) > 1 for c in backend.calls), "never batched"
        assert crowd.stats().active == 0 and crowd.stats().queued == 0
    finally:
        crowd.stop()


def test_stop_token_and_length_finish(tok):
    s = BatchScheduler(ScriptedBatch(slots=1, stop_id=tok.end_of_turn_id), tok).start()
    try:
        _, tokens, reason = _text(s, [tok.bos_id, 120], SamplingParams(temperature=0))
        assert reason == "stop" and tokens[-1] == tok.end_of_turn_id
        _, tokens, reason = _text(
            s, [tok.bos_id, 120], SamplingParams(temperature=0, max_new_tokens=3)
        )
        assert reason == "length" and len(tokens) == 3
    finally:
        s.stop()


def test_queue_is_bounded_and_busy_is_reported(tok):
    s = BatchScheduler(ScriptedBatch(slots=1, delay_s=0.05, context=512), tok, max_queue=1).start()
    long = SamplingParams(temperature=0, max_new_tokens=200)
    try:
        first = s.submit([tok.bos_id, 101], long)
        second = s.submit([tok.bos_id, 102], long)
        with pytest.raises(SchedulerBusy):
            s.submit([tok.bos_id, 103], long)
        first.cancel()
        second.cancel()
    finally:
        s.stop()


def test_cancel_frees_the_slot_at_once(tok):
    s = BatchScheduler(ScriptedBatch(slots=1, delay_s=0.02, context=512), tok).start()
    try:
        request = s.submit([tok.bos_id, 101], SamplingParams(temperature=0, max_new_tokens=400))
        next(request.events(timeout=10))  # it is running
        assert s.stats().active == 1
        start = time.monotonic()
        request.cancel()
        while s.stats().active:
            assert time.monotonic() - start < 1.0, "the slot was not freed within a second"
            time.sleep(0.005)
        assert _text(s, [tok.bos_id, 102])[2] == "length"  # the slot serves the next request
    finally:
        s.stop()


def test_stop_cancels_in_flight_work_and_refuses_new(tok):
    s = BatchScheduler(ScriptedBatch(slots=1, delay_s=0.02, context=512), tok).start()
    running = s.submit([tok.bos_id, 101], SamplingParams(temperature=0, max_new_tokens=400))
    waiting = s.submit([tok.bos_id, 102], SamplingParams(temperature=0, max_new_tokens=400))
    next(running.events(timeout=10))
    start = time.monotonic()
    s.stop(drain=False, timeout=5)
    assert time.monotonic() - start < 2
    assert [e for e in running.events(timeout=5)][-1].error is not None
    assert [e for e in waiting.events(timeout=5)][-1].error is not None
    with pytest.raises(SchedulerClosed):
        s.submit([tok.bos_id, 103], GREEDY)
    assert not s.stats().running


def test_chunked_prefill_interleaves_with_decoding(tok):
    backend = ScriptedBatch(slots=2, prefill_chunk=4, context=64, delay_s=0.01)
    s = BatchScheduler(backend, tok)
    short = s.submit([tok.bos_id, 101], SamplingParams(temperature=0, max_new_tokens=60))
    s.start()
    next(short.events(timeout=10))
    long_prompt = [tok.bos_id, *range(110, 120)]  # 11 tokens: chunks of 4, 4, 3
    solo = BatchScheduler(ScriptedBatch(slots=1), tok).start()
    expected = _text(solo, long_prompt)
    solo.stop()
    assert _text(s, long_prompt) == expected
    s.stop()
    prefills = [c for c in backend.calls if c[0] == "prefill" and c[1] == 1]
    assert [c[2] for c in prefills] == [4, 4, 3]
    first = backend.calls.index(prefills[0])
    last = backend.calls.index(prefills[-1])
    assert any(c[0] == "decode" for c in backend.calls[first:last]), "decoding stalled"


def test_bad_prompts_are_refused(tok):
    s = BatchScheduler(ScriptedBatch(slots=1, context=8), tok)
    with pytest.raises(InputError, match="empty"):
        s.submit([], GREEDY)
    with pytest.raises(InputError, match="context"):
        s.submit([tok.bos_id] * 9, GREEDY)
    with pytest.raises(InputError, match="vocabulary"):
        s.submit([tok.bos_id, 10_000], GREEDY)


def test_a_failing_sink_cancels_its_request(tok):
    s = BatchScheduler(ScriptedBatch(slots=1, delay_s=0.01, context=512), tok).start()

    def sink(event):
        raise RuntimeError("the client went away")

    try:
        s.submit([tok.bos_id, 101], SamplingParams(temperature=0, max_new_tokens=400), sink=sink)
        deadline = time.monotonic() + 2
        while s.stats().finished < 1:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert s.stats().active == 0
    finally:
        s.stop()


def test_logprobs_come_from_the_sampled_distribution(tok):
    logits = np.linspace(-3, 3, 512).astype(np.float32)
    state = SequenceState(
        tok, SamplingParams(temperature=0), [tok.bos_id], max_new_tokens=5, logprobs=3
    )
    token, chunk = state.step(logits)
    expected = logits.astype(np.float64) - np.log(np.exp(logits.astype(np.float64)).sum())
    assert token == 511 and chunk.logprob is not None
    assert chunk.logprob.logprob == pytest.approx(expected[511])
    assert [i for i, _ in chunk.logprob.top] == [511, 510, 509]
    plain = SequenceState(tok, SamplingParams(temperature=0), [tok.bos_id], max_new_tokens=5)
    assert plain.step(logits)[1].logprob is None


# ---- a real model: 4-slot native and torch backends against single-sequence generation ---------
def _engine_tokens(model_dir, backend, prompts, params):
    from pocketlm.engine.load import load_engine

    engine = load_engine(model_dir, backend=backend, threads=1)
    return [engine.complete(p, params, add_bos=False).token_ids for p in prompts]


@pytest.mark.parametrize("backend", ["native", "torch"])
def test_eight_concurrent_requests_equal_one_alone(tiny_model_dir, backend):
    from pocketlm.engine.load import open_backend
    from pocketlm.engine.native_backend import native_isa

    if backend == "native" and native_isa() is None:
        pytest.skip("the native extension is not built")
    batch, tokenizer = open_backend(tiny_model_dir, slots=4, backend=backend, threads=1)
    prompts = [
        tokenizer.encode(text, add_bos=True)
        for text in (
            "The cat",
            "A dog ran",
            "Once",
            "The big red",
            "Sun and",
            "Why",
            "Go",
            "Mom said",
        )
    ]
    params = SamplingParams(temperature=0, max_new_tokens=20)
    s = BatchScheduler(batch, tokenizer).start()
    try:
        alone = [_text(s, p, params)[1] for p in prompts]
        crowd = [r[1] for r in _crowd(s, prompts, params)]
    finally:
        s.stop()
    assert crowd == alone
    assert alone == _engine_tokens(tiny_model_dir, backend, prompts, params)


@pytest.mark.parametrize(
    ("failure", "told"),
    [
        (RuntimeError("secret /home/user/path in a traceback"), "internal error"),
        (InputError("the model produced invalid logits; try --precision fp32"), "try --precision"),
    ],
)
def test_a_failed_generation_says_what_a_user_can_act_on_and_nothing_internal(tok, failure, told):
    class Failing(ScriptedBatch):
        def decode(self, slots, token_ids):
            raise failure

    scheduler = BatchScheduler(Failing(), tok).start()
    try:
        events = list(scheduler.generate([tok.bos_id, 100], GREEDY, timeout=30))
    finally:
        scheduler.stop()
    error = events[-1].error
    assert error is not None and told in error and "secret" not in error
