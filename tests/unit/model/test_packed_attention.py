"""Packed rows: several examples in one row, each attending only to itself with positions from 0,
give each example's own losses and gradients, in PocketLM's CPU kernels and in SDPA."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from pocketlm.data.packing import IGNORE_INDEX, pack_rows, plan_rows
from pocketlm.data.sft_tokens import SFTTokens
from pocketlm.model import native_attention
from pocketlm.model.attention import document_starts
from pocketlm.model.config import ModelConfig
from pocketlm.model.kv_cache import KVCache
from pocketlm.model.transformer import build_model, set_attention_kernel
from tests.unit.model.test_family_options import BASE, VARIANTS, _model

LLAMA = dict(vocab_size=97, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64)
needs_kernels = pytest.mark.skipif(
    not native_attention.available(), reason="PocketLM's attention kernels need AVX-512"
)


def _examples(seed: int, lengths: list[int]) -> list[SFTTokens]:
    rng = np.random.default_rng(seed)
    return [SFTTokens(rng.integers(0, BASE["vocab_size"], n).tolist(), [True] * n) for n in lengths]


def _packed_and_alone(model, examples: list[SFTTokens], ctx: int):
    """Per-example mean losses from packed rows and from each example run alone."""
    rows = plan_rows([len(e.ids) - 1 for e in examples], ctx)
    packed = pack_rows(examples, rows, ctx, pad_id=0)
    x = torch.from_numpy(packed.input_ids)
    y = torch.from_numpy(packed.targets)
    logits = model(
        x, positions=torch.from_numpy(packed.positions), doc_ids=torch.from_numpy(packed.doc_ids)
    )
    per_token = F.cross_entropy(
        logits.float().transpose(1, 2), y, ignore_index=IGNORE_INDEX, reduction="none"
    )  # (R, ctx)
    from_packed, alone = [], []
    for r, members in enumerate(rows):
        at = 0
        for i in members:
            n = len(examples[i].ids) - 1
            from_packed.append((i, per_token[r, at : at + n].mean()))
            at += n
    for ids, _ in examples:
        t = torch.tensor(ids)[None]
        out = model(t[:, :-1])
        alone.append(F.cross_entropy(out.float()[0], t[0, 1:]))
    packed_losses = torch.stack([loss for _, loss in sorted(from_packed, key=lambda p: p[0])])
    return packed_losses, torch.stack(alone), (x, y, packed)


@pytest.mark.parametrize("kernel", ["auto", "sdpa"])
@pytest.mark.parametrize("name", ["llama", *VARIANTS])
def test_packed_and_unpacked_losses_are_equal(name, kernel):
    model = (
        build_model(ModelConfig(**LLAMA, init_std=0.2)).eval() if name == "llama" else _model(name)
    )
    set_attention_kernel(model, kernel)
    # longrope: stay within the original context, whose factors a short example uses alone
    lengths = [3, 9, 17, 5, 12, 2, 30, 7] if name != "phi3-longrope" else [3, 9, 14, 5, 12, 2, 7]
    ctx = 40 if name != "phi3-longrope" else 16
    with torch.no_grad():
        packed, alone, _ = _packed_and_alone(model, _examples(1, lengths), ctx)
    torch.testing.assert_close(packed, alone, atol=1e-5, rtol=0)


@needs_kernels
@settings(max_examples=15, deadline=None)
@given(
    lengths=st.lists(st.integers(2, 48), min_size=1, max_size=10),
    seed=st.integers(0, 1000),
    kernel=st.sampled_from(["auto", "sdpa"]),
)
def test_packing_property(lengths, seed, kernel):
    """Any examples packed any way: per-example losses, the fused summed loss and the weight
    gradients equal those of the examples run alone."""
    model = build_model(ModelConfig(**LLAMA, init_std=0.2), seed=seed % 7)
    set_attention_kernel(model, kernel)
    examples = _examples(seed, lengths)
    packed, alone, (x, y, rows) = _packed_and_alone(model, examples, 48)
    torch.testing.assert_close(packed, alone, atol=1e-5, rtol=0)
    # the training loss: fused head + cross-entropy summed over the targets, and its gradients
    model.zero_grad()
    total = model(
        x,
        targets=y,
        reduction="sum",
        positions=torch.from_numpy(rows.positions),
        doc_ids=torch.from_numpy(rows.doc_ids),
    )
    total.backward()
    packed_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    alone_total = sum(
        model(torch.tensor(ids[:-1])[None], targets=torch.tensor(ids[1:])[None], reduction="sum")
        for ids, _ in examples
    )
    alone_total.backward()
    torch.testing.assert_close(total, alone_total, atol=1e-4, rtol=1e-5)
    for n, p in model.named_parameters():  # fp32 sums in another order: 1e-5 of the largest
        scale = max(1.0, p.grad.abs().max().item())
        assert (packed_grads[n] - p.grad).abs().max().item() <= 1e-5 * scale, n


@needs_kernels
@pytest.mark.parametrize("shape", [(2, 37, 4, 2, 32), (3, 100, 2, 1, 16), (1, 130, 4, 4, 64)])
def test_kernels_keep_attention_inside_documents(shape):
    batch, seq, heads, kv_heads, head_dim = shape
    gen = torch.Generator().manual_seed(seq)
    doc_ids = torch.zeros(batch, seq, dtype=torch.long)
    for b in range(batch):
        lengths = torch.randint(1, 30, (seq,), generator=gen)
        doc_ids[b] = torch.repeat_interleave(torch.arange(seq), lengths)[:seq]
    starts = document_starts(doc_ids)
    q = torch.randn(batch, seq, heads, head_dim, generator=gen, requires_grad=True)
    k = torch.randn(batch, seq, kv_heads, head_dim, generator=gen, requires_grad=True)
    v = torch.randn(batch, seq, kv_heads, head_dim, generator=gen, requires_grad=True)
    out = native_attention.causal_attention(q, k, v, starts)
    grad = torch.randn(out.shape, generator=gen)
    got = torch.autograd.grad(out, (q, k, v), grad)
    position = torch.arange(seq)
    visible = (position[None, None, :] <= position[None, :, None]) & (
        position[None, None, :] >= starts[:, :, None]
    )  # (B, T, S)
    rep = heads // kv_heads
    ref = F.scaled_dot_product_attention(
        q.transpose(1, 2),
        k.repeat_interleave(rep, 2).transpose(1, 2),
        v.repeat_interleave(rep, 2).transpose(1, 2),
        attn_mask=visible[:, None],
    ).transpose(1, 2)
    want = torch.autograd.grad(ref, (q, k, v), grad)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)


def test_document_starts_and_defaults():
    doc_ids = torch.tensor([[0, 0, 1, 1, 1, 2], [5, 5, 5, 5, 5, 5], [0, 1, 0, 0, 1, 1]])
    assert document_starts(doc_ids).tolist() == [
        [0, 0, 2, 2, 2, 5],
        [0, 0, 0, 0, 0, 0],
        [0, 1, 2, 2, 4, 4],  # a document is a run: the same id later is another document
    ]
    model = build_model(ModelConfig(**LLAMA)).eval()
    x = torch.randint(0, 97, (3, 6))
    with torch.no_grad():
        explicit = model(x, doc_ids=doc_ids, positions=torch.arange(6) - document_starts(doc_ids))
        torch.testing.assert_close(model(x, doc_ids=doc_ids), explicit)  # positions by default
        one_document = model(x, doc_ids=torch.zeros(3, 6, dtype=torch.long))
        torch.testing.assert_close(one_document, model(x), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="not a KV cache"):
        model(x, KVCache.allocate(model.config, 3), doc_ids=doc_ids)


@needs_kernels
def test_packed_rows_take_the_kernels_in_bf16_too(monkeypatch):
    """Under bf16 the kernels run packed rows, and unpacked ones, in fp32 (SDPA's CPU kernels are
    slower, its masked ones far slower), taking and returning bf16."""
    calls = []
    real = native_attention.causal_attention
    monkeypatch.setattr(
        native_attention,
        "causal_attention",
        lambda q, k, v, doc_starts=None: calls.append(q.dtype) or real(q, k, v, doc_starts),
    )
    model = build_model(ModelConfig(**LLAMA, init_std=0.2)).eval()
    x = torch.randint(0, 97, (2, 24), generator=torch.Generator().manual_seed(0))
    doc_ids = torch.tensor([[0] * 10 + [1] * 14, [0] * 5 + [1] * 5 + [2] * 14])
    with torch.no_grad():
        want = model(x, doc_ids=doc_ids)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = model(x, doc_ids=doc_ids)
            assert calls == [torch.float32] * 2 + [torch.bfloat16] * 2  # 2 layers: fp32, autocast
            model(x)
            assert len(calls) == 6
        set_attention_kernel(model, "sdpa")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            sdpa = model(x, doc_ids=doc_ids)
    torch.testing.assert_close(got.float(), want, atol=0.1, rtol=0.05)
    torch.testing.assert_close(got.float(), sdpa.float(), atol=0.1, rtol=0.05)
