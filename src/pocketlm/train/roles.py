"""Parameter roles from a model's structure (module types and shapes, never parameter names)."""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from pocketlm.train.task import Role


def roles_by_structure(
    model: nn.Module, *, heads: Iterable[nn.Module] = (), frozen: Iterable[nn.Module] = ()
) -> dict[str, Role]:
    """Every trainable parameter's role: embedding tables EMBEDDING, 1-D tensors (norm scales,
    biases) NORM, weights of the modules in `heads` HEAD, other matrices HIDDEN. Parameters of
    modules in `frozen` and parameters that do not require grad are left out (frozen).

    A tied head shares the embedding's tensor: it is listed once, as EMBEDDING.
    """
    head_params = {id(p) for m in heads for p in m.parameters(recurse=False)}
    frozen_params = {id(p) for m in frozen for p in m.parameters()}
    embedding_params = {
        id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding | nn.EmbeddingBag)
    }
    roles: dict[str, Role] = {}
    for name, param in model.named_parameters():  # tied tensors appear once
        if not param.requires_grad or id(param) in frozen_params:
            continue
        if id(param) in embedding_params:
            roles[name] = Role.EMBEDDING
        elif param.ndim < 2:
            roles[name] = Role.NORM
        elif id(param) in head_params:
            roles[name] = Role.HEAD
        else:
            roles[name] = Role.HIDDEN
    return roles
