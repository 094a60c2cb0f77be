"""Cached decoding equals a full forward: chunked prefill, token-by-token decode, ragged batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pocketlm.common.errors import InputError
from pocketlm.engine.backend import Backend
from pocketlm.engine.torch_backend import TorchBackend
from pocketlm.model.config import ModelConfig
from pocketlm.model.kv_cache import KVCache
from pocketlm.model.transformer import build_model

ATOL = 1e-5
CTX = 24


@st.composite
def tiny_configs(draw) -> ModelConfig:
    n_kv = draw(st.sampled_from([1, 2]))
    n_heads = n_kv * draw(st.sampled_from([1, 2]))  # MHA when 1, GQA when 2
    return ModelConfig(
        vocab_size=48,
        dim=8 * n_heads,
        n_layers=draw(st.integers(1, 2)),
        n_heads=n_heads,
        n_kv_heads=n_kv,
        ffn_dim=24,
        max_seq_len=CTX,
        tie_embeddings=draw(st.booleans()),
        qkv_bias=draw(st.booleans()),
        init_std=0.2,  # large weights: logits far from uniform, so errors would show
    )


def random_tokens(seed: int, n: int, vocab: int) -> list[int]:
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


@settings(max_examples=12, deadline=None)
@given(
    tiny_configs(),
    st.integers(2, CTX),
    st.lists(st.integers(1, 4), min_size=1, max_size=8),
    st.integers(0, 1000),
)
def test_chunked_prefill_and_decode_equal_full_forward(config, length, chunks, seed):
    model = build_model(config, seed=seed)
    tokens = random_tokens(seed, length, config.vocab_size)
    with torch.inference_mode():
        full = model(torch.tensor([tokens]))[0]  # (T, V)
    backend = TorchBackend(model)
    first = max(1, length - sum(chunks))  # the first prefill takes whatever the chunks leave
    pieces = [tokens[:first]]
    for size in chunks:
        start = first + sum(len(p) for p in pieces[1:])
        if start < length:
            pieces.append(tokens[start : start + size])
    end = 0
    for piece in pieces:
        # One token goes through decode, more through a (continued) prefill.
        logits = (
            backend.decode([0], piece[:1])[0]
            if end and len(piece) == 1
            else backend.prefill(0, piece)
        )
        end += len(piece)
        assert isinstance(logits, np.ndarray)
        assert logits.shape == (config.vocab_size,) and logits.dtype == np.float32
        torch.testing.assert_close(torch.from_numpy(logits), full[end - 1], atol=ATOL, rtol=0)
    assert backend.position(0) == length == end


@settings(max_examples=8, deadline=None)
@given(
    tiny_configs(),
    st.lists(st.integers(1, 10), min_size=2, max_size=4, unique=True),
    st.integers(0, 1000),
)
def test_ragged_batch_equals_each_row_alone(config, prompt_lengths, seed):
    model = build_model(config, seed=seed)
    batch, steps = len(prompt_lengths), 4
    longest = max(prompt_lengths)
    # Row r's sequence is rows[r][: n_r + steps]; tokens past n_r only pad the batched prefill.
    rows = [random_tokens(seed + r, longest + steps, config.vocab_size) for r in range(batch)]
    with torch.inference_mode():
        alone = [model(torch.tensor([row[: n + steps]]))[0] for row, n in zip(rows, prompt_lengths)]
        cache = KVCache.allocate(config, batch, CTX)
        padded = torch.tensor(
            [row[:longest] for row in rows]
        )  # (B, longest): junk past each prompt
        model(padded, cache)
        for r, n in enumerate(prompt_lengths):
            cache.reset_row(r, n)  # rows now hold different lengths
        # One decode step, then a two-token step: both take the row-length-aware path.
        step1 = torch.tensor([[row[n]] for row, n in zip(rows, prompt_lengths)])  # (B, 1)
        out1 = model(step1, cache)[:, -1]  # (B, V)
        step2 = torch.tensor([row[n + 1 : n + 3] for row, n in zip(rows, prompt_lengths)])  # (B, 2)
        out2 = model(step2, cache)  # (B, 2, V)
        assert cache.lengths == [n + 3 for n in prompt_lengths]
    for r, n in enumerate(prompt_lengths):
        torch.testing.assert_close(out1[r], alone[r][n], atol=ATOL, rtol=0)
        torch.testing.assert_close(out2[r], alone[r][n + 1 : n + 3], atol=ATOL, rtol=0)


def small_model(**overrides):
    config = ModelConfig(
        vocab_size=32, dim=16, n_layers=1, n_heads=2, n_kv_heads=1, max_seq_len=8, **overrides
    )
    return build_model(config, seed=0)


def test_backend_satisfies_protocol_and_resets():
    backend = TorchBackend(small_model())
    assert isinstance(backend, Backend)
    assert (backend.context_length, backend.vocab_size, backend.position(0)) == (8, 32, 0)
    assert backend.device == "cpu" and backend.name == "torch" and backend.slots == 1
    a = backend.prefill(0, [1, 2, 3])
    backend.decode([0], [4])
    assert backend.position(0) == 4
    backend.release(0)
    assert backend.position(0) == 0
    np.testing.assert_array_equal(backend.prefill(0, [1, 2, 3]), a)


def test_backend_refuses_overflow_and_empty_prefill():
    backend = TorchBackend(small_model(), max_len=4)
    assert backend.context_length == 4
    with pytest.raises(InputError, match="context"):
        backend.prefill(0, [1, 2, 3, 4, 5])
    backend.prefill(0, [1, 2, 3, 4])
    with pytest.raises(InputError, match="context full"):
        backend.decode([0], [5])
    with pytest.raises(InputError, match="no tokens"):
        backend.prefill(0, [])


def test_backend_moves_model_to_requested_dtype():
    backend = TorchBackend(small_model(), dtype=torch.bfloat16)
    assert next(backend.model.parameters()).dtype == torch.bfloat16
    logits = backend.prefill(0, [1, 2])
    assert logits.dtype == np.float32 and np.isfinite(logits).all()
