"""Tiny random Hugging Face models of every dense family, built offline by `transformers` and saved
in both config styles: transformers 5's own save_pretrained (rope_parameters, dtype, layer_types)
and the transformers 4.x spelling released checkpoints use (rope_theta, rope_scaling,
partial_rotary_factor, torch_dtype, Gemma 3's rope_local_base_freq / sliding_window_pattern).

Norms, biases and weights are perturbed so a missing (1 + w), a dropped bias or a swapped name
changes the logits; windows (8) and original contexts (16) are shorter than the test prompts.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

STYLES = ("v5", "v4")
COMMON = dict(
    vocab_size=512, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    bos_token_id=1, eos_token_id=2, pad_token_id=0,
)  # fmt: skip
LONG = [1.0, 1.25, 1.5, 2.0]  # longrope factors, rotary_dim 8

# name -> (config class, model class, config keywords)
FAMILIES = {
    "llama3": ("LlamaConfig", "LlamaForCausalLM", dict(
        attention_bias=True, mlp_bias=True, tie_word_embeddings=False,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                         "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 16})),
    "smollm2": ("LlamaConfig", "LlamaForCausalLM", dict(
        tie_word_embeddings=True, rope_parameters={"rope_type": "default", "rope_theta": 100000.0})),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(
        tie_word_embeddings=True, use_sliding_window=True, sliding_window=8, max_window_layers=1)),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(head_dim=32, tie_word_embeddings=False)),
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(sliding_window=8)),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", dict(
        tie_word_embeddings=True, original_max_position_embeddings=16, sliding_window=12,
        rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0,
                         "partial_rotary_factor": 0.5, "short_factor": LONG,
                         "long_factor": [2 * f for f in LONG]})),
    "phi2": ("PhiConfig", "PhiForCausalLM", dict(
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                         "partial_rotary_factor": 0.5})),
    "gemma": ("GemmaConfig", "GemmaForCausalLM", dict(head_dim=16, num_key_value_heads=1)),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", dict(
        head_dim=16, sliding_window=8, query_pre_attn_scalar=24, attn_logit_softcapping=5.0,
        final_logit_softcapping=10.0)),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", dict(
        head_dim=16, sliding_window=8, query_pre_attn_scalar=24, final_logit_softcapping=10.0,
        layer_types=["sliding_attention", "full_attention"],
        rope_parameters={"full_attention": {"rope_type": "linear", "factor": 2.0,
                                            "rope_theta": 1000000.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}})),
    "mixtral": ("MixtralConfig", "MixtralForCausalLM", dict(
        num_local_experts=4, num_experts_per_tok=2, sliding_window=12)),
    "qwen2_moe": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM", dict(
        num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
        shared_expert_intermediate_size=64, tie_word_embeddings=True)),
    "qwen3_moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM", dict(
        num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, head_dim=16,
        norm_topk_prob=True)),
}  # fmt: skip
DENSE = [f for f in FAMILIES if f not in ("mixtral", "qwen2_moe", "qwen3_moe")]


def build_hf_model(name: str, seed: int = 0, *, model_cls: str | None = None, **overrides):
    """A tiny random transformers model of family `name` (config keywords `overrides` on top of
    the family's; model_cls: another class of the family, e.g. its *ForSequenceClassification),
    perturbed, in eval mode, fp32."""
    import transformers

    config_cls, causal_cls, extra = FAMILIES[name]
    config = getattr(transformers, config_cls)(**{**COMMON, **extra, **overrides})
    torch.manual_seed(seed)
    model = getattr(transformers, model_cls or causal_cls)(config).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    embed_scale = config.hidden_size**0.5 if name.startswith("gemma") else 1.0
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "norm" in pname:
                p.add_(0.3 * torch.randn(p.shape, generator=gen))
            elif pname.endswith(".bias"):
                p.copy_(0.5 * torch.randn(p.shape, generator=gen))
            else:
                # Gemma scales embeddings by sqrt(hidden_size): keep them from drowning the
                # layers' outputs (the model would only echo its last token)
                std = 0.15
                if "embed_tokens" in pname:
                    std /= embed_scale**0.5
                elif pname.endswith(("o_proj.weight", "down_proj.weight")):
                    std *= embed_scale**0.5
                p.copy_(std * torch.randn(p.shape, generator=gen))
    return model


def save_family(name: str, root: Path, tokenizer_dir: Path) -> dict[str, Path]:
    """{style: folder} of one model saved by save_pretrained (v5) and rewritten as 4.x (v4),
    each with the tokenizer files; the weights are the same file."""
    model = build_hf_model(name)
    v5 = root / f"{name}-v5"
    model.save_pretrained(v5)
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copyfile(tokenizer_dir / f, v5 / f)
    v4 = root / f"{name}-v4"
    shutil.copytree(v5, v4)
    config = json.loads((v5 / "config.json").read_text())
    (v4 / "config.json").write_text(json.dumps(as_v4_config(config), indent=2))
    return {"v5": v5, "v4": v4}


def as_v4_config(config: dict) -> dict:
    """A transformers 5 config.json as transformers 4.x wrote it for released checkpoints."""
    c = dict(config)
    c["torch_dtype"] = c.pop("dtype")
    c["transformers_version"] = "4.46.0"
    params = c.pop("rope_parameters")
    if "full_attention" in params:  # Gemma 3
        full, local = dict(params["full_attention"]), params["sliding_attention"]
        c["rope_theta"] = full.pop("rope_theta")
        c["rope_local_base_freq"] = local["rope_theta"]
        c["rope_scaling"] = None if full["rope_type"] == "default" else full
        types = c.pop("layer_types")
        c.pop("_sliding_window_pattern", None)
        c["sliding_window_pattern"] = types.index("full_attention") + 1
    else:
        params = dict(params)
        c["rope_theta"] = params.pop("rope_theta")
        if "partial_rotary_factor" in params:
            c["partial_rotary_factor"] = params.pop("partial_rotary_factor")
        params.pop("original_max_position_embeddings", None) if c["model_type"] == "phi3" else None
        kind = params.pop("rope_type")
        c["rope_scaling"] = None if kind == "default" else {"type": kind, **params}
        if c["model_type"] in ("qwen2", "gemma2"):
            c.pop("layer_types")  # derived from max_window_layers / the alternating default
    if c["model_type"] == "gemma":
        c["hidden_act"] = "gelu"  # Gemma 1's released configs: read as the tanh GELU
    return c
