"""A model of some of another's layers computes what those layers compute."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from pocketlm.model.config import ModelConfig
from pocketlm.model.layer_select import every_other_layer, select_layers
from pocketlm.model.transformer import build_model

CONFIG = ModelConfig(vocab_size=64, dim=32, n_layers=4, n_heads=4, n_kv_heads=2, max_seq_len=32)


def _run_layers(model, ids: torch.Tensor, keep: list[int]) -> torch.Tensor:
    """The source model's forward with only the kept layers, by hand."""
    layers = model.model.layers
    saved = list(layers)
    try:
        model.model.layers = torch.nn.ModuleList(saved[i] for i in keep)
        for new, layer in enumerate(model.model.layers):
            layer.self_attn.layer_idx = new
        return model(ids)
    finally:
        model.model.layers = torch.nn.ModuleList(saved)
        for i, layer in enumerate(saved):
            layer.self_attn.layer_idx = i


@pytest.mark.parametrize("labels", [(), ("a", "b", "c")])
def test_the_student_computes_what_its_kept_layers_compute(labels) -> None:
    model = build_model(dataclasses.replace(CONFIG, labels=labels), seed=2).eval()
    keep = every_other_layer(4)
    assert keep == [0, 2]
    small = select_layers(model, keep).eval()
    assert small.config.n_layers == 2
    ids = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(small(ids), _run_layers(model, ids, keep), rtol=0, atol=0)
    assert model.config.n_layers == 4  # the source is untouched
    if not labels:
        assert small.lm_head.weight.data_ptr() == small.model.embed_tokens.weight.data_ptr()


def test_per_layer_options_follow_their_layers() -> None:
    config = dataclasses.replace(
        CONFIG, sliding_window=4, layer_types=("sliding", "full", "sliding", "full")
    )
    small = select_layers(build_model(config), [1, 2, 3])
    assert small.config.layer_types == ("full", "sliding", "full")


def test_bad_selections_are_refused() -> None:
    model = build_model(CONFIG)
    for keep in ([], [0, 0], [4], [-1]):
        with pytest.raises(ValueError, match="distinct indices"):
            select_layers(model, keep)


def test_a_shared_layer_model_keeps_its_one_layer_at_any_selection() -> None:
    config = dataclasses.replace(
        CONFIG, shared_layers=True, causal=False, position_kind="learned", labels=("a", "b")
    )
    model = build_model(config, seed=1)
    for keep in ([0, 2], [1, 3], [3]):
        small = select_layers(model, keep)
        assert small.config.n_layers == len(keep) and len(small.model.layers) == 1
        assert torch.equal(
            small.model.layers[0].mlp.up_proj.weight, model.model.layers[0].mlp.up_proj.weight
        )
