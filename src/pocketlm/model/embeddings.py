"""The model's input embeddings: token embeddings and, for encoders, learned absolute positions,
token types (segments), a norm over their sum and ALBERT's projection from a narrower embedding
width. The model (transformer.py) owns the modules, so their tensors are `model.embed_positions`,
`model.embed_types`, `model.embed_norm` and `model.embed_proj` beside `model.embed_tokens`.
"""

from __future__ import annotations

import torch
from torch import nn

from pocketlm.model.config import ModelConfig
from pocketlm.model.norms import make_norm


def embedding_modules(config: ModelConfig) -> dict[str, nn.Module]:
    """The encoder options' embedding modules by attribute name (none for a plain decoder)."""
    width = config.resolved_embed_dim
    modules: dict[str, nn.Module] = {}
    if config.position_kind == "learned":
        modules["embed_positions"] = nn.Embedding(config.max_seq_len, width)
    if config.type_vocab_size:
        modules["embed_types"] = nn.Embedding(config.type_vocab_size, width)
    if config.embed_norm:
        modules["embed_norm"] = make_norm(config, width)
    if config.embed_dim:
        modules["embed_proj"] = nn.Linear(width, config.dim)
    return modules


def embed(
    owner: nn.Module,
    config: ModelConfig,
    input_ids: torch.Tensor,
    positions: torch.Tensor | None,
    token_type_ids: torch.Tensor | None,
) -> torch.Tensor:
    """input_ids (B, T) -> (B, T, dim): tokens (times embed_scale), + token types, + learned
    positions (B or 1, T), then the embedding norm and projection, each where the config has it.

    `owner` holds the modules (embed_tokens and those of embedding_modules); the sum is taken in
    BERT's order (tokens + types, then positions) so an imported encoder rounds as it does.
    """
    x = owner.embed_tokens(input_ids)  # (B, T, E)
    if config.embed_scale != 1.0:
        # In the model's dtype, as Gemma does: sqrt(dim) rounded to fp32, then to the dtype.
        x = x * torch.tensor(config.embed_scale, dtype=torch.float32).to(x.dtype)
    if token_type_ids is not None and not config.type_vocab_size:
        raise ValueError("token_type_ids given, but the model has no token-type embeddings")
    if config.type_vocab_size:
        if token_type_ids is None:
            x = x + owner.embed_types.weight[0]  # type 0 everywhere: one row, broadcast
        else:
            x = x + owner.embed_types(token_type_ids)
    if config.position_kind == "learned":
        x = x + owner.embed_positions(positions)  # (B or 1, T, E)
    if config.embed_norm:
        x = owner.embed_norm(x)
    if config.embed_dim:
        x = owner.embed_proj(x)  # (B, T, dim)
    return x
