"""Sampling: pure functions from logits (..., vocab) to the next token, and SamplingParams.

Order of operations (as in `transformers`): repetition penalty, then greedy argmax when
temperature is 0, else temperature, top-k, top-p, min-p, and one draw from the remaining
distribution with an explicit `torch.Generator`. Every function works on any leading batch shape.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from pocketlm.common.errors import ConfigError


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


def apply_repetition_penalty(
    logits: torch.Tensor, token_ids: torch.Tensor | Sequence[int], penalty: float
) -> torch.Tensor:
    """Penalise tokens in token_ids (..., N): positive logits divided by penalty, negative multiplied."""
    if penalty == 1.0:
        return logits
    ids = torch.as_tensor(token_ids, dtype=torch.long, device=logits.device)
    if ids.numel() == 0:
        return logits
    if ids.dim() == 1 and logits.dim() > 1:
        ids = ids.expand(*logits.shape[:-1], ids.shape[0])  # (..., N): the same ids for every row
    score = logits.gather(-1, ids)  # (..., N)
    score = torch.where(score < 0, score * penalty, score / penalty)
    return logits.scatter(-1, ids, score)


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Logits divided by temperature (> 0); lower is sharper."""
    if temperature <= 0:
        raise ConfigError(f"sampling.temperature must be > 0 to scale logits, got {temperature}")
    return logits if temperature == 1.0 else logits / temperature


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep exactly the k highest logits (ties broken by index), the rest -inf; k = 0 keeps all."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    values, indices = torch.topk(logits, k, dim=-1)  # (..., k)
    return torch.full_like(logits, -math.inf).scatter(-1, indices, values)


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus: keep the smallest set of most likely tokens whose probability mass is >= p."""
    if p >= 1.0:
        return logits
    probs = torch.softmax(logits.float(), dim=-1)
    sorted_probs, order = torch.sort(probs, dim=-1, descending=True, stable=True)  # (..., V)
    mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs  # mass of the better tokens
    keep_sorted = mass_before < p
    keep_sorted[..., 0] = True  # the most likely token always stays
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)  # back to vocab order
    return logits.masked_fill(~keep, -math.inf)


def min_p_filter(logits: torch.Tensor, min_p: float) -> torch.Tensor:
    """Keep tokens whose probability is >= min_p times the most likely token's; 0 keeps all."""
    if min_p <= 0.0:
        return logits
    probs = torch.softmax(logits.float(), dim=-1)
    threshold = min_p * probs.amax(dim=-1, keepdim=True)  # (..., 1)
    return logits.masked_fill(probs < threshold, -math.inf)


def process_logits(
    logits: torch.Tensor,
    params: SamplingParams,
    previous_ids: torch.Tensor | Sequence[int] = (),
) -> torch.Tensor:
    """Float32 logits after penalty, temperature and filters (greedy: after the penalty only)."""
    out = apply_repetition_penalty(logits.float(), previous_ids, params.repetition_penalty)
    if params.greedy:
        return out
    out = apply_temperature(out, params.temperature)
    out = top_k_filter(out, params.top_k)
    out = top_p_filter(out, params.top_p)
    return min_p_filter(out, params.min_p)


def sample_next(
    logits: torch.Tensor,
    params: SamplingParams,
    generator: torch.Generator | None = None,
    previous_ids: torch.Tensor | Sequence[int] = (),
) -> torch.Tensor:
    """Next token ids (...,) long from logits (..., V); the generator makes draws reproducible."""
    scores = process_logits(logits, params, previous_ids)
    if params.greedy:
        return scores.argmax(dim=-1)
    probs = torch.softmax(scores, dim=-1)
    flat = probs.reshape(-1, probs.shape[-1])  # (rows, V): multinomial wants 2-D
    drawn = torch.multinomial(flat, 1, generator=generator)  # (rows, 1)
    return drawn.reshape(probs.shape[:-1])


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator on `device` seeded with `seed`, or from OS entropy when seed is None."""
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator
