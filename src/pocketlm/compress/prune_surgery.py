"""Structured pruning by surgery: a fresh model of the pruned config takes slices of the
original's tensors (the kept layers via model/layer_select, then the kept attention groups, FFN
channels and hidden channels of each tensor). A tied LM head is the embedding, sliced once."""

from __future__ import annotations

import math

import torch

from pocketlm.compress.prune_plan import PruneChoice, PruneSizes, pruned_config, query_heads
from pocketlm.model.layer_select import select_layers
from pocketlm.model.transformer import CausalLM, materialize

_LAYER = "model.layers."
# per-layer tensors: what their rows (dim 0) and columns (dim 1) index
_ROWS_COLS = {
    "self_attn.q_proj": ("q", "dim"),
    "self_attn.k_proj": ("kv", "dim"),
    "self_attn.v_proj": ("kv", "dim"),
    "self_attn.o_proj": ("dim", "q"),
    "mlp.gate_proj": ("ffn", "dim"),
    "mlp.up_proj": ("ffn", "dim"),
    "mlp.down_proj": ("dim", "ffn"),
}
_DIM_NORMS = ("input_layernorm", "post_attention_layernorm", "attn_output_norm", "ffn_output_norm")


def prune_model(model: CausalLM, choice: PruneChoice) -> CausalLM:
    """A new model keeping `choice`'s layers, attention groups, FFN channels and hidden channels
    of `model` (left as it was); every layer of the result has the same sizes."""
    config = model.config
    sizes = PruneSizes(
        len(choice.layers),
        len(choice.kv_groups[0]),
        len(choice.ffn_channels[0]),
        len(choice.dim_channels),
    )
    if any(len(g) != sizes.n_kv_heads for g in choice.kv_groups) or any(
        len(f) != sizes.ffn_dim for f in choice.ffn_channels
    ):
        raise ValueError("every kept layer must keep as many attention groups and FFN channels")
    new_config = pruned_config(config, sizes, choice.layers)
    deep = select_layers(model, choice.layers)  # renumbered 0..n-1, as choice's per-layer lists
    dim_keep = torch.tensor(choice.dim_channels, dtype=torch.long)
    # RMSNorm over fewer channels: eps and the weights rescale so zero channels change nothing
    scale = math.sqrt(config.dim / sizes.dim)
    group = config.n_heads // config.n_kv_heads
    hd = config.resolved_head_dim
    state: dict[str, torch.Tensor] = {}
    for name, tensor in deep.state_dict().items():
        if name.startswith(_LAYER):
            index, rest = name[len(_LAYER) :].split(".", 1)
            i = int(index)
            keeps = {
                "dim": dim_keep,
                "q": _head_rows(query_heads(choice.kv_groups[i], group), hd),
                "kv": _head_rows(choice.kv_groups[i], hd),
                "ffn": torch.tensor(choice.ffn_channels[i], dtype=torch.long),
            }
            module, kind = rest.rsplit(".", 1)
            if module in _ROWS_COLS:
                rows, cols = _ROWS_COLS[module]
                tensor = tensor.index_select(0, keeps[rows])
                if kind == "weight":
                    tensor = tensor.index_select(1, keeps[cols])
            elif module in _DIM_NORMS:
                tensor = _norm_slice(tensor, kind, dim_keep, scale, config.norm_offset)
        elif name == "model.norm.weight" or name == "model.norm.bias":
            tensor = _norm_slice(
                tensor, name.rsplit(".", 1)[1], dim_keep, scale, config.norm_offset
            )
        elif name in ("model.embed_tokens.weight", "lm_head.weight"):
            tensor = tensor.index_select(1, dim_keep)  # (vocab, dim): columns are hidden channels
        state[name] = tensor.clone()
    with torch.device("meta"):
        small = CausalLM(new_config)
    small = materialize(small)  # uninitialised: every tensor is loaded below
    small.load_state_dict(state, strict=True)
    first = next(model.parameters())
    return small.to(device=first.device, dtype=first.dtype).train(model.training)


def _head_rows(heads: list[int] | tuple[int, ...], head_dim: int) -> torch.Tensor:
    """Row indices of whole heads in a (heads * head_dim, ·) projection."""
    return torch.tensor(
        [h * head_dim + j for h in heads for j in range(head_dim)], dtype=torch.long
    )


def _norm_slice(
    tensor: torch.Tensor, kind: str, keep: torch.Tensor, scale: float, offset: float
) -> torch.Tensor:
    """A norm's kept channels; an RMSNorm weight (offset + w) times sqrt(dim / new_dim)."""
    kept = tensor.index_select(0, keep)
    if kind == "weight" and scale != 1.0:
        kept = ((kept.double() + offset) * scale - offset).to(tensor.dtype)
    return kept
