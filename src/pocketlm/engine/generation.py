"""THE generation engine: prompt -> streamed text chunks, over slot 0 of any Backend.

The per-sequence logic (sampling, stop tokens, stop strings, incremental detokenisation) lives
in `SequenceState`, which knows nothing about how logits are computed: the engine drives one
with slot 0 of a backend, the batching scheduler (`scheduler.py`) drives one per slot. Logits
are numpy arrays: nothing here imports torch, so a native backend starts without it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from pocketlm.common.errors import InputError, PocketLMError
from pocketlm.engine.backend import Backend
from pocketlm.engine.sampling import SamplingParams, make_generator, process_logits, sample_next
from pocketlm.tokenizer.stream_decoder import StreamDecoder
from pocketlm.tokenizer.tokenizer import Tokenizer

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class Timings:
    """Where the time went: prompt processing and token-by-token decoding (engine time only)."""

    prompt_tokens: int
    generated_tokens: int
    prefill_s: float  # prompt forward + first token sampled
    decode_s: float  # every later token: forward + sampling

    @property
    def decode_tokens_per_s(self) -> float:
        """Tokens generated per second after the first one (0 when only one was generated)."""
        steps = self.generated_tokens - 1
        return steps / self.decode_s if steps > 0 and self.decode_s > 0 else 0.0


@dataclass(frozen=True)
class TokenLogprob:
    """A sampled token's log-probability and its top alternatives, under the processed logits."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()  # (token id, logprob), most likely first


@dataclass(frozen=True)
class GenerationChunk:
    """One generated token's worth of output: new complete text and the token id(s) behind it.

    `text` may be '' while a multi-byte character is incomplete or text that may begin a stop
    string is held back. The last chunk has `finish_reason` and `timings`. Token ids include the
    terminating eos / end-of-turn token and the tokens of a stop string; the text never does.
    """

    text: str
    token_ids: tuple[int, ...]
    finish_reason: FinishReason | None = None
    timings: Timings | None = None
    logprob: TokenLogprob | None = None  # only when the SequenceState was asked for logprobs


@dataclass(frozen=True)
class GenerationResult:
    """A whole generation: its text, token ids, why it ended and how long it took."""

    text: str
    token_ids: list[int]
    finish_reason: FinishReason
    prompt_tokens: int
    timings: Timings


def held_back_length(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of text that is a proper prefix of some stop string."""
    longest = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:n]):
                longest = n
                break
    return longest


def token_logprob(
    logits: np.ndarray,
    params: SamplingParams,
    token: int,
    top: int,
    previous_ids: Sequence[int] = (),
) -> TokenLogprob:
    """Log-softmax of the processed logits at `token`, plus the `top` most likely finite tokens."""
    scores = process_logits(logits, params, previous_ids).astype(np.float64)  # (V,)
    peak = scores.max()
    logsm = scores - (peak + np.log(np.exp(scores - peak).sum()))  # (V,) log-probabilities
    return TokenLogprob(int(token), float(logsm[token]), _top_entries(logsm, top))


def _top_entries(logsm: np.ndarray, top: int) -> tuple[tuple[int, float], ...]:
    """The `top` most likely finite (id, log-prob) of one row (V,): most likely first, ties by
    the lower id."""
    if top <= 0:
        return ()
    k = min(top, logsm.shape[0])
    idx = np.argpartition(-logsm, k - 1)[:k]  # (k,) unordered
    idx = idx[np.lexsort((idx, -logsm[idx]))]
    return tuple((int(i), float(logsm[i])) for i in idx if np.isfinite(logsm[i]))


def prompt_logprobs(logits: np.ndarray, token_ids: Sequence[int], top: int) -> list[TokenLogprob]:
    """TokenLogprob of token_ids[i] under the model's own log-softmax of logits row i (n, V) (no
    sampling settings: what a prompt token's probability is), with the `top` most likely."""
    rows = np.asarray(logits, dtype=np.float64)  # (n, V)
    peak = rows.max(axis=-1, keepdims=True)  # (n, 1)
    logsm = rows - (peak + np.log(np.exp(rows - peak).sum(axis=-1, keepdims=True)))  # (n, V)
    return [
        TokenLogprob(int(token), float(row[token]), _top_entries(row, top))
        for row, token in zip(logsm, token_ids, strict=True)
    ]


def _check_logits(logits: np.ndarray) -> None:
    """Raise PocketLMError for NaN or +inf logits, or when every token is -inf."""
    if np.isfinite(logits).all():
        return
    nan, pos_inf = int(np.isnan(logits).sum()), int(np.isposinf(logits).sum())
    if nan or pos_inf or not (logits > -np.inf).any():
        raise PocketLMError(
            f"the model produced invalid logits ({nan} NaN, {pos_inf} +inf of {logits.size}, "
            f"finite: {int(np.isfinite(logits).sum())}); try --precision fp32"
        )


class SequenceState:
    """One sequence's sampling and stopping: feed it logits, get chunks, until it finishes.

    logprobs: None (off, no extra work), or how many top alternatives each chunk's
    `logprob` lists besides the sampled token (0 = the sampled token only).
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        params: SamplingParams,
        prompt_ids: Sequence[int],
        *,
        max_new_tokens: int,
        logprobs: int | None = None,
    ) -> None:
        self.params = params
        self.logprobs = logprobs
        # eos, the end of a chat turn and every id the model's generation_config.json lists
        self.stop_ids = tokenizer.stop_ids
        self.max_new_tokens = max_new_tokens  # the params' limit, capped by the room in context
        self.generator = make_generator(params.seed)
        self.decoder = StreamDecoder(tokenizer, skip_special=True)
        self.seen: list[int] = list(prompt_ids) if params.repetition_penalty != 1.0 else []
        self.generated: list[int] = []
        self.pending = ""  # decoded text not yet emitted (it may begin a stop string)
        self.finish_reason: FinishReason | None = None

    def step(self, logits: np.ndarray) -> tuple[int, GenerationChunk]:
        """Sample the next token from float32 logits (V,) and return it with the chunk it produces."""
        if self.finish_reason is not None:
            raise PocketLMError("this sequence has already finished")
        logits = np.asarray(logits, dtype=np.float32)
        _check_logits(logits)
        previous = self.seen if self.params.repetition_penalty != 1.0 else ()
        try:
            token = int(sample_next(logits, self.params, self.generator, previous))
        except ValueError as exc:  # e.g. a tiny temperature overflowing float32
            raise PocketLMError(
                f"the logits give no valid distribution to sample from ({exc}); "
                "try a higher --temperature or --precision fp32"
            ) from exc
        if self.logprobs is not None:
            lp = token_logprob(logits, self.params, token, self.logprobs, previous)
        chunk = self.push(token)
        if self.logprobs is not None:
            chunk = replace(chunk, logprob=lp)
        return token, chunk

    def push(self, token: int) -> GenerationChunk:
        """Take a token chosen elsewhere (e.g. by speculative decoding) and return its chunk."""
        if self.finish_reason is not None:
            raise PocketLMError("this sequence has already finished")
        self.generated.append(token)
        if self.params.repetition_penalty != 1.0:
            self.seen.append(token)
        return self._advance(token)

    def _advance(self, token: int) -> GenerationChunk:
        if token in self.stop_ids and not self.params.ignore_eos:
            return self._finish(token, "stop", self.decoder.flush())
        text = self.pending + self.decoder.push(token)
        cut = self._first_stop(text)
        if cut is not None:
            self.finish_reason = "stop"
            return GenerationChunk(text[:cut], (token,), "stop")
        if len(self.generated) >= self.max_new_tokens:
            return self._finish(token, "length", self.decoder.flush(), text)
        hold = held_back_length(text, self.params.stop)
        self.pending = text[len(text) - hold :]
        return GenerationChunk(text[: len(text) - hold], (token,))

    def _first_stop(self, text: str) -> int | None:
        hits = [i for i in (text.find(s) for s in self.params.stop) if i >= 0]
        return min(hits) if hits else None

    def _finish(
        self, token: int, reason: FinishReason, tail: str, text: str | None = None
    ) -> GenerationChunk:
        text = (self.pending if text is None else text) + tail
        cut = self._first_stop(text)
        self.finish_reason = "stop" if cut is not None else reason
        self.pending = ""
        return GenerationChunk(text if cut is None else text[:cut], (token,), self.finish_reason)


class GenerationEngine:
    """Prompt in, streamed text out: sampling and stopping over slot 0 of a Backend."""

    def __init__(
        self,
        backend: Backend,
        tokenizer: Tokenizer,
        *,
        draft: Backend | None = None,
        draft_tokens: int = 4,
    ) -> None:
        self.backend = backend
        self.tokenizer = tokenizer
        # Speculative decoding: a smaller model with the same tokenizer proposes `draft_tokens`
        # tokens that the model checks in one forward (`extend`, then `truncate` what it rejects).
        self.draft = draft
        self.draft_tokens = draft_tokens
        self.last_acceptance: float | None = None  # share of draft tokens kept, last generation
        if draft is not None and draft_tokens < 1:
            raise InputError(f"draft tokens per step must be >= 1, got {draft_tokens}")
        self._active = 0  # id of the generation that owns the backend's slot 0

    @property
    def name(self) -> str:
        """The backend's short name ("torch", "native")."""
        return self.backend.name

    def encode_prompt(self, prompt: str | Sequence[int], *, add_bos: bool = True) -> list[int]:
        """Token ids of a prompt: text is encoded (one bos prepended if add_bos and the model uses
        one), ids are used as given."""
        if isinstance(prompt, str):
            ids = self.tokenizer.encode(prompt)
            bos = self.tokenizer.bos_id
            # Only for models that start sequences with bos; a rendered chat already has it.
            if add_bos and self.tokenizer.add_bos and ids[:1] != [bos]:
                ids = [bos, *ids]
        else:
            ids = [int(i) for i in prompt]
            bad = [i for i in ids if not 0 <= i < self.backend.vocab_size]
            if bad:
                raise InputError(
                    f"prompt token id {bad[0]} is outside the vocabulary of {self.backend.vocab_size}"
                )
        if not ids:
            raise InputError("the prompt is empty: give some text (or keep add_bos)")
        context = self.backend.context_length
        if len(ids) > context:
            raise InputError(
                f"the prompt has {len(ids)} tokens but the model's context is {context} tokens",
                hint="shorten the prompt",
            )
        return ids

    def generate(
        self,
        prompt: str | Sequence[int],
        params: SamplingParams | None = None,
        *,
        add_bos: bool = True,
    ) -> Iterator[GenerationChunk]:
        """Stream chunks (one per generated token) until a stop token/string or the length limit.

        The prompt is checked immediately (InputError when empty or longer than the context); a
        new generate() on the same engine supersedes an unfinished earlier one.
        """
        params = params or SamplingParams()
        if self.draft is not None and params.repetition_penalty != 1.0:
            raise InputError(
                "speculative decoding does not support a repetition penalty",
                hint="drop the draft model or use repetition_penalty 1",
            )
        ids = self.encode_prompt(prompt, add_bos=add_bos)
        self._active += 1
        return self._stream(ids, params, self._active)

    def _stream(
        self, ids: list[int], params: SamplingParams, run: int
    ) -> Iterator[GenerationChunk]:
        context = self.backend.context_length
        if self.draft is not None:
            context = min(context, self.draft.context_length)
        room = context - len(ids) + 1  # the last token never needs a cache slot
        state = SequenceState(
            self.tokenizer, params, ids, max_new_tokens=min(params.max_new_tokens, room)
        )
        chunks = (
            self._speculative_chunks(ids, params, state)
            if self.draft is not None
            else self._plain_chunks(ids, state)
        )
        start = time.perf_counter()
        chunk = next(chunks)
        prefill_s = time.perf_counter() - start  # prompt forward(s) + the first token
        decode_s = 0.0
        while chunk.finish_reason is None:
            yield chunk
            if self._active != run:
                raise PocketLMError(
                    "this generation was superseded by a newer generate() on the same engine"
                )
            start = time.perf_counter()
            chunk = next(chunks)
            decode_s += time.perf_counter() - start
        timings = Timings(len(ids), len(state.generated), prefill_s, decode_s)
        yield replace(chunk, timings=timings)

    def _plain_chunks(self, ids: list[int], state: SequenceState) -> Iterator[GenerationChunk]:
        """One prefill, then one decode per token, sampling the model's own logits (slot 0)."""
        backend = self.backend
        backend.release(0)
        token, chunk = state.step(backend.prefill(0, ids))
        while True:
            yield chunk
            token, chunk = state.step(backend.decode((0,), (token,))[0])

    def _speculative_chunks(
        self, ids: list[int], params: SamplingParams, state: SequenceState
    ) -> Iterator[GenerationChunk]:
        """Tokens chosen by draft-and-verify rounds (SpeculativeDecoder), fed to the state."""
        from pocketlm.engine.speculative import SpeculativeDecoder

        spec = SpeculativeDecoder(
            self.backend, self.draft, params, k=self.draft_tokens, rng=state.generator
        )
        for token in spec.tokens(ids):
            self.last_acceptance = spec.acceptance_rate
            yield state.push(token)

    def complete(
        self,
        prompt: str | Sequence[int],
        params: SamplingParams | None = None,
        *,
        add_bos: bool = True,
    ) -> GenerationResult:
        """Generate to the end and return the whole text, token ids, finish reason and timings."""
        texts: list[str] = []
        token_ids: list[int] = []
        last: GenerationChunk | None = None
        for chunk in self.generate(prompt, params, add_bos=add_bos):
            texts.append(chunk.text)
            token_ids.extend(chunk.token_ids)
            last = chunk
        assert last is not None and last.finish_reason is not None and last.timings is not None
        return GenerationResult(
            "".join(texts),
            token_ids,
            last.finish_reason,
            last.timings.prompt_tokens,
            last.timings,
        )
