"""Log-likelihoods of continuations on THE engine backend protocol, as lm-evaluation-harness
defines them, so one code path scores every backend (torch, native, and any other that gives
logits per token).

A (context, continuation) pair is tokenized as lm-eval's `_encode_pair` does: trailing spaces
of the context move to the continuation, the continuation's tokens are the whole text's tokens
after the context's own; a model that starts sequences with <bos> gets it before the context (an
empty context without one gets <eos>, lm-eval's prefix token). A continuation's log-likelihood is
the sum of log-softmax(logits)[token] over its tokens, each predicted from everything before it;
`greedy` says every token was the argmax. Shared prefix: a context is prefilled once and each
continuation `extend`ed after it (all but its last token, which predicts nothing needed) and
`truncate`d back. A pair longer than the backend's context keeps its last tokens, as lm-eval
does. Logits are numpy float32; the sums are float64.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from pocketlm.common.errors import InputError
from pocketlm.tokenizer.tokenizer import Tokenizer


class LogitsBackend(Protocol):
    """What scoring needs of an engine backend (every engine.backend.Backend has it)."""

    @property
    def context_length(self) -> int: ...

    def prefill(self, slot: int, token_ids: Sequence[int]) -> np.ndarray: ...

    def extend(self, slot: int, token_ids: Sequence[int]) -> np.ndarray: ...

    def truncate(self, slot: int, position: int) -> None: ...

    def release(self, slot: int) -> None: ...


@dataclass(frozen=True)
class Scored:
    """A continuation's log-likelihood (nats), whether greedy decoding would produce it, and
    how many tokens it has."""

    loglikelihood: float
    greedy: bool
    tokens: int


def prefix_ids(tokenizer: Tokenizer) -> list[int]:
    """What goes before a context: <bos> when the model starts sequences with one, else nothing."""
    return [tokenizer.bos_id] if tokenizer.add_bos and tokenizer.bos_id is not None else []


def encode_pairs(
    tokenizer: Tokenizer, context: str, continuations: Sequence[str]
) -> tuple[list[int], list[list[int]]]:
    """(context ids, each continuation's ids), tokenized as lm-eval's _encode_pair does."""
    spaces = len(context) - len(context.rstrip())
    if spaces:  # lm-eval moves the context's trailing whitespace to the continuation
        continuations = [context[-spaces:] + c for c in continuations]
        context = context[:-spaces]
    context_ids = tokenizer.encode(context) if context else []
    wholes = tokenizer.encode_batch([context + c for c in continuations])
    conts = [whole[len(context_ids) :] for whole in wholes]
    for text, ids in zip(continuations, conts, strict=True):
        if not ids:
            raise InputError(
                f"the continuation {text!r} has no tokens of its own after the context"
            )
    head = prefix_ids(tokenizer)
    if not head and not context_ids:  # lm-eval's prefix token for an empty context
        if tokenizer.eos_id is None:
            raise InputError("an empty context needs a <bos> or <eos> token to start from")
        head = [tokenizer.eos_id]
    return head + context_ids, conts


def token_logprobs(logits: np.ndarray, token_ids: Sequence[int]) -> tuple[np.ndarray, bool]:
    """(n,) float64 log-probabilities of token_ids[i] under logits (n, V) row i, and whether
    every token is its row's argmax."""
    rows = np.asarray(logits, dtype=np.float64)  # (n, V)
    peak = rows.max(axis=-1, keepdims=True)  # (n, 1)
    log_norm = peak[:, 0] + np.log(np.exp(rows - peak).sum(axis=-1))  # (n,)
    ids = np.asarray(token_ids, dtype=np.int64)  # (n,)
    picked = rows[np.arange(len(ids)), ids] - log_norm  # (n,)
    greedy = bool((np.asarray(logits).argmax(axis=-1) == ids).all())
    return picked, greedy


def score_continuations(
    backend: LogitsBackend,
    context_ids: Sequence[int],
    continuations: Sequence[Sequence[int]],
    *,
    slot: int = 0,
) -> list[Scored]:
    """Log-likelihood of each continuation after the context, prefilling the context once."""
    room = backend.context_length
    out: list[Scored] = []
    loaded: list[int] | None = None  # the context now in the slot
    last: np.ndarray | None = None  # (V,) logits after it
    for i, cont in enumerate(continuations):
        ctx = _fit(list(context_ids), list(cont), room)
        if ctx != loaded:
            backend.release(slot)
            last = backend.prefill(slot, ctx)
            loaded = ctx
        assert last is not None
        rows = last[None, :]  # (1, V)
        if len(cont) > 1:
            rows = np.concatenate([rows, backend.extend(slot, cont[:-1])])  # (n, V)
            if i + 1 < len(continuations):  # the last one is released, not rewound
                loaded = _rewind(backend, slot, len(ctx), loaded)
        logprobs, greedy = token_logprobs(rows, cont)
        out.append(Scored(float(logprobs.sum()), greedy, len(cont)))
    backend.release(slot)
    return out


def _rewind(
    backend: LogitsBackend, slot: int, position: int, loaded: list[int]
) -> list[int] | None:
    """Truncate the slot back to its context; None (prefill again) when the backend cannot
    rewind that far (a sliding-window cache keeps only so many tokens past its window)."""
    try:
        backend.truncate(slot, position)
        return loaded
    except InputError:
        return None


Request = tuple[Sequence[int], Sequence[Sequence[int]]]  # (context ids, continuations' ids)


def score_many(backend: LogitsBackend, requests: Sequence[Request]) -> list[list[Scored]]:
    """Each request's continuations scored (as score_continuations). A backend with
    `extend_many` and several slots takes `slots` requests at once: each context prefilled in
    its slot, then the j-th continuation of every request extended in ONE call (short
    continuations share each read of the weights) and truncated back. A request that does not
    fit the context whole goes alone (its context is cut per continuation)."""
    out: list[list[Scored] | None] = [None] * len(requests)
    room = backend.context_length
    batched = []
    for i, (ctx, conts) in enumerate(requests):
        fits = len(ctx) + max(len(c) for c in conts) - 1 <= room
        if fits and hasattr(backend, "extend_many") and getattr(backend, "slots", 1) > 1:
            batched.append(i)
        else:
            out[i] = score_continuations(backend, ctx, conts)
    width = getattr(backend, "slots", 1)
    for first in range(0, len(batched), width):
        group = batched[first : first + width]
        for slot, scored in enumerate(_score_group(backend, [requests[i] for i in group])):
            out[group[slot]] = scored
    return [r for r in out if r is not None]


def _score_group(backend: Any, requests: Sequence[Request]) -> list[list[Scored]]:
    """Requests i in slot i: contexts prefilled, the j-th continuations extended together."""
    slots = list(range(len(requests)))
    for slot in slots:
        backend.release(slot)
    lasts = backend.extend_many(slots, [list(ctx) for ctx, _ in requests], every=False)  # (V,) each
    out: list[list[Scored]] = [[] for _ in requests]
    for j in range(max(len(conts) for _, conts in requests)):
        takers = [s for s, (_, conts) in enumerate(requests) if j < len(conts)]
        longer = [s for s in takers if len(requests[s][1][j]) > 1]
        rows: dict[int, np.ndarray] = {}
        if longer:  # every continuation but its last token, all slots in one call
            extended = backend.extend_many(longer, [requests[s][1][j][:-1] for s in longer])
            rows = dict(zip(longer, extended, strict=True))
        for s in takers:
            cont = list(requests[s][1][j])
            logits = lasts[s][None, :]  # (1, V)
            if s in rows:
                logits = np.concatenate([logits, rows[s]])  # (n, V)
                if j + 1 < len(requests[s][1]):  # the last one is released, not rewound
                    _back_to_context(backend, s, requests[s][0])
            logprobs, greedy = token_logprobs(logits, cont)
            out[s].append(Scored(float(logprobs.sum()), greedy, len(cont)))
    for slot in range(len(requests)):
        backend.release(slot)
    return out


def _back_to_context(backend: Any, slot: int, context: Sequence[int]) -> None:
    """Truncate the slot back to its context, or prefill the context again where the backend
    cannot rewind that far (a sliding-window cache)."""
    if _rewind(backend, slot, len(context), list(context)) is None:
        backend.release(slot)
        backend.extend_many([slot], [list(context)], every=False)


def _fit(context: list[int], cont: list[int], room: int) -> list[int]:
    """The context, cut from the left so that context + cont[:-1] fits in `room` tokens."""
    if len(cont) > room:
        raise InputError(
            f"a continuation of {len(cont)} tokens does not fit the model's context of {room}"
        )
    keep = room + 1 - len(cont)
    return context[-keep:] if len(context) > keep else context


def rolling_windows(
    token_ids: Sequence[int], prefix: int, window: int
) -> Iterator[tuple[list[int], list[int]]]:
    """(context, predicted) pairs covering every token once, as lm-eval's
    get_rolling_token_windows(context_len=1) + make_disjoint_window: the first predicts up to
    `window` tokens after `prefix`, each later one the next ones after a full window of context."""
    ids = list(token_ids)
    if not ids:
        return
    first = min(window, len(ids))
    yield [prefix], ids[:first]  # disjoint: the prefix is the first window's whole context
    done = first
    while done < len(ids):
        n = min(len(ids) - done, window)
        end = done + n
        inputs = ids[end - window - 1 : end - 1]  # (window,) tokens before each predicted one
        yield inputs[: len(inputs) - (n - 1)], ids[end - n : end]
        done = end


def rolling_loglikelihood(
    backend: LogitsBackend, token_ids: Sequence[int], prefix: int, *, slot: int = 0
) -> float:
    """Sum of the log-probabilities (nats) of every token, windows of the backend's context."""
    total = 0.0
    for ctx, pred in rolling_windows(token_ids, prefix, backend.context_length):
        total += score_continuations(backend, ctx, [pred], slot=slot)[0].loglikelihood
    return total
