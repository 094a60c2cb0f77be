"""A model made of some of another's layers: the student of DistilBERT-style distillation (every
second layer) and depth pruning. Module surgery by rebuilding: a fresh model of the smaller
config takes the kept layers' tensors, renumbered, and every tensor outside the layers."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

from pocketlm.model.transformer import CausalLM, materialize

_LAYER = "model.layers."


def every_other_layer(n_layers: int) -> list[int]:
    """The layers DistilBERT keeps: 0, 2, 4, … (half the depth, rounded up)."""
    return list(range(0, n_layers, 2))


def select_layers(model: CausalLM, keep: Sequence[int]) -> CausalLM:
    """A new model of the kept layers (in the order given, renumbered from 0) and all the other
    tensors (embeddings, final norm, heads) of `model`, copied; per-layer options (layer_types)
    follow their layers; a model of shared layers keeps its one layer, applied len(keep) times.
    The source model is left as it was."""
    config = model.config
    keep = list(keep)
    if not keep or any(not 0 <= i < config.n_layers for i in keep) or len(set(keep)) < len(keep):
        raise ValueError(
            f"layers to keep must be distinct indices in 0..{config.n_layers - 1}, got {keep}"
        )
    changes: dict = {"n_layers": len(keep)}
    if config.layer_types:
        changes["layer_types"] = tuple(config.layer_types[i] for i in keep)
    with torch.device("meta"):
        small = CausalLM(dataclasses.replace(config, **changes))
    small = materialize(small)  # uninitialised: every tensor is loaded below
    # shared layers (ALBERT) store one layer that every depth applies: it stays, whichever depths
    renumber = {0: 0} if config.shared_layers else {old: new for new, old in enumerate(keep)}
    state: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        if not name.startswith(_LAYER):
            state[name] = tensor
            continue
        index, rest = name[len(_LAYER) :].split(".", 1)
        if int(index) in renumber:
            state[f"{_LAYER}{renumber[int(index)]}.{rest}"] = tensor
    small.load_state_dict(state, strict=True)  # a quantized model's tensors do not fit: refused
    first = next(model.parameters())
    return small.to(device=first.device, dtype=first.dtype).train(model.training)
