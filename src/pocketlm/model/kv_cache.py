"""The KV cache: a value the caller owns and passes into `CausalLM.forward`, never model state.

Keys and values live in preallocated tensors (n_layers, batch, n_kv_heads, max_len, head_dim);
`lengths` (host-side, one int per row) says how many positions each row holds. Rows may have
different lengths (batched prompts, continuous batching): attention masks by position.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pocketlm.common.errors import PocketLMError
from pocketlm.model.config import ModelConfig


@dataclass
class KVCache:
    """Preallocated keys/values plus the filled length of each batch row."""

    k: torch.Tensor  # (n_layers, batch, n_kv_heads, max_len, head_dim)
    v: torch.Tensor  # (n_layers, batch, n_kv_heads, max_len, head_dim)
    lengths: list[int]

    @classmethod
    def allocate(
        cls,
        config: ModelConfig,
        batch: int,
        max_len: int | None = None,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> KVCache:
        """An empty cache for `batch` rows of up to `max_len` (default: the model's context) positions."""
        max_len = max_len or config.max_seq_len
        shape = (config.n_layers, batch, config.n_kv_heads, max_len, config.resolved_head_dim)
        return cls(
            torch.zeros(shape, device=device, dtype=dtype),
            torch.zeros(shape, device=device, dtype=dtype),
            [0] * batch,
        )

    @property
    def batch(self) -> int:
        return self.k.shape[1]

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    def uniform_length(self) -> int | None:
        """The common length when every row holds the same number of positions, else None."""
        first = self.lengths[0]
        return first if all(n == first for n in self.lengths) else None

    def positions(self, n_new: int, device: torch.device) -> torch.Tensor:
        """(batch, n_new) int64 positions of the tokens about to be written."""
        if max(self.lengths) + n_new > self.max_len:
            raise PocketLMError(
                f"KV cache full: {max(self.lengths)} + {n_new} tokens exceed its {self.max_len} positions (the context length)"
            )
        start = torch.tensor(self.lengths, dtype=torch.long, device=device)[:, None]  # (batch, 1)
        return start + torch.arange(n_new, device=device)[None, :]

    def write(
        self,
        layer: int,
        k_new: torch.Tensor,
        v_new: torch.Tensor,
        positions: torch.Tensor,
        uniform: int | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store new keys/values (batch, n_kv_heads, T, head_dim) and return the filled prefix to attend over."""
        n_new = k_new.shape[2]
        if uniform is not None:
            self.k[layer, :, :, uniform : uniform + n_new] = k_new
            self.v[layer, :, :, uniform : uniform + n_new] = v_new
            end = uniform + n_new
        else:
            rows = torch.arange(self.batch, device=positions.device)[:, None]  # (batch, 1)
            # (batch, max_len, kv_heads, head_dim) views: index rows and positions together.
            self.k[layer].transpose(1, 2)[rows, positions] = k_new.transpose(1, 2)
            self.v[layer].transpose(1, 2)[rows, positions] = v_new.transpose(1, 2)
            end = max(self.lengths) + n_new
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def advance(self, n_new: int) -> None:
        """Mark `n_new` more positions filled in every row (called once per forward)."""
        self.lengths = [n + n_new for n in self.lengths]

    def reset_row(self, row: int, length: int = 0) -> None:
        """Forget a row beyond `length` positions (stale entries are masked by position)."""
        self.lengths[row] = length

    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() * 2
