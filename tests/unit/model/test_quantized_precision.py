"""Quantized layers under every activation precision the rule can pick: integer weights and
their scales stay as stored, the forward runs in the activations' dtype, logits stay close."""

from __future__ import annotations

import copy

import pytest
import torch

from pocketlm.model.config import ModelConfig
from pocketlm.model.quantized import QuantizedEmbedding, QuantizedLinear, quantize_modules
from pocketlm.model.transformer import build_model

CONFIG = ModelConfig(vocab_size=96, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=32)


@pytest.mark.parametrize("scheme", ["int8", "int4"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_quantized_model_runs_in_any_activation_dtype(scheme, dtype):
    model = quantize_modules(build_model(CONFIG, seed=3), scheme)
    ids = torch.randint(0, CONFIG.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = model(ids).float()  # fp32 activations
        cast = copy.deepcopy(model).to(dtype)
        logits = cast(ids)
    assert logits.dtype == dtype
    for module in cast.modules():
        if isinstance(module, QuantizedLinear | QuantizedEmbedding):
            assert module.qweight.dtype in (torch.int8, torch.uint8)
            assert module.scales.dtype == (torch.float32 if scheme == "int8" else torch.float16)
    tolerance = 1e-5 if dtype == torch.float32 else 0.05  # bf16 keeps 8 bits of mantissa
    scale = reference.abs().max()
    assert (logits.float() - reference).abs().max() <= tolerance * max(1.0, float(scale))
