"""The sequence-classification head: pooling, padding on either side, tensors on disk."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from pocketlm.checkpoint.weights_spec import expected_tensors
from pocketlm.common.errors import ConfigError
from pocketlm.model.config import ModelConfig
from pocketlm.model.heads import padding_doc_ids, pooled_index
from pocketlm.model.transformer import build_model

CONFIG = ModelConfig(
    vocab_size=64, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=32,
    labels=("neg", "pos", "neutral"),
)  # fmt: skip


def test_pooled_index_finds_the_last_and_first_real_token_on_either_side() -> None:
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert pooled_index(mask, "last").tolist() == [2, 4, 4]
    assert pooled_index(mask, "first").tolist() == [0, 2, 0]
    with pytest.raises(ValueError, match="real"):
        pooled_index(torch.tensor([[0, 0]]), "last")


def test_padding_doc_ids_separate_pads_from_text() -> None:
    mask = torch.tensor([[1, 1, 0, 0], [0, 0, 1, 1], [1, 1, 1, 1]])
    assert padding_doc_ids(mask).tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 0, 0]]


@pytest.mark.parametrize("kernel", ["auto", "sdpa"])
@pytest.mark.parametrize("pooler", ["none", "tanh"])
def test_left_right_and_no_padding_give_the_same_logits(kernel: str, pooler: str) -> None:
    from pocketlm.model.transformer import set_attention_kernel

    config = dataclasses.replace(CONFIG, pooler=pooler, classifier_bias=pooler != "none")
    model = build_model(config, seed=1).eval()
    set_attention_kernel(model, kernel)
    text = torch.tensor([[5, 9, 11, 3]])
    pad = 0
    with torch.no_grad():
        alone = model(text)  # (1, 3)
        right = model(
            torch.tensor([[5, 9, 11, 3, pad, pad], [7, 8, 9, 10, 11, 12]]),
            attention_mask=torch.tensor([[1, 1, 1, 1, 0, 0], [1] * 6]),
        )
        left = model(
            torch.tensor([[pad, pad, 5, 9, 11, 3]]),
            attention_mask=torch.tensor([[0, 0, 1, 1, 1, 1]]),
        )
    assert alone.shape == (1, 3)
    torch.testing.assert_close(right[:1], alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(left, alone, atol=1e-5, rtol=0)
    assert not torch.allclose(right[1], alone[0])  # another text, another answer


def test_classifier_tensors_match_the_model() -> None:
    config = dataclasses.replace(CONFIG, pooler="relu", classifier_bias=True)
    model = build_model(config)
    spec = expected_tensors(config, {"scheme": "none"})
    state = model.state_dict()
    assert set(spec) == set(state)
    assert all(tuple(state[n].shape) == s.shape for n, s in spec.items())
    assert not hasattr(model, "lm_head")
    assert config.num_params() == model.num_params()


def test_labels_are_checked() -> None:
    with pytest.raises(ConfigError, match="distinct"):
        dataclasses.replace(CONFIG, labels=("a", "a"))
    with pytest.raises(ConfigError, match="two classes"):
        dataclasses.replace(CONFIG, labels=("a",))
    with pytest.raises(ConfigError, match="pooling"):
        dataclasses.replace(CONFIG, pooling="mean")
