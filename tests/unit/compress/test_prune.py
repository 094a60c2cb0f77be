"""Structured pruning: the choice of what to cut (pure), exact surgery on dead parts, the size
policy, and the artifact (native engine, Hugging Face export with transformers' logits)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from pocketlm.checkpoint.model_io import load_model, save_model
from pocketlm.common.errors import ConfigError
from pocketlm.common.manifest import read_manifest
from pocketlm.compress.importance import activation_importance
from pocketlm.compress.prune import prune_model_dir
from pocketlm.compress.prune_plan import (
    PruneChoice,
    PruneSizes,
    check_prunable,
    choose,
    group_scores,
    params_of,
    query_heads,
    sizes_for_target,
    sizes_of,
    target_from_ratio,
    top_indices,
)
from pocketlm.compress.prune_surgery import prune_model
from pocketlm.model.config import ModelConfig
from pocketlm.model.transformer import build_model

BASE = dict(vocab_size=64, dim=32, n_layers=3, n_heads=4, n_kv_heads=2, ffn_dim=64,
            max_seq_len=32, init_std=0.2)  # fmt: skip


def test_top_indices_keeps_the_highest_in_index_order():
    assert top_indices([0.1, 5, 3, 0, 4], 3) == (1, 2, 4)
    assert top_indices([1, 1, 1], 2) == (0, 1)  # ties: the earlier
    assert top_indices([1, 2], 0) == ()


def test_choose_keeps_whole_gqa_groups_by_their_heads_summed():
    # 6 query heads over 2 kv heads: group 0 = heads 0-2, group 1 = heads 3-5; the best single
    # head is in group 0, but group 1 sums higher
    heads = np.array([[9.0, 0, 0, 4, 4, 4]])
    assert group_scores(heads[0], 2).tolist() == [9.0, 12.0]
    choice = choose(PruneSizes(1, 1, 2, 4), np.array([1.0]), heads,
                    np.array([[0.0, 3, 1, 2]]), np.array([4.0, 1, 3, 2]), n_kv_heads=2)  # fmt: skip
    assert choice.kv_groups == ((1,),) and query_heads(choice.kv_groups[0], 3) == [3, 4, 5]
    assert choice.ffn_channels == ((1, 3),)


def test_choose_picks_the_most_important_layers_then_their_own_channels():
    layers = np.array([0.5, 0.01, 0.9, 0.3])
    ffn = np.arange(4 * 6, dtype=float).reshape(4, 6) % 5  # each layer its own ranking
    heads = np.array([[1.0, 2], [2, 1], [0, 3], [3, 0]])
    choice = choose(PruneSizes(3, 1, 2, 8), layers, heads, ffn, np.ones(8), n_kv_heads=2)
    assert choice.layers == (0, 2, 3)  # layer 1 changes its input least: it goes
    assert choice.kv_groups == ((1,), (1,), (0,))
    assert choice.ffn_channels == (tuple(top_indices(ffn[0], 2)), tuple(top_indices(ffn[2], 2)),
                                   tuple(top_indices(ffn[3], 2)))  # fmt: skip


@pytest.mark.parametrize("seed", range(6))
def test_target_sizes_fit_and_shrink_width_before_depth(seed):
    rng = np.random.default_rng(seed)
    config = ModelConfig(vocab_size=512, dim=128, n_layers=8, n_heads=8, n_kv_heads=4, ffn_dim=512)
    lowest = params_of(config, PruneSizes(4, 2, 128, 64))
    target = int(rng.uniform(lowest, config.num_params()))
    sizes = sizes_for_target(config, target)
    assert params_of(config, sizes) <= target
    full = sizes_of(config)
    if sizes.n_layers < full.n_layers:  # depth only once every width is at its floor
        assert (sizes.n_kv_heads, sizes.dim) == (2, 64)
    if sizes.dim < full.dim:  # hidden channels only once the FFN is at its floor
        assert sizes.ffn_dim <= 512 // 4 + 32  # (it may grow back by a step into what is left)
    assert sizes.ffn_dim % 32 == 0 and sizes.dim % 32 == 0  # int8/int4 still apply


def test_ratio_fixed_axes_and_impossible_targets():
    config = ModelConfig(vocab_size=512, dim=128, n_layers=8, n_heads=8, n_kv_heads=4, ffn_dim=512)
    target = target_from_ratio(config, 0.6)
    body = config.num_params(include_embeddings=False)
    assert target == config.num_params() - body + int(0.6 * body)
    sizes = sizes_for_target(config, target, axes=("ffn", "layers"), fixed={"heads": 2})
    assert sizes.n_kv_heads == 2 and sizes.dim == 128 and params_of(config, sizes) <= target
    with pytest.raises(ConfigError, match="cannot reach"):
        sizes_for_target(config, 1000)
    with pytest.raises(ConfigError, match="ratio"):
        target_from_ratio(config, 1.5)


def test_moe_encoders_and_layernorm_width_are_refused():
    moe = ModelConfig(n_experts=4, n_experts_per_token=2, expert_ffn_dim=64)
    with pytest.raises(ConfigError, match="mixture of experts"):
        check_prunable(moe)
    encoder = ModelConfig(
        causal=False, position_kind="learned", norm_kind="layer", norm_position="post"
    )
    with pytest.raises(ConfigError, match="encoder"):
        check_prunable(encoder)
    phi = ModelConfig(dim=64, n_heads=4, n_kv_heads=4, norm_kind="layer")
    assert sizes_for_target(phi, params_of(phi, PruneSizes(8, 4, 64, 64))).dim == 64  # not cut
    with pytest.raises(ConfigError, match="RMSNorm"):
        prune_model(build_model(dataclasses.replace(phi, n_layers=1)),
                    PruneChoice((0,), ((0, 1, 2, 3),), (tuple(range(64)),), tuple(range(32))))  # fmt: skip


def _dead_model(**options) -> torch.nn.Module:
    """A model whose cut-to-be parts are exactly dead: FFN channels (a zero gate or up row),
    one attention group per layer (zero values), the last layer (zero o_proj and down_proj:
    the identity) and hidden channels 24.. (zero in the embeddings and every write)."""
    config = ModelConfig(**{**BASE, **options})
    model = build_model(config, seed=1).eval()
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        layers = model.model.layers
        layers[0].mlp.gate_proj.weight[10:30] = 0
        layers[1].mlp.up_proj.weight[5:25] = 0
        layers[0].self_attn.v_proj.weight[0:8] = 0  # kv head 0 of layer 0 (head_dim 8)
        layers[1].self_attn.v_proj.weight[8:16] = 0
        if config.qkv_bias:
            layers[0].self_attn.v_proj.bias[0:8] = 0
            layers[1].self_attn.v_proj.bias[8:16] = 0
        layers[2].self_attn.o_proj.weight.zero_()
        layers[2].mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight[:, 24:] = 0
        for layer in layers:
            layer.self_attn.o_proj.weight[24:] = 0
            layer.mlp.down_proj.weight[24:] = 0
        for norm in (*[l.input_layernorm for l in layers], model.model.norm):  # noqa: E741
            norm.weight.copy_(1 + 0.3 * torch.randn(norm.weight.shape, generator=gen))
    return model


FAMILIES = {
    "tied": {},
    "untied-bias": {"tie_embeddings": False, "qkv_bias": True, "o_bias": True},
    "qwen3": {"qk_norm": True, "qkv_bias": True},
    "gemma": {"norm_offset": 1.0, "sandwich_norms": True, "activation": "gelu_tanh",
              "embed_scale": 5.0, "rope_theta": 1e6},
}  # fmt: skip


@pytest.mark.parametrize("options", list(FAMILIES.values()), ids=list(FAMILIES))
def test_cutting_dead_parts_is_exact(options):
    model = _dead_model(**options)
    ids = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    imp = activation_importance(model, [ids])
    assert imp.layers[2] < 1e-6 and (imp.dim[24:] == 0).all() and (imp.ffn[0, 10:30] == 0).all()
    choice = choose(PruneSizes(2, 1, 44, 24), imp.layers, imp.heads, imp.ffn, imp.dim, n_kv_heads=2)
    assert choice.layers == (0, 1) and choice.kv_groups == ((1,), (0,))
    pruned = prune_model(model, choice)
    assert pruned.config.n_heads == 2 and pruned.config.resolved_head_dim == 8  # whole heads
    assert pruned.num_params() == pruned.config.num_params() < model.num_params()
    if pruned.config.tie_embeddings:
        assert pruned.lm_head.weight is pruned.model.embed_tokens.weight
    with torch.no_grad():
        want = model(ids)
        # fp32 rounding only (the RMSNorm rescale reorders sums); a real cut moves logits by ~1
        torch.testing.assert_close(pruned(ids), want, atol=2e-4, rtol=1e-4)
    assert want.std() > 0.5


@pytest.fixture(scope="module")
def pruned_dir(synthetic_pipeline, tmp_path_factory):
    """A random model on the synthetic tokenizer (vocab 512), cut on every axis: 3 of 4 layers
    1 of 2 attention groups and 48 of 64 hidden channels given, the FFN sized to 40% of its body."""
    base = tmp_path_factory.mktemp("prune")
    config = ModelConfig(vocab_size=512, dim=64, n_layers=4, n_heads=4, n_kv_heads=2,
                         ffn_dim=256, max_seq_len=64, init_std=0.1)  # fmt: skip
    original = save_model(
        base / "model", build_model(config, seed=3), synthetic_pipeline["tokenizer"]
    )
    out, report = prune_model_dir(original, base / "pruned", synthetic_pipeline["tokens"],
                                  ratio=0.4, layers=3, heads=2, dim=48, calib_tokens=1024, ctx=32)  # fmt: skip
    return original, out, report


def test_the_pruned_model_is_an_artifact_with_its_parent_and_cut(pruned_dir):
    original, out, report = pruned_dir
    manifest = read_manifest(out)
    assert manifest["parents"][0]["path"] == str(original.resolve())
    summary = manifest["summary"]["pruning"]
    assert summary == report and summary["params_after"] <= summary["target_params"]
    assert (
        summary["layers"] == [4, 3] and summary["heads"] == [4, 2] and summary["kv_heads"] == [2, 1]
    )
    assert (
        summary["ffn_dim"][1] < 256 and summary["dim"][1] < 64 and summary["calib_tokens"] == 1024
    )
    assert len(summary["kept_layers"]) == 3 and len(summary["removed_layers"]) == 1
    loaded = load_model(out)
    assert loaded.config.num_params() == summary["params_after"] == manifest["summary"]["params"]


def test_the_pruned_model_runs_natively_and_exports_to_transformers(pruned_dir, tmp_path):
    pytest.importorskip("pocketlm.engine._native", reason="native extension not built")
    transformers = pytest.importorskip("transformers")
    from pocketlm.engine.load import open_backend
    from pocketlm.interop.hf_export import export_hf

    _, out, _ = pruned_dir
    model = load_model(out).model
    ids = torch.randint(3, 512, (1, 12), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ours = model(ids)[0]
    backend, _ = open_backend(out, backend="native", device="cpu", precision="fp32", threads=1)
    native = backend.extend(0, ids[0].tolist())
    assert np.abs(native - ours.numpy()).max() <= 2e-4 * float(ours.abs().max())
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        str(export_hf(out, tmp_path / "hf")), local_files_only=True
    ).eval()
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits[0], ours, atol=1e-4, rtol=0)
