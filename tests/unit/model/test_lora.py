"""LoRA and QLoRA module surgery: a fresh adapter changes nothing, merging keeps the logits,
only the adapter trains, targets resolve as documented, and an int4 base stays int4 in memory
and in what autograd keeps for the backward pass."""

from __future__ import annotations

import math

import pytest
import torch

from pocketlm.common.errors import ArtifactError, ConfigError
from pocketlm.model.config import ModelConfig
from pocketlm.model.lora import (
    LoRAConfig,
    LoRALinear,
    apply_lora,
    cast_frozen_linears,
    load_lora_state,
    lora_modules,
    lora_parameter_names,
    lora_state_dict,
    merge_lora,
    quantize_base,
    resolve_targets,
)
from pocketlm.model.quantized import QuantizedLinear, quantize_modules
from pocketlm.model.transformer import build_model

BASES = ["float", "int8", "int4"]


def _config(**changes) -> ModelConfig:
    settings = dict(
        vocab_size=96, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128, max_seq_len=32
    )
    settings.update(changes)
    return ModelConfig(**settings)


def _model(base: str = "float", **changes) -> torch.nn.Module:
    model = build_model(_config(**changes), seed=3)
    if base != "float":
        quantize_modules(model, base)
    return model.eval()


def _ids(batch: int = 2, seq: int = 12) -> torch.Tensor:
    return torch.randint(0, 96, (batch, seq), generator=torch.Generator().manual_seed(0))


def _randomise_b(model: torch.nn.Module, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in lora_modules(model).values():
            module.lora_B.weight.copy_(torch.randn(module.lora_B.weight.shape, generator=g) * 0.05)


@pytest.mark.parametrize("base", BASES)
def test_a_fresh_adapter_leaves_the_logits_exactly_as_they_were(base):
    model = _model(base)
    ids = _ids()
    with torch.no_grad():
        before = model(ids)
        apply_lora(model, 4, 8.0, "all-linear,lm_head")
        assert torch.equal(model(ids), before)


@pytest.mark.parametrize("base", BASES)
def test_merged_logits_equal_base_plus_adapter(base):
    model = _model(base)
    ids = _ids()
    apply_lora(model, 4, 8.0, "all-linear")
    _randomise_b(model)
    with torch.no_grad():
        adapted = model(ids)
        merge_lora(model)
        merged = model(ids)
    assert not lora_modules(model)
    for name in ("q_proj", "down_proj"):
        layer = getattr(
            model.model.layers[0].self_attn if name == "q_proj" else model.model.layers[0].mlp, name
        )
        assert type(layer) is torch.nn.Linear and layer.weight.dtype == torch.float32
    assert (adapted - merged).abs().max() < 1e-5
    assert (adapted - _model(base)(ids)).abs().max() > 1e-2  # the adapter did change the model


FAMILY_OPTIONS = {
    "phi2": dict(
        norm_kind="layer", activation="gelu_tanh", mlp_kind="plain", qkv_bias=True, o_bias=True,
        mlp_bias=True, lm_head_bias=True, parallel_block=True, rotary_dim=8, tie_embeddings=False,
    ),
    "gemma2": dict(
        norm_offset=1.0, activation="gelu_tanh", embed_scale=8.0, attn_softcap=5.0,
        final_softcap=10.0, sandwich_norms=True, sliding_window=4, layer_types=("sliding", "full"),
    ),
}  # fmt: skip


@pytest.mark.parametrize("family", list(FAMILY_OPTIONS))
@pytest.mark.parametrize("base", ["float", "int8"])
def test_family_options_keep_lora_exact(family, base):
    """Biases (kept in the base layer), a plain MLP, soft-caps and a biased head: a fresh adapter
    changes nothing, the merge keeps the logits, the loss trains only the adapter."""
    model = _model(base, **FAMILY_OPTIONS[family])
    ids = _ids()
    with torch.no_grad():
        before = model(ids)
    paths = apply_lora(model, 4, 8.0, "all-linear,lm_head")
    assert ("model.layers.0.mlp.gate_proj" in paths) == (family == "gemma2")
    with torch.no_grad():
        assert torch.equal(model(ids), before)
    _randomise_b(model)
    model.train()
    model(ids, targets=ids, reduction="sum").backward()
    assert {n for n, p in model.named_parameters() if p.grad is not None} == set(
        lora_parameter_names(model)
    )
    model.eval()
    with torch.no_grad():
        adapted = model(ids)
        merge_lora(model)
        assert (model(ids) - adapted).abs().max() < 1e-5


def test_merging_a_tied_head_unties_it_and_keeps_the_embeddings():
    model = _model("float", tie_embeddings=True)
    table = model.model.embed_tokens.weight.detach().clone()
    ids = _ids()
    apply_lora(model, 2, 4.0, "lm_head,q_proj")
    _randomise_b(model)
    with torch.no_grad():
        adapted = model(ids)
        merge_lora(model)
        assert (model(ids) - adapted).abs().max() < 1e-5
    assert model.config.tie_embeddings is False
    assert model.lm_head.weight is not model.model.embed_tokens.weight
    assert torch.equal(model.model.embed_tokens.weight, table)


@pytest.mark.parametrize("base", ["float", "int4"])
def test_only_the_adapter_gets_gradients(base):
    model = _model(base).train()
    apply_lora(model, 4, 8.0, "q_proj,v_proj,down_proj")
    _randomise_b(model)
    ids = _ids()
    model(ids, targets=ids, reduction="sum").backward()
    trained = {n for n, p in model.named_parameters() if p.grad is not None}
    assert trained == set(lora_parameter_names(model))
    assert all(model.get_parameter(n).grad.abs().sum() > 0 for n in trained)
    assert len(trained) == 2 * 3 * 2  # A and B, three targets, two layers


def test_targets_resolve_by_suffix_and_all_linear_covers_the_decoder_only():
    model = _model()
    paths = resolve_targets(model, "q_proj,self_attn.v_proj")
    assert paths == [f"model.layers.{i}.self_attn.{m}_proj" for i in range(2) for m in ("q", "v")]
    every = resolve_targets(model, "all-linear")
    assert len(every) == 2 * 7 and "lm_head" not in every
    assert resolve_targets(model, "all-linear,lm_head")[-1] == "lm_head"
    assert resolve_targets(model, ["model.layers.1.mlp.up_proj"]) == ["model.layers.1.mlp.up_proj"]
    with pytest.raises(ConfigError, match="names no linear layer"):
        resolve_targets(model, "qkv_proj")


def test_all_linear_reaches_every_expert_but_never_the_router():
    model = _model(n_experts=4, n_experts_per_token=2, expert_ffn_dim=64, shared_expert_ffn_dim=64)
    paths = apply_lora(model, 2, 4.0, "all-linear")
    assert "model.layers.0.mlp.experts.3.down_proj" in paths
    assert "model.layers.0.mlp.shared_expert.gate_proj" in paths
    assert not any(p.endswith(("mlp.gate", "shared_expert_gate")) for p in paths)
    assert len(paths) == 2 * (4 + 3 * 4 + 3)
    _randomise_b(model)
    with torch.no_grad():
        adapted = model(_ids())
        merge_lora(model)
        assert (model(_ids()) - adapted).abs().max() < 1e-5
    with pytest.raises(ConfigError, match="cannot wrap"):
        apply_lora(_model(n_experts=4, n_experts_per_token=2, expert_ffn_dim=64), 2, 4.0, "gate")


def test_init_follows_peft_and_the_seed():
    model = _model()
    apply_lora(model, 8, 16.0, "q_proj", seed=5)
    layer = lora_modules(model)["model.layers.0.self_attn.q_proj"]
    bound = 1 / math.sqrt(layer.in_features)  # kaiming_uniform(a=sqrt(5)): U(-1/sqrt(in), ...)
    assert layer.lora_A.weight.abs().max() <= bound and layer.lora_A.weight.std() > bound / 3
    assert torch.count_nonzero(layer.lora_B.weight) == 0
    assert layer.scale == 2.0
    again = _model()
    apply_lora(again, 8, 16.0, "q_proj", seed=5)
    assert all(
        torch.equal(a, b)
        for a, b in zip(lora_state_dict(model).values(), lora_state_dict(again).values())
    )
    rs = _model()
    apply_lora(rs, 16, 8.0, "q_proj", rslora=True)
    assert lora_modules(rs)["model.layers.1.self_attn.q_proj"].scale == 8.0 / 4
    with pytest.raises(ConfigError, match="already has LoRA"):
        apply_lora(model, 8, 16.0, "v_proj")


def test_adapter_state_round_trips_and_mismatches_are_named():
    model = _model()
    apply_lora(model, 4, 8.0, "q_proj,v_proj")
    _randomise_b(model)
    state = {k: v.clone() for k, v in lora_state_dict(model).items()}
    assert set(state) == {
        f"model.layers.{i}.self_attn.{m}_proj.lora_{x}.weight"
        for i in range(2)
        for m in ("q", "v")
        for x in ("A", "B")
    }
    fresh = _model()
    apply_lora(fresh, 4, 8.0, "q_proj,v_proj", seed=9)
    load_lora_state(fresh, state, "adapter")
    with torch.no_grad():
        assert torch.equal(fresh(_ids()), model(_ids()))
    other_rank = _model()
    apply_lora(other_rank, 2, 8.0, "q_proj,v_proj")
    with pytest.raises(ArtifactError, match="lora_A.weight is"):
        load_lora_state(other_rank, state, "adapter")
    other_targets = _model()
    apply_lora(other_targets, 4, 8.0, "q_proj")
    with pytest.raises(ArtifactError, match="do not fit"):
        load_lora_state(other_targets, state, "adapter")


def test_a_qlora_base_keeps_its_int4_weights_and_no_float_copy():
    model = _model()
    float_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    quantize_base(model, LoRAConfig(rank=8, base_quant="int4"))
    apply_lora(model, 8, 16.0, "q_proj,v_proj,down_proj")  # wrapped and unwrapped int4 layers
    model.train()
    quantized = [m for m in model.modules() if isinstance(m, QuantizedLinear)]
    assert all(
        isinstance(lora.base_layer, QuantizedLinear) for lora in lora_modules(model).values()
    )
    weight_shapes = {(q.out_features, q.in_features) for q in quantized}
    adapter = set(lora_parameter_names(model))
    base_tensors = [
        t for n, t in [*model.named_parameters(), *model.named_buffers()] if n not in adapter
    ]
    assert not any(t.is_floating_point() and tuple(t.shape) in weight_shapes for t in base_tensors)
    base_bytes = sum(t.numel() * t.element_size() for t in base_tensors)
    assert base_bytes < 0.2 * float_bytes  # ~4.5 bits a weight, norms in fp32

    saved: list[torch.Tensor] = []

    def keep(t: torch.Tensor) -> torch.Tensor:
        saved.append(t)
        return t

    ids = _ids()
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        loss = model(ids, targets=ids, reduction="sum")
    loss.backward()
    dequantized = [
        t
        for t in saved
        if t.is_floating_point() and t.ndim == 2 and tuple(t.shape) in weight_shapes
    ]
    assert not dequantized, [tuple(t.shape) for t in dequantized]  # backward dequantizes again
    assert all(p.grad is not None for p in map(model.get_parameter, adapter))


def test_qlora_under_bf16_autocast_trains_in_bf16_and_returns_fp32_input_gradients():
    model = _model("int8").train()
    apply_lora(model, 4, 8.0, "all-linear")
    layer = lora_modules(model)["model.layers.0.mlp.up_proj"]
    x = torch.randn(3, 64, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert x.grad.dtype == torch.float32 and x.grad.abs().sum() > 0


def test_lora_linear_rejects_rank_zero():
    with pytest.raises(ConfigError, match="rank"):
        LoRALinear(torch.nn.Linear(4, 4), 0, 1.0)


def test_a_bf16_frozen_base_computes_what_autocast_computed_from_fp32() -> None:
    model = _model(tie_embeddings=False)
    apply_lora(model, 4, 8.0, LoRAConfig().targets)
    _randomise_b(model)
    ids = _ids()

    def loss_and_grads() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(ids, targets=ids)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return loss.detach(), grads

    before, grads_before = loss_and_grads()
    cast = cast_frozen_linears(model, torch.bfloat16)
    after, grads_after = loss_and_grads()
    bases = [m.base_layer for m in lora_modules(model).values()]
    assert cast == len(bases) + 1  # every LoRA base and the untied head
    assert all(b.weight.dtype == torch.bfloat16 for b in bases)
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    assert grads_after.keys() == grads_before.keys()
    for name, grad in grads_before.items():
        torch.testing.assert_close(grads_after[name], grad, rtol=0, atol=0, msg=name)


def test_a_tied_head_keeps_its_shared_fp32_weight() -> None:
    model = _model(tie_embeddings=True)
    apply_lora(model, 4, 8.0, LoRAConfig().targets)
    cast_frozen_linears(model, torch.bfloat16)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert model.lm_head.weight.dtype == torch.float32
