"""benchmarks/infer_shapes.py: the shapes' facts and the parameter count its disk check uses."""

from __future__ import annotations

import torch
import transformers
from benchmarks.infer_shapes import IMPORTED, NATIVE, hf_params, precisions, shape_facts


def test_hf_params_counts_the_matrices_of_a_transformers_model():
    for cls, config_cls in (
        ("LlamaForCausalLM", "LlamaConfig"),
        ("Qwen2ForCausalLM", "Qwen2Config"),
    ):
        fields = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=300, tie_word_embeddings=True)  # fmt: skip
        torch.manual_seed(0)
        model = getattr(transformers, cls)(getattr(transformers, config_cls)(**fields))
        matrices = sum(p.numel() for p in model.parameters() if p.dim() == 2)
        assert hf_params(fields) == matrices


def test_every_shape_has_every_precision_and_the_moe_pair_the_same_active_ffn():
    assert precisions("qwen0.5b")["fp32"] == "f32" and precisions("S")["fp32"] == "f32"
    assert shape_facts("llama1b")["vocab_size"] == 128256 and "llama1b" in IMPORTED
    moe, dense = NATIVE["moe"], NATIVE["moe-dense"]
    assert moe["n_experts_per_token"] * moe["expert_ffn_dim"] == dense["ffn_dim"]
    assert shape_facts("moe")["experts"] == (8, 2)
