"""Several LoRA adapters on one base model at inference, chosen per batch row: each row of a
forward pass runs the base plus its own adapter (or none), so one continuous batch mixes
requests for different adapters.

`apply_adapters` wraps every linear some adapter targets in a MultiLoRALinear; an AdapterRows
object shared by all of them says, before each forward, which adapter each batch row uses.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from pocketlm.common.errors import ArtifactError, ConfigError

NO_ADAPTER = -1  # a row that runs the base alone


class AdapterRows:
    """Which adapter (index, or NO_ADAPTER) each batch row of the next forward pass uses."""

    def __init__(self) -> None:
        self._rows: list[int] = []
        self._index: dict[tuple[int, str], torch.Tensor | None] = {}

    @property
    def rows(self) -> list[int]:
        return self._rows

    @rows.setter
    def rows(self, rows: Sequence[int]) -> None:
        self._rows, self._index = list(rows), {}

    def index(self, adapter: int, device: torch.device) -> torch.Tensor | None:
        """The batch rows that use `adapter` (None: none; computed once per set of rows, not
        once per layer)."""
        key = (adapter, str(device))
        if key not in self._index:
            picked = [i for i, r in enumerate(self._rows) if r == adapter]
            self._index[key] = torch.tensor(picked, device=device) if picked else None
        return self._index[key]


@dataclass(frozen=True)
class AdapterWeights:
    """One adapter as served: its scale and `<module path>.lora_{A,B}.weight` tensors."""

    scale: float
    tensors: Mapping[str, torch.Tensor]  # A: (rank, in), B: (out, rank)
    where: str  # the adapter's directory, for errors


class MultiLoRALinear(nn.Module):
    """base_layer(x) + scale_k * B_k(A_k(x)) on the batch rows that use adapter k."""

    def __init__(self, base_layer: nn.Module, selector: AdapterRows) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.selector = selector
        self.deltas: dict[int, tuple[torch.Tensor, torch.Tensor, float]] = {}  # k: (A, B, scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)  # (rows, ..., out)
        rows = self.selector.rows
        if not self.deltas or not rows:
            return y
        if len(rows) != x.shape[0]:
            raise RuntimeError(f"{len(rows)} adapter rows for a batch of {x.shape[0]}")
        for k, (a, b, scale) in self.deltas.items():
            index = self.selector.index(k, x.device)
            if index is None:
                continue
            if len(index) == len(rows):  # every row: no gather and scatter
                return y + scale * ((x.to(a.dtype) @ a.t()) @ b.t()).to(y.dtype)
            part = x.index_select(0, index).to(a.dtype)  # (n, ..., in)
            delta = (part @ a.t()) @ b.t()  # (n, ..., rank) -> (n, ..., out)
            y = y.index_add(0, index, delta.to(y.dtype), alpha=scale)
        return y


def apply_adapters(
    model: nn.Module,
    adapters: Sequence[AdapterWeights],
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
) -> AdapterRows:
    """Module surgery in place: wrap the linears the adapters target (adapter k: index k of
    `adapters`) in MultiLoRALinear; returns the AdapterRows that picks each row's adapter."""
    if any(getattr(m, "n_experts", 0) for m in model.modules()):
        raise ConfigError("adapters cannot share a batch on a mixture-of-experts model")
    selector = AdapterRows()
    for k, adapter in enumerate(adapters):
        paths = sorted({n.rsplit(".lora_", 1)[0] for n in adapter.tensors if ".lora_" in n})
        if not paths or len(paths) * 2 != len(adapter.tensors):
            raise ArtifactError(f"{adapter.where}: not a set of lora_A / lora_B tensors")
        for path in paths:
            module = model.get_submodule(path)
            if not isinstance(module, MultiLoRALinear):
                if not isinstance(module, nn.Linear):
                    raise ArtifactError(f"{adapter.where}: {path} is not a linear layer")
                parent_path, _, leaf = path.rpartition(".")
                parent = model.get_submodule(parent_path) if parent_path else model
                module = MultiLoRALinear(module, selector)
                setattr(parent, leaf, module)
            a = adapter.tensors[f"{path}.lora_A.weight"].to(device=device, dtype=dtype)
            b = adapter.tensors[f"{path}.lora_B.weight"].to(device=device, dtype=dtype)
            base = module.base_layer
            if a.shape[1] != base.in_features or b.shape[0] != base.out_features:
                raise ArtifactError(f"{adapter.where}: {path}'s A/B do not fit the layer")
            module.deltas[k] = (a, b, adapter.scale)
    return selector
