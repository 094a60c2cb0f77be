"""Does a fine-tuned chat model stop? The end-of-turn rate of its greedy replies.

A chat model that never writes its end-of-turn token rambles until the reply budget runs out, and
the held-out loss does not show it (one token in a hundred). After chat fine-tuning the run
measures it directly: for up to N held-out conversations, the prompt is the conversation up to
its first assistant reply (exactly the ids the model trained on, so the chat template's
generation prompt), the model replies greedily with a KV cache, and the reply counts as ended
when it writes one of the tokenizer's stop ids within the budget: the longest held-out reference
reply plus a margin, capped by the context.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from pocketlm.data.sft_tokens import SFTTokens
from pocketlm.model.kv_cache import KVCache

REPLY_MARGIN = 16  # tokens past the longest reference reply before a reply counts as unended


@dataclass(frozen=True)
class ReplyPrompts:
    """Held-out prompts (ids up to the first assistant reply) and the reference replies' lengths
    (tokens up to and including the stop token that closes them)."""

    prompts: list[list[int]]
    reference_lengths: list[int]

    def budget(self, context: int, margin: int = REPLY_MARGIN) -> int:
        """Reply tokens allowed: the longest reference reply + margin (the cap by the context is
        per prompt, in end_of_turn_rate)."""
        return min(max(self.reference_lengths, default=0) + margin, context)


def reply_prompts(examples: Sequence[SFTTokens], limit: int) -> ReplyPrompts:
    """The first `limit` examples with an assistant reply, cut where that reply starts."""
    prompts: list[list[int]] = []
    lengths: list[int] = []
    for ex in examples:
        if len(prompts) >= limit:
            break
        start = next((k for k, m in enumerate(ex.loss_mask) if m), None)
        if not start:  # no target, or a reply at position 0 (nothing to prompt with)
            continue
        end = start
        while end < len(ex.loss_mask) and ex.loss_mask[end]:
            end += 1
        prompts.append(list(ex.ids[:start]))
        lengths.append(end - start)
    return ReplyPrompts(prompts, lengths)


@torch.no_grad()
def greedy_reply(
    model: nn.Module,
    prompt: Sequence[int],
    stop_ids: Collection[int],
    max_new: int,
    *,
    device: torch.device,
    dtype: torch.dtype,
    autocast: contextlib.AbstractContextManager | None = None,
) -> list[int]:
    """The model's greedy reply to `prompt` (KV cache, batch 1): up to max_new tokens, ending
    with the first stop id it writes."""
    config = model.config
    cache = KVCache.allocate(config, 1, len(prompt) + max_new, device=device, dtype=dtype)
    ids = torch.tensor([list(prompt)], dtype=torch.long, device=device)  # (1, T)
    reply: list[int] = []
    while len(reply) < max_new:
        last = torch.tensor([ids.shape[1] - 1], dtype=torch.long, device=device)
        with autocast or contextlib.nullcontext():
            logits = model(ids, cache, output_positions=last)  # (1, vocab)
        token = int(logits[0].float().argmax())
        reply.append(token)
        if token in stop_ids:
            break
        ids = torch.tensor([[token]], dtype=torch.long, device=device)  # (1, 1)
    return reply


@dataclass(frozen=True)
class EndOfTurnResult:
    """How many greedy replies ended with a stop id within the budget."""

    prompts: int
    ended: int
    budget: int

    @property
    def rate(self) -> float:
        """Share of prompts whose reply ended (0.0 with no prompts)."""
        return self.ended / self.prompts if self.prompts else 0.0

    def metrics(self) -> dict[str, float]:
        """The result as run metrics (the manifest summary, the command's output)."""
        return {
            "end_of_turn_rate": round(self.rate, 4),
            "end_of_turn_prompts": float(self.prompts),
            "end_of_turn_budget": float(self.budget),
        }


def end_of_turn_rate(
    model: nn.Module,
    prompts: ReplyPrompts,
    stop_ids: Collection[int],
    *,
    device: torch.device,
    autocast: contextlib.AbstractContextManager | None = None,
    margin: int = REPLY_MARGIN,
) -> EndOfTurnResult:
    """Greedy-reply to every prompt and count the replies that end with a stop id within the
    budget (the longest reference reply + margin, capped by what the context leaves)."""
    context = model.config.max_seq_len
    budget = prompts.budget(context, margin)
    dtype = autocast_dtype(autocast) or next(model.parameters()).dtype
    was_training = model.training
    model.eval()
    ended = 0
    tried = 0
    for prompt in prompts.prompts:
        room = min(budget, context - len(prompt))
        if room <= 0:
            continue
        tried += 1
        reply = greedy_reply(
            model, prompt, stop_ids, room, device=device, dtype=dtype, autocast=autocast
        )
        ended += bool(reply) and reply[-1] in stop_ids
    model.train(was_training)
    return EndOfTurnResult(tried, ended, budget)


def autocast_dtype(autocast: contextlib.AbstractContextManager | None) -> torch.dtype | None:
    """The dtype an autocast context computes in (None for no autocast)."""
    return getattr(autocast, "fast_dtype", None) if isinstance(autocast, torch.autocast) else None
