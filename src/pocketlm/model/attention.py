"""Causal self-attention: grouped-query heads, rotary positions, and the family options on it.

Options (ModelConfig): q/k/v and o biases, per-head q/k norms before rotary (Qwen3, Gemma 3),
partial rotary (Phi), a sliding window on some layers (Mistral, Gemma 2/3: key j is visible to the
query at position p iff p - window < j <= p, as transformers masks it), a softmax scale other than
head_dim ** -0.5 (Gemma 2/3's query_pre_attn_scalar) and a tanh soft-cap of the scores (Gemma 2).

Paths: PocketLM's CPU kernels (model/native_attention.py) where they apply and the maths is theirs
(no cache, no soft-cap, default scale, no window narrower than the sequence); SDPA for everything
else without a soft-cap; an explicit softmax(cap * tanh(scores / cap)) path for soft-capped
layers. The KV cache keeps every position; a sliding layer masks the keys outside its window, so
decoding with the cache gives what one full forward gives.

Encoders (causal False) attend both ways: a query sees every key of its sequence, or of its own
document in packed rows (and a classifier's padding is its own document). They run on SDPA:
PocketLM's kernels compute the causal triangle only (each block of queries stops at its own
position, and the backward pass walks the same triangle), so bidirectional attention would be
a new kernel, not an option of these. Learned absolute positions (position_kind "learned") are
added to the embeddings: then no rotary is applied here (cos/sin are None).

Packed training rows (several examples one after another) pass `doc_starts` (B, T): the first
position of each token's document (document_starts). A query then sees only the keys of its own
document, causally (and within the window): PocketLM's kernels take the starts and skip the
scores left of each document (in fp32 under bf16 autocast too: SDPA's CPU kernels with a mask
are several times slower); SDPA elsewhere and the soft-cap path take a block-diagonal causal
mask.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pocketlm.model import native_attention
from pocketlm.model.config import ModelConfig
from pocketlm.model.kv_cache import KVCache
from pocketlm.model.norms import make_norm
from pocketlm.model.past_kv import PastKV
from pocketlm.model.rope import apply_rope


def document_starts(doc_ids: torch.Tensor) -> torch.Tensor:
    """(B, T) int64: the index of the first token of each token's document, a document being a
    run of equal ids along the row."""
    seq = doc_ids.shape[1]
    index = torch.arange(seq, device=doc_ids.device).expand_as(doc_ids)  # (B, T)
    first = torch.ones_like(doc_ids, dtype=torch.bool)
    first[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    return torch.where(first, index, torch.zeros_like(index)).cummax(dim=1).values


class Attention(nn.Module):
    """Grouped-query self-attention with rotary positions."""

    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads = config.n_heads
        self.n_kv_heads = config.n_kv_heads
        self.head_dim = config.resolved_head_dim
        self.q_proj = nn.Linear(config.dim, config.q_dim, bias=config.qkv_bias)
        self.k_proj = nn.Linear(config.dim, config.kv_dim, bias=config.qkv_bias)
        self.v_proj = nn.Linear(config.dim, config.kv_dim, bias=config.qkv_bias)
        self.o_proj = nn.Linear(config.q_dim, config.dim, bias=config.o_bias)
        if config.qk_norm:
            self.q_norm = make_norm(config, self.head_dim)
            self.k_norm = make_norm(config, self.head_dim)
        self.qk_norm = config.qk_norm
        self.window = config.sliding_window if config.layer_kind(layer_idx) == "sliding" else 0
        self.scale: float | None = config.attn_scale or None  # None: SDPA's head_dim ** -0.5
        self.softcap = config.attn_softcap
        self.dropout = config.dropout
        self.causal = config.causal
        # "auto": PocketLM's CPU kernels where they apply (model/native_attention.py), else SDPA
        self.kernel = "auto"

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cache: KVCache | PastKV | None,
        positions: torch.Tensor | None,
        uniform: int | None,
        doc_starts: torch.Tensor | None = None,
        *,
        values: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (B, T, dim) -> (B, T, dim); cos/sin (B or 1, 1, T, rotary_dim) at the new positions
        (None: no rotary); doc_starts (B, T) (no cache) keeps attention inside each packed
        document; values (B, T, any width): what v_proj reads, when not x (MobileBERT)."""
        batch, seq, _ = x.shape
        q = self.q_proj(x).view(batch, seq, self.n_heads, self.head_dim)  # (B, T, H, hd)
        k = self.k_proj(x).view(batch, seq, self.n_kv_heads, self.head_dim)  # (B, T, KV, hd)
        v = self.v_proj(x if values is None else values)
        v = v.view(batch, seq, self.n_kv_heads, self.head_dim)  # (B, T, KV, hd)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        dropout = self.dropout if self.training else 0.0
        if (
            cache is None  # so cos/sin are (B or 1, 1, T, rd)
            and self.causal  # the kernels compute the causal triangle only
            and self.kernel == "auto"
            and self._native_maths(seq)
            and native_attention.applies(q, dropout)
        ):
            # (B, 1, T, rd) -> (B, T, 1, rd): rotate in the (B, T, H, hd) layout the kernels read
            if cos is not None:
                cos_t, sin_t = cos.transpose(1, 2), sin.transpose(1, 2)
                # fp32 cos/sin promote a bf16 (autocast) q and k: back to v's dtype, as SDPA's
                # autocast would cast them, so the kernels keep bf16 copies for backward
                q = apply_rope(q, cos_t, sin_t).to(v.dtype)
                k = apply_rope(k, cos_t, sin_t).to(v.dtype)
            # under bf16 autocast too: the fp32 kernels beat SDPA's bf16 ones (1.3-3.4x, causal;
            # 5-9x with a packed row's mask: benchmarks/attention_speed.py, packed_attention.py)
            out = native_attention.causal_attention(q, k, v, doc_starts)  # (B, T, H, hd)
            return self.o_proj(out.reshape(batch, seq, self.n_heads * self.head_dim))
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H or KV, T, hd)
        if cos is not None:
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        mask = None
        causal = self.causal
        query_pos: torch.Tensor | None = None  # (B or 1, T) positions, when keys start at 0
        if cache is not None:
            fresh_prefill = uniform == 0
            k_all, v_all = cache.write(self.layer_idx, k, v, positions, uniform)
            if not fresh_prefill:
                k, v = k_all, v_all
                causal = False
                if uniform is None or seq > 1 or self._window_cuts(k.shape[2]):
                    query_pos = positions
        if causal and self._window_cuts(seq):
            query_pos = torch.arange(seq, device=x.device)[None]  # (1, T)
        if isinstance(cache, PastKV):  # export: one mask per window, with the key mask, shared
            mask = cache.masks.get(self.window)  # by the layers (fewer nodes in the graph)
            if mask is None:
                mask = cache.visible(self._visible(query_pos, k.shape[2]), query_pos)
                cache.masks[self.window] = mask  # (B, 1, T, S)
        elif query_pos is not None:
            mask = self._visible(query_pos, k.shape[2])  # (B, 1, T, S)
        if doc_starts is not None:
            mask = self._visible_in_documents(doc_starts)  # (B, 1, T, T)
        if self.n_kv_heads != self.n_heads:
            rep = self.n_heads // self.n_kv_heads
            # (B, KV, S, hd) -> (B, H, S, hd): each kv head serves `rep` query heads.
            k = (
                k[:, :, None]
                .expand(batch, self.n_kv_heads, rep, k.shape[2], self.head_dim)
                .reshape(batch, self.n_heads, k.shape[2], self.head_dim)
            )
            v = (
                v[:, :, None]
                .expand(batch, self.n_kv_heads, rep, v.shape[2], self.head_dim)
                .reshape(batch, self.n_heads, v.shape[2], self.head_dim)
            )
        if self.softcap:
            out = self._capped_attention(q, k, v, mask, causal and mask is None, dropout)
        else:
            scale = self.scale
            if scale is None and isinstance(cache, PastKV):  # export: a constant, not a graph
                scale = self.head_dim**-0.5  # of Shape, Sqrt and Div in every layer
            out = F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=mask,
                dropout_p=dropout,
                is_causal=causal and mask is None and seq > 1,
                scale=scale,
            )
        out = out.transpose(1, 2).reshape(batch, seq, self.n_heads * self.head_dim)  # (B, T, H*hd)
        return self.o_proj(out)

    def _native_maths(self, seq: int) -> bool:
        """Whether plain causal softmax(q kᵀ / √hd) is this layer's attention over `seq` tokens."""
        return self.scale is None and not self.softcap and not self._window_cuts(seq)

    def _window_cuts(self, n_keys: int) -> bool:
        """Whether this layer's window hides some of `n_keys` keys from a query."""
        return bool(self.window) and n_keys > self.window

    def _visible(self, query_pos: torch.Tensor, n_keys: int) -> torch.Tensor:
        """(B, 1, T, S) bool: key j is visible to the query at p iff j <= p (and p - j < window)."""
        key_pos = torch.arange(n_keys, device=query_pos.device)  # (S,)
        p = query_pos[:, None, :, None]  # (B, 1, T, 1)
        visible = key_pos[None, None, None, :] <= p
        if self.window:
            visible = visible & (key_pos[None, None, None, :] > p - self.window)
        return visible

    def _visible_in_documents(self, doc_starts: torch.Tensor) -> torch.Tensor:
        """(B, 1, T, T) bool: key j is visible to query t iff doc_starts[t] <= j <= t (and
        t - j < window): causal attention inside each packed document; an encoder's query sees
        every key of its document (the same start)."""
        if not self.causal:
            return doc_starts[:, None, :, None] == doc_starts[:, None, None, :]
        seq = doc_starts.shape[1]
        t = torch.arange(seq, device=doc_starts.device)  # (T,)
        query, key = t[None, None, :, None], t[None, None, None, :]
        visible = (key <= query) & (key >= doc_starts[:, None, :, None])
        if self.window:
            visible = visible & (key > query - self.window)
        return visible

    def _capped_attention(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        mask: torch.Tensor | None,
        causal: bool,
        dropout: float,
    ) -> torch.Tensor:
        """softmax(cap * tanh(q kᵀ * scale / cap)) v over visible keys, softmax in fp32."""
        scale = self.scale or self.head_dim**-0.5
        scores = torch.matmul(q, k.transpose(2, 3)) * scale  # (B, H, T, S)
        scores = torch.tanh(scores / self.softcap) * self.softcap
        if mask is None and causal:
            seq, n_keys = q.shape[2], k.shape[2]
            mask = torch.ones(seq, n_keys, dtype=torch.bool, device=q.device).tril(n_keys - seq)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        probs = F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        probs = F.dropout(probs, p=dropout, training=dropout > 0)
        return torch.matmul(probs, v)  # (B, H, T, hd)
