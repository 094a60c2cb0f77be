"""Hugging Face MoE tensors and config fields to PocketLM's and back (findings on the file
layouts are in interop/moe_tensors.py's docstring)."""

from __future__ import annotations

import pytest
import torch

from pocketlm.common.errors import ArtifactError, ConfigError
from pocketlm.interop.moe_tensors import (
    expert_tensors_from_hf,
    expert_tensors_to_hf,
    moe_config_from_hf,
)

L = "model.layers.3."


def test_fused_expert_tensors_split_per_expert():
    gate_up = torch.randn(4, 2 * 6, 8)  # (E, 2F, dim): gate rows then up rows
    down = torch.randn(4, 8, 6)  # (E, dim, F)
    split = dict(expert_tensors_from_hf(L + "mlp.experts.gate_up_proj", gate_up))
    split |= dict(expert_tensors_from_hf(L + "mlp.experts.down_proj", down))
    assert len(split) == 12
    for e in range(4):
        assert torch.equal(split[f"{L}mlp.experts.{e}.gate_proj.weight"], gate_up[e, :6])
        assert torch.equal(split[f"{L}mlp.experts.{e}.up_proj.weight"], gate_up[e, 6:])
        assert torch.equal(split[f"{L}mlp.experts.{e}.down_proj.weight"], down[e])
    # each is its own contiguous tensor: safetensors refuses tensors that share storage
    ptrs = {t.untyped_storage().data_ptr() for t in split.values()}
    assert len(ptrs) == 12 and all(t.is_contiguous() for t in split.values())


@pytest.mark.parametrize("name", [L + "mlp.experts.gate_up_proj", L + "mlp.experts.down_proj"])
def test_a_fused_tensor_of_the_wrong_rank_names_itself(name):
    with pytest.raises(ArtifactError, match=name.replace(".", r"\.")):
        expert_tensors_from_hf(name, torch.zeros(4, 8))
    if "gate_up" in name:
        with pytest.raises(ArtifactError, match="2 \\* expert_ffn_dim"):
            expert_tensors_from_hf(name, torch.zeros(4, 7, 8))


def test_mixtral_names_round_trip():
    t = torch.zeros(1)
    pairs = {
        L + "block_sparse_moe.gate.weight": L + "mlp.gate.weight",
        L + "block_sparse_moe.experts.5.w1.weight": L + "mlp.experts.5.gate_proj.weight",
        L + "block_sparse_moe.experts.5.w3.weight": L + "mlp.experts.5.up_proj.weight",
        L + "block_sparse_moe.experts.5.w2.weight": L + "mlp.experts.5.down_proj.weight",
    }
    for hf, ours in pairs.items():
        assert expert_tensors_from_hf(hf, t) == [(ours, t)]
        assert expert_tensors_to_hf(ours, t, "block_sparse_moe") == [(hf, t)]
        assert expert_tensors_to_hf(ours, t, "mlp") == [(ours, t)]


@pytest.mark.parametrize(
    "name",
    [
        L + "mlp.experts.2.gate_proj.weight",  # Qwen-MoE's names are PocketLM's
        L + "mlp.gate.weight",
        L + "mlp.shared_expert.up_proj.weight",
        L + "mlp.shared_expert_gate.weight",
        L + "mlp.gate_up_proj.weight",  # Phi-3's fused dense MLP is not an expert tensor
        L + "self_attn.q_proj.weight",
        "model.embed_tokens.weight",
    ],
)
def test_other_names_pass_through(name):
    t = torch.zeros(1)
    assert expert_tensors_from_hf(name, t) == [(name, t)]
    if "mlp.gate.weight" not in name and "experts.2" not in name:
        assert expert_tensors_to_hf(name, t, "block_sparse_moe") == [(name, t)]


def test_an_unknown_export_layout_is_refused():
    with pytest.raises(ConfigError, match="fused"):
        expert_tensors_to_hf(L + "mlp.gate.weight", torch.zeros(1), "fused")


def test_config_fields_of_each_family():
    mixtral = {"model_type": "mixtral", "num_hidden_layers": 2, "num_local_experts": 8,
               "num_experts_per_tok": 2, "intermediate_size": 96}  # fmt: skip
    assert moe_config_from_hf(mixtral) == {
        "n_experts": 8, "n_experts_per_token": 2, "expert_ffn_dim": 96, "router": "softmax_topk"
    }  # fmt: skip
    qwen2 = {"model_type": "qwen2_moe", "num_hidden_layers": 2, "num_experts": 60,
             "num_experts_per_tok": 4, "moe_intermediate_size": 32, "intermediate_size": 96,
             "shared_expert_intermediate_size": 48, "norm_topk_prob": False,
             "mlp_only_layers": [], "decoder_sparse_step": 1}  # fmt: skip
    assert moe_config_from_hf(qwen2) == {
        "n_experts": 60, "n_experts_per_token": 4, "expert_ffn_dim": 32,
        "router": "softmax_topk_raw", "shared_expert_ffn_dim": 48,
    }  # fmt: skip
    # released Qwen3-MoE configs say num_experts; transformers 5.24 writes num_local_experts
    for key in ("num_experts", "num_local_experts"):
        qwen3 = {"model_type": "qwen3_moe", "num_hidden_layers": 2, key: 128,
                 "num_experts_per_tok": 8, "moe_intermediate_size": 768, "norm_topk_prob": True}  # fmt: skip
        assert moe_config_from_hf(qwen3) == {
            "n_experts": 128, "n_experts_per_token": 8, "expert_ffn_dim": 768,
            "router": "softmax_topk",
        }  # fmt: skip
    assert moe_config_from_hf({"model_type": "llama", "num_hidden_layers": 2}) == {}
    assert moe_config_from_hf({**qwen2, "num_experts": 0}) == {}


def test_qwen_configs_with_dense_layers_are_refused_naming_the_field():
    qwen = {"model_type": "qwen2_moe", "num_hidden_layers": 4, "num_experts": 4}
    with pytest.raises(ConfigError, match=r"mlp_only_layers makes layers \[0, 2\] dense"):
        moe_config_from_hf({**qwen, "mlp_only_layers": [0, 2]})
    with pytest.raises(ConfigError, match=r"decoder_sparse_step makes layers \[0, 2\] dense"):
        moe_config_from_hf({**qwen, "decoder_sparse_step": 2})


def test_exported_mixtral_loads_in_transformers(tmp_path):
    """PocketLM tensors renamed by expert_tensors_to_hf load into MixtralForCausalLM (which
    fuses them itself) with nothing missing and the same weights."""
    transformers = pytest.importorskip("transformers")
    from safetensors.torch import save_file

    config = transformers.MixtralConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, num_local_experts=3, num_experts_per_tok=2,
    )  # fmt: skip
    torch.manual_seed(0)
    src = transformers.MixtralForCausalLM(config)
    ours: dict[str, torch.Tensor] = {}
    for name, tensor in src.state_dict().items():
        ours.update(expert_tensors_from_hf(name, tensor))
    exported = {}
    for name, tensor in ours.items():
        exported.update(expert_tensors_to_hf(name, tensor, "block_sparse_moe"))
    config.save_pretrained(tmp_path)
    save_file(exported, tmp_path / "model.safetensors", metadata={"format": "pt"})
    back, info = transformers.MixtralForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    for name, tensor in src.state_dict().items():
        assert torch.equal(back.state_dict()[name], tensor), name
