"""Activation checkpointing recomputes each layer in backward: the same loss and gradients as
keeping the activations (with LoRA and in a classifier too), and no recomputation at inference."""

from __future__ import annotations

import pytest
import torch

from pocketlm.model.config import ModelConfig
from pocketlm.model.lora import apply_lora
from pocketlm.model.transformer import build_model

CONFIG = dict(vocab_size=96, dim=32, n_layers=3, n_heads=4, n_kv_heads=2, max_seq_len=32)


def _grads(model, ids, targets, checkpoint: bool) -> tuple[float, dict[str, torch.Tensor]]:
    model.checkpoint_activations = checkpoint
    model.zero_grad(set_to_none=True)
    loss = model(ids, targets=targets)
    loss.backward()
    return float(loss), {
        n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None
    }


@pytest.mark.parametrize("lora", [False, True])
def test_recomputed_layers_give_the_same_loss_and_gradients(lora):
    model = build_model(ModelConfig(**CONFIG), seed=0).train()
    if lora:
        apply_lora(model, 4, 8.0, "q_proj,v_proj,down_proj")
        for name, p in model.named_parameters():
            p.requires_grad_("lora_" in name)
    ids = torch.randint(0, 96, (2, 16), generator=torch.Generator().manual_seed(0))
    targets = torch.roll(ids, -1, dims=1)
    loss, grads = _grads(model, ids, targets, checkpoint=False)
    loss_ckpt, grads_ckpt = _grads(model, ids, targets, checkpoint=True)
    assert loss == pytest.approx(loss_ckpt, abs=1e-6)
    assert grads.keys() == grads_ckpt.keys() and grads
    for name in grads:
        torch.testing.assert_close(grads_ckpt[name], grads[name], atol=1e-6, rtol=1e-5)


def test_checkpointing_keeps_fewer_tensors_for_backward():
    """Counted by the autograd saved-tensor hooks: only the layers' inputs stay (plus the head's)."""
    model = build_model(ModelConfig(**CONFIG), seed=0).train()
    ids = torch.randint(0, 96, (2, 16))

    def saved_bytes(checkpoint: bool) -> int:
        model.checkpoint_activations = checkpoint
        total = 0

        def pack(t):
            nonlocal total
            total += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(ids, targets=torch.roll(ids, -1, dims=1))
        return total

    assert saved_bytes(True) < 0.5 * saved_bytes(False)


def test_inference_and_cached_decoding_never_recompute():
    model = build_model(ModelConfig(**CONFIG), seed=0).eval()
    ids = torch.randint(0, 96, (1, 8))
    plain = model(ids)
    model.checkpoint_activations = True
    with torch.no_grad():
        torch.testing.assert_close(model(ids), plain)
