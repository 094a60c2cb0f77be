"""The model's normalisations: RMSNorm (Llama's, or Gemma's (1 + w) scale), LayerNorm (Phi-2, BERT)
and MobileBERT's NoNorm (an affine map only)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pocketlm.model.config import ModelConfig


class RMSNorm(nn.Module):
    """Root-mean-square norm computed in fp32, scaled by a learned weight.

    offset 0 (Llama): weight * x_normed cast back to the input dtype first, as Llama does (to
    the autocast dtype under autocast).
    offset 1 (Gemma): x_normed * (1 + weight) with the 1 added in fp32, then cast, as Gemma does
    (a bf16 weight plus one would round away the weight's low bits).
    """

    def __init__(self, dim: int, eps: float, offset: float = 0.0) -> None:
        super().__init__()
        self.eps = eps
        self.offset = offset
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Under autocast the output goes straight to the autocast dtype: every reader is a matmul
        # that would cast it anyway, each its own copy kept for backward (q, k, v: three).
        fast = autocast_dtype(x.device.type)
        dtype = fast or x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.offset:
            return (x32 * (self.offset + self.weight.float())).to(dtype)
        if fast is not None:  # scaled in fp32, then cast once (a product with an fp32 weight
            return (self.weight.float() * x32).to(fast)  # would promote back to fp32)
        return self.weight * x32.to(dtype)


def autocast_dtype(device_type: str) -> torch.dtype | None:
    """The autocast dtype in force on this device type, or None when autocast is off."""
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


class LayerNorm(nn.Module):
    """LayerNorm with a learned weight and bias, in the input's dtype (Phi-2's nn.LayerNorm)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.weight.to(x.dtype), self.bias.to(x.dtype)
        # the normalised width from the weight, a constant (ONNX export traces x.shape as data)
        return F.layer_norm(x, weight.shape, weight, bias, self.eps)


class AffineNorm(nn.Module):
    """No normalisation, a learned scale and shift: x * weight + bias (MobileBERT's NoNorm)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight.to(x.dtype) + self.bias.to(x.dtype)


def make_norm(config: ModelConfig, dim: int) -> nn.Module:
    """The config's norm over `dim` features (norm_kind, norm_offset, norm_eps)."""
    if config.norm_kind == "layer":
        return LayerNorm(dim, config.norm_eps)
    if config.norm_kind == "affine":
        return AffineNorm(dim)
    return RMSNorm(dim, config.norm_eps, config.norm_offset)
