"""Validation loss and bits per byte over a token split.

bits per byte = (sum of nats over predicted text tokens) / ln 2 / (bytes those tokens stand for).
Special tokens (<bos>, <eos>, ...) stand for no bytes and are left out of both sums, so the
number compares across tokenizers; `loss` is the plain mean cross-entropy over all targets.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from pocketlm.data.loader import eval_windows
from pocketlm.data.token_shards import TokenSplit
from pocketlm.tokenizer.tokenizer import Tokenizer


@dataclass(frozen=True)
class BpbResult:
    """Mean loss (nats/token), bits per byte and what they were measured on."""

    loss: float
    bpb: float
    tokens: int
    bytes: int


def token_byte_lengths(tokenizer: Tokenizer, vocab_size: int | None = None) -> np.ndarray:
    """(vocab,) bytes each token id stands for; 0 for special and unused ids."""
    size = max(vocab_size or 0, tokenizer.vocab_size)
    lengths = np.zeros(size, dtype=np.int64)
    for token_id in range(tokenizer.vocab_size):
        if token_id in tokenizer.special_ids:
            continue
        piece = tokenizer.backend.id_to_token(token_id)
        # Byte-level BPE spells each byte as one character of its 256-symbol alphabet.
        lengths[token_id] = len(piece) if piece is not None else 0
    return lengths


@torch.no_grad()
def evaluate_bpb(
    model: torch.nn.Module,
    split: TokenSplit,
    byte_lengths: np.ndarray,
    *,
    ctx: int,
    batch_size: int = 8,
    max_tokens: int = 65536,
    device: torch.device | str = "cpu",
    autocast: contextlib.AbstractContextManager | None = None,
) -> BpbResult:
    """Evaluate on consecutive windows from the start of the split (deterministic)."""
    was_training = model.training
    model.eval()
    lengths = torch.from_numpy(byte_lengths).to(device)
    nats_all = torch.zeros((), dtype=torch.float64, device=device)
    nats_text = torch.zeros((), dtype=torch.float64, device=device)
    n_bytes = torch.zeros((), dtype=torch.int64, device=device)
    n_tokens = 0
    for x_np, y_np in eval_windows(split, batch_size, ctx, max_tokens):
        x = torch.from_numpy(x_np).to(device)
        y = torch.from_numpy(y_np).to(device)
        with autocast or contextlib.nullcontext():
            logits = model(x)
        losses = F.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="none"
        )  # (B*T,)
        target_bytes = lengths[y.reshape(-1)]
        nats_all += losses.sum(dtype=torch.float64)
        nats_text += (losses * (target_bytes > 0)).sum(dtype=torch.float64)
        n_bytes += target_bytes.sum()
        n_tokens += y.numel()
    model.train(was_training)
    total_bytes = int(n_bytes.item())
    loss = float(nats_all.item()) / max(1, n_tokens)
    bpb = float(nats_text.item()) / math.log(2) / total_bytes if total_bytes else float("nan")
    return BpbResult(loss=loss, bpb=bpb, tokens=n_tokens, bytes=total_bytes)
