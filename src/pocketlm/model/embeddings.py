"""The model's input embeddings: token embeddings and, for encoders, learned absolute positions,
token types (segments), a norm over their sum and ALBERT's projection from a narrower embedding
width, or MobileBERT's trigram input (each token's embedding beside its neighbours', projected). The model (transformer.py) owns the modules, so their tensors are `model.embed_positions`,
`model.embed_types`, `model.embed_norm` and `model.embed_proj` beside `model.embed_tokens`.
"""

from __future__ import annotations

import torch
from torch import nn

from pocketlm.model.config import ModelConfig
from pocketlm.model.norms import make_norm


def embedding_modules(config: ModelConfig) -> dict[str, nn.Module]:
    """The encoder options' embedding modules by attribute name (none for a plain decoder)."""
    width = config.embed_sum_dim
    modules: dict[str, nn.Module] = {}
    if config.position_kind == "learned":
        modules["embed_positions"] = nn.Embedding(config.max_seq_len, width)
    if config.type_vocab_size:
        modules["embed_types"] = nn.Embedding(config.type_vocab_size, width)
    if config.embed_norm:
        modules["embed_norm"] = make_norm(config, width)
    if config.embed_proj_in:
        modules["embed_proj"] = nn.Linear(config.embed_proj_in, config.dim)
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
    With embed_trigram the projection comes first, then positions and types, in MobileBERT's
    order; a sequence's (document's) first and last tokens have zeros for the missing neighbour.
    """
    if token_type_ids is not None and not config.type_vocab_size:
        raise ValueError("token_type_ids given, but the model has no token-type embeddings")
    x = owner.embed_tokens(input_ids)  # (B, T, E)
    if config.embed_scale != 1.0:
        # In the model's dtype, as Gemma does: sqrt(dim) rounded to fp32, then to the dtype.
        x = x * torch.tensor(config.embed_scale, dtype=torch.float32).to(x.dtype)
    if config.embed_trigram:
        x = owner.embed_proj(trigrams(x, positions))  # (B, T, dim)
        if config.position_kind == "learned":
            x = x + owner.embed_positions(positions)
        if config.type_vocab_size:
            x = x + _types(owner, token_type_ids)
    else:
        if config.type_vocab_size:
            x = x + _types(owner, token_type_ids)
        if config.position_kind == "learned":
            x = x + owner.embed_positions(positions)  # (B or 1, T, E)
    if config.embed_norm:
        x = owner.embed_norm(x)
    if config.embed_dim and not config.embed_trigram:
        x = owner.embed_proj(x)  # (B, T, dim)
    return x


def _types(owner: nn.Module, token_type_ids: torch.Tensor | None) -> torch.Tensor:
    """Token-type embeddings (B, T, width), or type 0's row (width,) when none are given."""
    if token_type_ids is None:
        return owner.embed_types.weight[0]  # type 0 everywhere: one row, broadcast
    return owner.embed_types(token_type_ids)


def trigrams(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """(B, T, E) token embeddings -> (B, T, 3E): the next token's, this one's and the previous
    one's side by side, zeros where a neighbour is outside the token's document (positions
    (B or 1, T) restart at 0 with each document)."""
    zero = torch.zeros_like(x[:, :1])  # (B, 1, E)
    following = torch.cat([x[:, 1:], zero], dim=1)  # (B, T, E)
    preceding = torch.cat([zero, x[:, :-1]], dim=1)  # (B, T, E)
    pos = positions.expand(x.shape[0], -1)  # (B, T)
    has_next = torch.zeros_like(pos, dtype=torch.bool)
    has_next[:, :-1] = pos[:, 1:] == pos[:, :-1] + 1  # the next token continues the document
    following = following * has_next[..., None].to(x.dtype)
    preceding = preceding * (pos > 0)[..., None].to(x.dtype)
    return torch.cat([following, x, preceding], dim=2)
