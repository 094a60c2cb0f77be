"""On-policy distillation (GKD, Agarwal et al. 2024; MiniLLM, Gu et al. 2024): a share of the
batches are the student's own samples, continued from data prompts and scored by the teacher,
so the student learns on the sequences it actually produces, not only on the data's.

Which batches: batch n (counting every micro-batch of the run from 0) is sampled when
floor((n + 1) * fraction) > floor(n * fraction): exactly `fraction` of them, evenly spread, and
a pure function of n, so resuming picks the same ones. A sampled batch is a SampleRequest
(prompts, a seed, the row length, stop ids) that the task's loss turns into rows with
`sample_rows` at the moment it runs, from the weights being trained.

Sampling is a simple batched loop on the torch model itself with its KV cache
(model/kv_cache.py), on the training device, at temperature 1 (the student's distribution):
PocketLM's generation engine decodes one sequence per slot through a backend that owns its
model and samples in numpy; here every row of a batch advances together, from the live
weights, with nothing copied. Rows of equal prompt length sample together (the tokens path:
all of them); a row ends at its first stop id (chat) or at the row length.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pocketlm.model.kv_cache import KVCache


@dataclass(frozen=True)
class SampleRequest:
    """An on-policy batch before sampling: each row is a prompt (ids) continued by the student
    up to `length` ids in all, ending early at a stop id; `seed` makes the samples repeatable."""

    prompts: list[list[int]]
    seed: int
    length: int
    stop_ids: tuple[int, ...] = ()
    pad_id: int = 0


def is_on_policy(n: int, fraction: float) -> bool:
    """Whether batch n (from 0) is a sampled one: `fraction` of all batches, evenly spread."""
    return int((n + 1) * fraction) > int(n * fraction)


class OnPolicyBatches:
    """The data's batches with a share replaced by SampleRequests; resumable (its state is the
    data's plus the batch counter). `request(n)` makes the n-th batch's request (it may read
    the data's next batch for prompts)."""

    def __init__(self, inner: Any, fraction: float, request: Callable[[int], SampleRequest]):
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"the on-policy share must be in [0, 1], got {fraction}")
        self.inner, self.fraction, self.request = inner, fraction, request
        self.served = 0

    def __iter__(self) -> OnPolicyBatches:
        return self

    def __next__(self) -> Any:
        n, self.served = self.served, self.served + 1
        return self.request(n) if is_on_policy(n, self.fraction) else next(self.inner)

    def state_dict(self) -> dict[str, Any]:
        """The data's position and the batches served."""
        return {"inner": self.inner.state_dict(), "served": self.served}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore both positions."""
        self.inner.load_state_dict(state["inner"])
        self.served = int(state["served"])


@torch.compiler.disable
@torch.no_grad()
def sample_rows(
    model: nn.Module, request: SampleRequest, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """The student's continuations of the request's prompts: (ids (B, L), sampled (B, L) bool),
    L the longest row, rows padded with pad_id; sampled[b, t] is true where the model sampled
    ids[b, t + 1] from its distribution at position t (those positions are the ones scored)."""
    was_training = model.training
    model.eval()  # no dropout while sampling
    try:
        rows = [_sample_group(model, request, group, device) for group in _groups(request.prompts)]
    finally:
        model.train(was_training)
    by_index = {i: row for group in rows for i, row in group}
    width = max(len(prompt) + len(new) for prompt, new in by_index.values())
    ids = torch.full((len(request.prompts), width), request.pad_id, dtype=torch.long)
    sampled = torch.zeros((len(request.prompts), width), dtype=torch.bool)
    for i, (prompt, new) in sorted(by_index.items()):
        ids[i, : len(prompt) + len(new)] = torch.tensor(prompt + new)
        sampled[i, len(prompt) - 1 : len(prompt) - 1 + len(new)] = True
    return ids.to(device), sampled.to(device)


def _groups(prompts: Sequence[list[int]]) -> list[list[int]]:
    """Row indices grouped by prompt length (rows of a group prefill together)."""
    by_length: dict[int, list[int]] = {}
    for i, prompt in enumerate(prompts):
        by_length.setdefault(len(prompt), []).append(i)
    return [by_length[n] for n in sorted(by_length)]


def _sample_group(
    model: nn.Module, request: SampleRequest, group: list[int], device: torch.device
) -> list[tuple[int, tuple[list[int], list[int]]]]:
    """[(row index, (prompt, sampled ids))] for rows of one prompt length."""
    prompts = [request.prompts[i] for i in group]
    n_prompt = len(prompts[0])
    budget = request.length - n_prompt
    if n_prompt < 1 or budget < 1:
        raise ValueError(f"a prompt of {n_prompt} ids leaves no room in rows of {request.length}")
    dtype = (
        torch.get_autocast_dtype(device.type)
        if torch.is_autocast_enabled(device.type)
        else next(model.parameters()).dtype
    )
    rows = len(group)
    cache = KVCache.allocate(model.config, rows, request.length, device=device, dtype=dtype)
    generator = torch.Generator(device=device).manual_seed(request.seed + 7919 * n_prompt)
    stops = torch.tensor(request.stop_ids, dtype=torch.long, device=device)
    x = torch.tensor(prompts, dtype=torch.long, device=device)  # (G, P)
    last = torch.full((rows,), n_prompt - 1, dtype=torch.long, device=device)
    logits = model(x, cache, output_positions=last)  # (G, V)
    new: list[torch.Tensor] = []
    alive = torch.ones(rows, dtype=torch.bool, device=device)
    for _ in range(budget):
        probs = torch.softmax(logits.float(), dim=-1)  # (G, V)
        token = torch.multinomial(probs, 1, generator=generator)  # (G, 1)
        new.append(token[:, 0])
        alive &= ~torch.isin(token[:, 0], stops)
        if len(new) == budget or not bool(alive.any()):
            break
        logits = model(token, cache, output_positions=torch.zeros_like(last))  # (G, V)
    samples = torch.stack(new, dim=1).tolist()  # (G, n)
    out = []
    for i, row in zip(group, samples, strict=True):
        end = next((k + 1 for k, t in enumerate(row) if t in request.stop_ids), len(row))
        out.append((i, (request.prompts[i], row[:end])))
    return out
