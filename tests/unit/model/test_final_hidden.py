"""The final hidden states a forward hook takes are what the model's head reads."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from pocketlm.model.config import ModelConfig
from pocketlm.model.final_hidden import FinalHidden
from pocketlm.model.transformer import build_model

DECODER = ModelConfig(vocab_size=64, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=16)
ENCODER = dataclasses.replace(
    DECODER, causal=False, position_kind="learned", norm_position="post", norm_kind="layer"
)
IDS = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(0))


def test_a_language_models_logits_are_its_head_over_the_states() -> None:
    model = build_model(DECODER, seed=1).eval()
    hook = FinalHidden(model)
    with torch.no_grad():
        logits, hidden = hook.run(lambda: model(IDS))
    assert hidden.shape == (2, 7, 32)
    torch.testing.assert_close(logits, hidden @ model.lm_head.weight.T)


def test_an_encoders_output_is_the_states_and_nothing_is_kept_outside_run() -> None:
    model = build_model(ENCODER, seed=1).eval()
    hook = FinalHidden(model)
    with torch.no_grad():
        out, hidden = hook.run(lambda: model(IDS))
        model(IDS)  # outside run: not kept
    assert torch.equal(out, hidden) and hook._value is None
    hook.handle.remove()
    with pytest.raises(RuntimeError, match="final norm"):
        hook.run(lambda: model(IDS))


def test_a_classifier_pools_its_states_at_the_last_real_token() -> None:
    model = build_model(dataclasses.replace(DECODER, labels=("a", "b")), seed=1).eval()
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3], dtype=torch.bool)
    with torch.no_grad():
        logits, hidden = FinalHidden(model).run(lambda: model(IDS, attention_mask=mask))
    pooled = hidden[torch.arange(2), torch.tensor([6, 3])]  # (B, dim)
    torch.testing.assert_close(logits, model.score(pooled))
