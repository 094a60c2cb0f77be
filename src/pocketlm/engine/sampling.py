"""Sampling: pure functions from logits (..., vocab) to the next token, and SamplingParams.

Order of operations (as in `transformers`): repetition penalty, then greedy argmax when
temperature is 0, else temperature, top-k, top-p, min-p, and one draw from the remaining
distribution with an explicit `numpy.random.Generator`. Every function takes numpy float32
logits of any leading batch shape and never modifies its input; nothing here imports torch.
The filters below (`top_k_filter`, `top_p_filter`, `min_p_filter`) define the semantics over the
whole vocabulary; `process_logits` and `sample_next` get the same kept tokens from
`kept_tokens.py` without sorting or normalising a 150k vocabulary (tested against them).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pocketlm.common.errors import ConfigError
from pocketlm.engine.kept_tokens import draw_from, kept_ids, softmax64

_NEG_INF = np.float32(-np.inf)


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens and when to stop; validated on construction (ConfigError names the field)."""

    max_new_tokens: int = 256
    temperature: float = 0.8  # 0 = greedy (argmax)
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    min_p: float = 0.0  # 0 = off
    repetition_penalty: float = 1.0  # 1 = off
    seed: int | None = None  # None = a fresh random seed per generation
    stop: tuple[str, ...] = ()  # stop strings: the text ends right before the first one
    ignore_eos: bool = False  # generate past eos / end-of-turn tokens (benchmarks at equal length)

    def __post_init__(self) -> None:
        _check_int("max_new_tokens", self.max_new_tokens, minimum=1)
        _check_int("top_k", self.top_k, minimum=0)
        _check_float("temperature", self.temperature, self.temperature >= 0, ">= 0 (0 = greedy)")
        _check_float("top_p", self.top_p, 0 < self.top_p <= 1, "in (0, 1]")
        _check_float("min_p", self.min_p, 0 <= self.min_p < 1, "in [0, 1)")
        _check_float(
            "repetition_penalty", self.repetition_penalty, self.repetition_penalty > 0, "> 0"
        )
        if self.seed is not None:
            _check_int("seed", self.seed, minimum=0)
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        for s in stop:
            if not isinstance(s, str) or not s:
                raise ConfigError(f"sampling.stop: stop strings must be non-empty text, got {s!r}")
        object.__setattr__(self, "stop", stop)

    @property
    def greedy(self) -> bool:
        """True when tokens are picked by argmax (temperature 0)."""
        return self.temperature == 0


def _check_int(name: str, value: object, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"sampling.{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ConfigError(f"sampling.{name} must be >= {minimum}, got {value}")


def _check_float(name: str, value: object, in_range: bool, expected: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"sampling.{name} must be a number, got {value!r}")
    if not math.isfinite(value) or not in_range:
        raise ConfigError(f"sampling.{name} must be a finite number {expected}, got {value}")


def _probs32(logits: np.ndarray) -> np.ndarray:
    """Float32 probabilities (..., V), correctly rounded from a float64 softmax."""
    return softmax64(logits).astype(np.float32)


def apply_repetition_penalty(
    logits: np.ndarray, token_ids: np.ndarray | Sequence[int], penalty: float
) -> np.ndarray:
    """Penalise tokens in token_ids (..., N): positive logits divided by penalty, negative multiplied."""
    if penalty == 1.0:
        return logits
    ids = np.asarray(token_ids, dtype=np.int64)
    if ids.size == 0:
        return logits
    if ids.ndim == 1 and logits.ndim > 1:
        ids = np.broadcast_to(ids, (*logits.shape[:-1], ids.shape[0]))  # (..., N): same ids per row
    score = np.take_along_axis(logits, ids, axis=-1)  # (..., N)
    factor = logits.dtype.type(penalty)
    score = np.where(score < 0, score * factor, score / factor)
    out = logits.copy()
    np.put_along_axis(out, ids, score, axis=-1)  # duplicate ids write the same value
    return out


def apply_temperature(logits: np.ndarray, temperature: float) -> np.ndarray:
    """Logits divided by temperature (> 0); lower is sharper."""
    if temperature <= 0:
        raise ConfigError(f"sampling.temperature must be > 0 to scale logits, got {temperature}")
    return logits if temperature == 1.0 else logits / logits.dtype.type(temperature)


def top_k_filter(logits: np.ndarray, k: int) -> np.ndarray:
    """Keep exactly the k highest logits (ties broken by lower index), the rest -inf; k = 0 keeps all."""
    vocab = logits.shape[-1]
    if k <= 0 or k >= vocab:
        return logits
    kth = np.partition(logits, vocab - k, axis=-1)[..., vocab - k : vocab - k + 1]  # (..., 1)
    above = logits > kth  # (..., V): fewer than k of these
    ties = logits == kth  # (..., V)
    room = k - above.sum(axis=-1, keepdims=True)  # (..., 1): ties that still fit, >= 1
    keep = above | (ties & (np.cumsum(ties, axis=-1) <= room))  # the lowest-index ties win
    return np.where(keep, logits, _NEG_INF)


def top_p_filter(logits: np.ndarray, p: float) -> np.ndarray:
    """Nucleus: keep the smallest set of most likely tokens whose probability mass is >= p."""
    if p >= 1.0:
        return logits
    probs = _probs32(logits)  # (..., V)
    order = np.argsort(-probs, axis=-1, kind="stable")  # (..., V): descending, ties by index
    sorted_probs = np.take_along_axis(probs, order, axis=-1)  # (..., V)
    cumulative = np.cumsum(sorted_probs, axis=-1, dtype=np.float64).astype(np.float32)
    mass_before = cumulative - sorted_probs  # mass of the better tokens
    keep_sorted = mass_before < np.float32(p)
    keep_sorted[..., 0] = True  # the most likely token always stays
    keep = np.empty_like(keep_sorted)
    np.put_along_axis(keep, order, keep_sorted, axis=-1)  # back to vocab order
    return np.where(keep, logits, _NEG_INF)


def min_p_filter(logits: np.ndarray, min_p: float) -> np.ndarray:
    """Keep tokens whose probability is >= min_p times the most likely token's; 0 keeps all."""
    if min_p <= 0.0:
        return logits
    probs = _probs32(logits)  # (..., V)
    threshold = np.float32(min_p) * probs.max(axis=-1, keepdims=True)  # (..., 1)
    return np.where(probs < threshold, _NEG_INF, logits)


def process_logits(
    logits: np.ndarray,
    params: SamplingParams,
    previous_ids: np.ndarray | Sequence[int] = (),
) -> np.ndarray:
    """Float32 logits after penalty, temperature and filters (greedy: after the penalty only)."""
    out = _tempered(logits, params, previous_ids)
    if params.greedy:
        return out
    rows = out.reshape(-1, out.shape[-1])  # (rows, V)
    filtered = np.full_like(rows, _NEG_INF)
    for row, dst in zip(rows, filtered, strict=True):
        ids = kept_ids(row, params.top_k, params.top_p, params.min_p)
        if ids is None:
            dst[:] = row
        else:
            dst[ids] = row[ids]
    return filtered.reshape(out.shape)


def _tempered(
    logits: np.ndarray, params: SamplingParams, previous_ids: np.ndarray | Sequence[int]
) -> np.ndarray:
    """Float32 logits after the repetition penalty and (unless greedy) the temperature."""
    out = np.asarray(logits, dtype=np.float32)
    out = apply_repetition_penalty(out, previous_ids, params.repetition_penalty)
    return out if params.greedy else apply_temperature(out, params.temperature)


def sample_next(
    logits: np.ndarray,
    params: SamplingParams,
    generator: np.random.Generator | None = None,
    previous_ids: np.ndarray | Sequence[int] = (),
) -> np.ndarray:
    """Next token ids (...,) int64 from logits (..., V); the generator makes draws reproducible.

    Raises ValueError when the processed logits give no valid distribution (NaN or +inf).
    """
    scores = _tempered(logits, params, previous_ids)
    if params.greedy:
        return np.asarray(scores.argmax(axis=-1), dtype=np.int64)  # the first max wins
    rows = scores.reshape(-1, scores.shape[-1])  # (rows, V)
    rng = generator if generator is not None else np.random.default_rng()
    u = rng.random(rows.shape[0])  # (rows,) in [0, 1): one call, whatever the filters
    drawn = np.empty(rows.shape[0], dtype=np.int64)
    for i, row in enumerate(rows):
        ids = kept_ids(row, params.top_k, params.top_p, params.min_p)
        drawn[i] = draw_from(row, ids, float(u[i]))
    return drawn.reshape(scores.shape[:-1])


def make_generator(seed: int | None) -> np.random.Generator:
    """A numpy generator seeded with `seed`, or from OS entropy when seed is None."""
    return np.random.default_rng(seed)
