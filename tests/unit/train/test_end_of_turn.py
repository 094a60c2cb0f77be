"""The end-of-turn rate: held-out prompts cut where the first reply starts, greedy replies with
the KV cache equal to replies recomputed without it, and the rate of a model forced to write the
stop token (1.0) against one that never does (0.0)."""

from __future__ import annotations

import torch

from pocketlm.data.sft_tokens import SFTTokens
from pocketlm.model.config import ModelConfig
from pocketlm.model.transformer import build_model
from pocketlm.train.end_of_turn import (
    REPLY_MARGIN,
    ReplyPrompts,
    end_of_turn_rate,
    greedy_reply,
    reply_prompts,
)

CPU = torch.device("cpu")
STOP = 7


def _model(seed: int = 0, max_seq_len: int = 64):
    config = ModelConfig(
        vocab_size=64, dim=32, n_layers=2, n_heads=2, n_kv_heads=1, max_seq_len=max_seq_len,
        tie_embeddings=False, lm_head_bias=True,
    )  # fmt: skip
    return build_model(config, seed=seed).eval()


def _forced(token: int):
    """A model whose every next token is `token` (head weights zero, bias one-hot)."""
    model = _model()
    with torch.no_grad():
        model.lm_head.weight.zero_()
        model.lm_head.bias.zero_()
        model.lm_head.bias[token] = 10.0
    return model


def test_prompts_end_where_the_first_reply_starts():
    examples = [
        SFTTokens([1, 2, 3, 4, 5, 7, 9], [False, False, False, True, True, True, False]),
        SFTTokens([1, 2], [False, False]),  # no reply: skipped
        SFTTokens([4, 7], [True, True]),  # a reply with no prompt: skipped
        SFTTokens([1, 5, 7, 2, 3, 7], [False, True, True, False, True, True]),
    ]
    got = reply_prompts(examples, 32)
    assert got.prompts == [[1, 2, 3], [1]] and got.reference_lengths == [3, 2]
    assert got.budget(context=64) == 3 + REPLY_MARGIN and got.budget(context=10) == 10
    assert reply_prompts(examples, 1).prompts == [[1, 2, 3]]


def test_greedy_reply_with_the_cache_is_the_reply_recomputed_without_it():
    model = _model(seed=3)
    prompt = [1, 5, 9, 12, 3]
    reply = greedy_reply(model, prompt, {63}, 12, device=CPU, dtype=torch.float32)
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(len(reply)):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    assert reply == ids[len(prompt) :]


def test_a_model_that_stops_scores_one_and_one_that_never_does_scores_zero():
    prompts = ReplyPrompts([[1, 2, 3], [4, 5], [6]], [2, 4, 3])
    stops = frozenset({STOP, 8})
    stopping = end_of_turn_rate(_forced(STOP), prompts, stops, device=CPU)
    assert (stopping.rate, stopping.prompts, stopping.budget) == (1.0, 3, 4 + REPLY_MARGIN)
    rambling = end_of_turn_rate(_forced(11), prompts, stops, device=CPU)
    assert (rambling.rate, rambling.ended) == (0.0, 0)
    assert rambling.metrics()["end_of_turn_rate"] == 0.0
    # a stop token written only after the budget does not count: margin 0, budget 4 tokens
    assert end_of_turn_rate(_forced(11), prompts, stops, device=CPU, margin=0).budget == 4


def test_the_budget_is_capped_by_the_context_and_full_prompts_are_left_out():
    model = _forced(STOP)
    prompts = ReplyPrompts([[1] * 64, [1] * 50], [100, 2])  # the context holds 64 positions
    result = end_of_turn_rate(model, prompts, {STOP}, device=CPU)
    assert (result.prompts, result.ended, result.budget) == (1, 1, 64)
    assert end_of_turn_rate(model, ReplyPrompts([], []), {STOP}, device=CPU).rate == 0.0
