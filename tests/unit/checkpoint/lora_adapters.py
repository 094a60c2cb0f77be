"""A LoRA adapter artifact made without training (random B), for tests of what uses adapters."""

from __future__ import annotations

from pathlib import Path

import torch

from pocketlm.checkpoint.adapted_model import lora_adapter_config
from pocketlm.checkpoint.adapters import save_adapter
from pocketlm.checkpoint.model_io import load_model
from pocketlm.model.lora import LoRAConfig, apply_lora, lora_modules, lora_state_dict, quantize_base

IDS = torch.tensor([[1, 5, 9, 33, 2, 77, 14, 3, 250, 8]])


def make_adapter(
    base: Path, out: Path, lora: LoRAConfig, seed: int = 0
) -> tuple[Path, torch.Tensor]:
    """An adapter artifact with random B (a trained-looking adapter), and the adapted model's
    fp32 logits on IDS computed in memory."""
    model = load_model(base).model
    quantize_base(model, lora)
    targets = apply_lora(model, lora.rank, lora.alpha, lora.targets, rslora=lora.rslora, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for module in lora_modules(model).values():
            module.lora_B.weight.copy_(torch.randn(module.lora_B.weight.shape, generator=g) * 0.1)
        logits = model(IDS)
    path = save_adapter(
        out, lora_state_dict(model), base, config=lora_adapter_config(lora, targets)
    )
    return path, logits
