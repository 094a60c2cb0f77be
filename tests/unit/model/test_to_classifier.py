"""Turning a language model into a classifier: the body kept exactly, a fresh seeded head."""

from __future__ import annotations

import pytest
import torch

from pocketlm.common.errors import ConfigError
from pocketlm.model.classifier import to_classifier
from pocketlm.model.config import ModelConfig
from pocketlm.model.quantized import dequantize_modules, quantize_modules
from pocketlm.model.transformer import build_model

LM = ModelConfig(vocab_size=64, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=32)


def test_the_body_is_kept_and_the_head_is_new_and_seeded() -> None:
    lm = build_model(LM, seed=3)
    before = {k: v.clone() for k, v in lm.state_dict().items() if not k.startswith("lm_head")}
    embedding = lm.model.embed_tokens.weight
    model = to_classifier(lm, ["neg", "pos", "mixed"], seed=7, std=0.01)
    assert model is lm and not hasattr(model, "lm_head")
    assert model.config.labels == ("neg", "pos", "mixed") and model.config.pooling == "last"
    state = model.state_dict()
    assert set(state) == set(before) | {"score.weight"}
    assert all(torch.equal(state[k], v) for k, v in before.items())
    assert model.model.embed_tokens.weight is embedding  # the very tensor, no copy
    assert model.score.weight.shape == (3, 32) and model.score.bias is None
    assert 0.005 < model.score.weight.std().item() < 0.015
    again = to_classifier(build_model(LM, seed=3), ["neg", "pos", "mixed"], seed=7, std=0.01)
    other = to_classifier(build_model(LM, seed=3), ["neg", "pos", "mixed"], seed=8, std=0.01)
    assert torch.equal(again.score.weight, model.score.weight)
    assert not torch.equal(other.score.weight, model.score.weight)
    logits = model(torch.tensor([[1, 2, 3]]))
    assert logits.shape == (1, 3)


def test_padding_on_either_side_gives_the_same_logits_after_conversion() -> None:
    model = to_classifier(build_model(LM, seed=1), ["a", "b"], seed=0).eval()
    with torch.no_grad():
        alone = model(torch.tensor([[5, 9, 11]]))
        right = model(torch.tensor([[5, 9, 11, 0]]), attention_mask=torch.tensor([[1, 1, 1, 0]]))
        left = model(torch.tensor([[7, 5, 9, 11]]), attention_mask=torch.tensor([[0, 1, 1, 1]]))
    torch.testing.assert_close(right, alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(left, alone, atol=1e-5, rtol=0)


def test_a_classifier_is_refused_and_labels_are_checked() -> None:
    model = to_classifier(build_model(LM), ["a", "b"])
    with pytest.raises(ConfigError, match="already a classifier"):
        to_classifier(model, ["a", "b"])
    with pytest.raises(ConfigError, match="two classes"):
        to_classifier(build_model(LM), ["only"])


def test_a_bf16_body_gets_a_bf16_head() -> None:
    model = to_classifier(build_model(LM).to(torch.bfloat16), ["a", "b"])
    assert model.score.weight.dtype == torch.bfloat16
    assert model(torch.tensor([[1, 2]])).dtype == torch.bfloat16


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_a_classifier_quantizes_with_a_float_head(scheme: str) -> None:
    model = to_classifier(build_model(LM, seed=2), ["a", "b"], seed=1).eval()
    ids = torch.tensor([[3, 4, 5, 6]])
    with torch.no_grad():
        ref = model(ids)
        quantize_modules(model, scheme)
        assert model.score.weight.dtype == torch.float32
        quantized = model(ids)
        dequantize_modules(model)
        back = model(ids)
    assert not hasattr(model, "lm_head")
    torch.testing.assert_close(quantized, ref, atol=0.05, rtol=0)
    torch.testing.assert_close(back, quantized, atol=1e-5, rtol=0)
