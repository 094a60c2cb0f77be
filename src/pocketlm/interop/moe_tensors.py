"""Mixture-of-experts tensors and settings between Hugging Face checkpoints and PocketLM.

PocketLM stores one nn.Linear per expert matrix (model/moe.py, checkpoint/weights_spec.py):
`L.mlp.gate.weight` (router, [E, dim]), `L.mlp.experts.{e}.{gate,up,down}_proj.weight`,
`L.mlp.shared_expert.{gate,up,down}_proj.weight`, `L.mlp.shared_expert_gate.weight` ([1, dim]),
where L = `model.layers.{i}.`. What Hugging Face checkpoints hold (checked with
transformers 5.24 `save_pretrained` and `safetensors.safe_open`):

| where                               | Mixtral                                   | Qwen2-MoE / Qwen3-MoE        |
|-------------------------------------|-------------------------------------------|------------------------------|
| released (4.x) and 5.24 on disk     | `L.block_sparse_moe.gate.weight`,         | `L.mlp.gate.weight`,         |
|                                     | `L.block_sparse_moe.experts.{e}.w1/w3/w2  | `L.mlp.experts.{e}.gate_proj |
|                                     | .weight` (w1 gate, w3 up, w2 down)        | /up_proj/down_proj.weight`   |
| 5.x in memory (`state_dict()`), and | `L.mlp.gate.weight`,                      | the same                     |
| files saved from it directly        | `L.mlp.experts.gate_up_proj` [E, 2F, dim] |                              |
|                                     | (gate rows then up rows),                 |                              |
|                                     | `L.mlp.experts.down_proj` [E, dim, F]     |                              |

Qwen2-MoE adds `L.mlp.shared_expert.{gate,up,down}_proj.weight` and
`L.mlp.shared_expert_gate.weight`, the same names as PocketLM's. transformers 5 fuses the
per-expert tensors itself when it loads, so exporting per-expert names loads in 4.x and 5.x.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from pocketlm.common.errors import ArtifactError, ConfigError

LAYOUTS = ("block_sparse_moe", "mlp")  # Mixtral's names on disk | Qwen-MoE's (= PocketLM's)
_MIXTRAL_MATRIX = {"w1": "gate_proj", "w3": "up_proj", "w2": "down_proj"}
_LEGACY_GATE = re.compile(r"^(?P<layer>(?:.*\.)?layers\.\d+\.)block_sparse_moe\.gate\.weight$")
_LEGACY_EXPERT = re.compile(
    r"^(?P<layer>(?:.*\.)?layers\.\d+\.)block_sparse_moe\.experts\.(?P<e>\d+)\.(?P<w>w[123])\.weight$"
)
_FUSED = re.compile(
    r"^(?P<layer>(?:.*\.)?layers\.\d+\.)mlp\.experts\.(?P<which>gate_up_proj|down_proj)$"
)
_EXPERT = re.compile(
    r"^(?P<layer>(?:.*\.)?layers\.\d+\.)mlp\.experts\.(?P<e>\d+)\.(?P<m>gate_proj|up_proj|down_proj)\.weight$"
)
_ROUTER = re.compile(r"^(?P<layer>(?:.*\.)?layers\.\d+\.)mlp\.gate\.weight$")


def expert_tensors_from_hf(name: str, tensor: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """One checkpoint tensor -> PocketLM (name, tensor) pairs: a fused [E, ...] expert tensor
    splits into E per-expert matrices, Mixtral's block_sparse_moe names are renamed, anything
    else (Qwen's per-expert names, attention, norms) comes back unchanged as the one pair."""
    if m := _LEGACY_GATE.match(name):
        return [(f"{m['layer']}mlp.gate.weight", tensor)]
    if m := _LEGACY_EXPERT.match(name):
        return [(f"{m['layer']}mlp.experts.{m['e']}.{_MIXTRAL_MATRIX[m['w']]}.weight", tensor)]
    if m := _FUSED.match(name):
        if tensor.dim() != 3 or (m["which"] == "gate_up_proj" and tensor.shape[1] % 2):
            raise ArtifactError(
                f"tensor {name!r} has shape {list(tensor.shape)}; a fused expert tensor is "
                "[n_experts, 2 * expert_ffn_dim, dim] (gate_up_proj) or "
                "[n_experts, dim, expert_ffn_dim] (down_proj)"
            )
        prefix = f"{m['layer']}mlp.experts."
        if m["which"] == "down_proj":
            return [
                (f"{prefix}{e}.down_proj.weight", tensor[e].clone()) for e in range(len(tensor))
            ]
        ffn = tensor.shape[1] // 2
        out = []
        for e in range(len(tensor)):  # rows [0, F) are the gate's, [F, 2F) the up projection's
            out.append((f"{prefix}{e}.gate_proj.weight", tensor[e, :ffn].clone()))
            out.append((f"{prefix}{e}.up_proj.weight", tensor[e, ffn:].clone()))
        return out
    return [(name, tensor)]


def expert_tensors_to_hf(
    name: str, tensor: torch.Tensor, layout: str
) -> list[tuple[str, torch.Tensor]]:
    """Inverse of expert_tensors_from_hf for export: a PocketLM tensor -> the (name, tensor)
    pairs of the per-expert layout transformers' save_pretrained writes ("block_sparse_moe"
    for Mixtral, "mlp" for Qwen-MoE); names other than the router's and experts' pass through."""
    if layout not in LAYOUTS:
        raise ConfigError(f"MoE tensor layout {layout!r}: choose one of {', '.join(LAYOUTS)}")
    if layout == "mlp":
        return [(name, tensor)]
    if m := _ROUTER.match(name):
        return [(f"{m['layer']}block_sparse_moe.gate.weight", tensor)]
    if m := _EXPERT.match(name):
        w = {v: k for k, v in _MIXTRAL_MATRIX.items()}[m["m"]]
        return [(f"{m['layer']}block_sparse_moe.experts.{m['e']}.{w}.weight", tensor)]
    return [(name, tensor)]


def moe_config_from_hf(hf: dict[str, Any]) -> dict[str, Any]:
    """ModelConfig's MoE fields from a Mixtral / Qwen2-MoE / Qwen3-MoE config.json ({} for a
    dense model); ConfigError naming the field for what PocketLM does not run."""
    kind = hf.get("model_type")
    n_layers = hf.get("num_hidden_layers")
    # transformers maps num_experts <-> num_local_experts for Mixtral and Qwen3-MoE: released
    # Qwen3-MoE configs say num_experts, 5.24's save_pretrained writes num_local_experts.
    n_experts = hf.get("num_experts", hf.get("num_local_experts"))
    if kind == "mixtral":
        return {
            "n_experts": 8 if n_experts is None else n_experts,
            "n_experts_per_token": hf.get("num_experts_per_tok", 2),
            "expert_ffn_dim": hf.get("intermediate_size", 14336),
            "router": "softmax_topk",
        }
    if kind not in ("qwen2_moe", "qwen3_moe") or n_experts == 0:
        return {}  # dense (a Qwen-MoE config with no experts builds plain MLPs)
    # A layer is sparse iff it is not in mlp_only_layers and (i + 1) % decoder_sparse_step == 0
    # (transformers' Qwen2MoeDecoderLayer); PocketLM's MoE is in every layer or none.
    step = hf.get("decoder_sparse_step", 1) or 1
    dense_only = set(hf.get("mlp_only_layers") or ())
    dense = [i for i in range(n_layers or 0) if i in dense_only or (i + 1) % step]
    if dense:
        field = "mlp_only_layers" if dense_only else "decoder_sparse_step"
        raise ConfigError(
            f"config.json: {field} makes layers {dense} dense MLPs between sparse ones; PocketLM "
            f"runs a mixture of experts in every layer (needs mlp_only_layers [] and "
            f"decoder_sparse_step 1)"
        )
    # transformers' default for both classes is false (released Qwen3-MoE configs say true).
    norm_topk = hf.get("norm_topk_prob", False)
    out = {
        "n_experts": n_experts or (60 if kind == "qwen2_moe" else 128),
        "n_experts_per_token": hf.get("num_experts_per_tok", 4 if kind == "qwen2_moe" else 8),
        "expert_ffn_dim": hf.get("moe_intermediate_size", 1408 if kind == "qwen2_moe" else 768),
        "router": "softmax_topk" if norm_topk else "softmax_topk_raw",
    }
    if kind == "qwen2_moe":  # Qwen3-MoE has no shared expert
        out["shared_expert_ffn_dim"] = hf.get("shared_expert_intermediate_size", 5632)
    return out
