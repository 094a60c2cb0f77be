"""THE model: a Llama-compatible decoder grown by construction-time options (ModelConfig).

Defaults are Llama (RMSNorm, RoPE, SwiGLU, GQA, tied or untied embeddings); the family options
(config.py) add what imported families need: Gemma's (1 + w) norms, sqrt(dim) embedding scale,
GeGLU, sandwich norms and soft-caps; Phi's LayerNorm, plain MLP, parallel block, partial rotary and
biases; Qwen's biases and q/k norms; sliding windows; rope scaling (model/rope.py); and for
encoders (BERT, DistilBERT, ALBERT) bidirectional attention, learned positions, token types, an
embedding norm and projection (model/embeddings.py), post-norm blocks, one layer shared by
the whole depth and MobileBERT's bottleneck layers (model/bottleneck.py). One class, no
subclasses; parameter names are those of `transformers`' LlamaForCausalLM
(checkpoint/weights_spec lists what each option adds). Attention lives in model/attention.py.
The KV cache is passed in by the caller.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from pocketlm.model import native_attention
from pocketlm.model.attention import Attention, document_starts
from pocketlm.model.bottleneck import BottleneckLayer
from pocketlm.model.config import ModelConfig
from pocketlm.model.embeddings import embed, embedding_modules
from pocketlm.model.gated_activation import gated_activation
from pocketlm.model.heads import head_modules, padding_doc_ids, pooled_index, score_pooled
from pocketlm.model.kv_cache import KVCache
from pocketlm.model.linear_cross_entropy import IGNORE_INDEX, linear_cross_entropy
from pocketlm.model.moe import MoE
from pocketlm.model.norms import LayerNorm, RMSNorm, make_norm
from pocketlm.model.past_kv import PastKV
from pocketlm.model.quantized import QuantizedLinear
from pocketlm.model.rope import (
    GLOBAL,
    LONG,
    attention_factor,
    cos_sin,
    layer_rope_set,
    rope_buffers,
)

__all__ = ["MLP", "Attention", "CausalLM", "DecoderLayer", "LayerNorm", "RMSNorm", "build_model"]

_ACTIVATIONS = {
    "silu": F.silu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu": F.gelu,
    "relu": F.relu,
}


class MLP(nn.Module):
    """Feed-forward: gated down(act(gate(x)) * up(x)) (SwiGLU / GeGLU) or plain down(act(up(x)))."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        ffn, bias = config.resolved_ffn_dim, config.mlp_bias
        if config.mlp_kind == "gated":
            self.gate_proj = nn.Linear(config.dim, ffn, bias=bias)
        self.up_proj = nn.Linear(config.dim, ffn, bias=bias)
        self.down_proj = nn.Linear(ffn, config.dim, bias=bias)
        self.gated = config.mlp_kind == "gated"
        self.act = _ACTIVATIONS[config.activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gated:
            return self.down_proj(gated_activation(self.gate_proj(x), self.up_proj(x), self.act))
        return self.down_proj(self.act(self.up_proj(x)))


class DecoderLayer(nn.Module):
    """Pre-norm residual block: attention then MLP (or both from one norm: parallel_block), each
    branch's output optionally normalised before its residual add (sandwich_norms); or post-norm
    (BERT): x = norm(x + attn(x)), then norm(x + mlp(x))."""

    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.self_attn = Attention(config, layer_idx)
        self.mlp = MoE(config) if config.n_experts else MLP(config)
        self.post_norm = config.norm_position == "post"
        if self.post_norm:  # the norms after each residual add (layer_norms in weights_spec)
            self.post_attention_layernorm = make_norm(config, config.dim)
            self.post_mlp_layernorm = make_norm(config, config.dim)
        else:
            self.input_layernorm = make_norm(config, config.dim)
        self.parallel = config.parallel_block
        if not config.parallel_block and not self.post_norm:
            self.post_attention_layernorm = make_norm(config, config.dim)
        self.sandwich = config.sandwich_norms
        if config.sandwich_norms:
            self.attn_output_norm = make_norm(config, config.dim)
            self.ffn_output_norm = make_norm(config, config.dim)
        self.rope_set = layer_rope_set(config, layer_idx)
        self.resid_dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cache: KVCache | PastKV | None,
        positions: torch.Tensor | None,
        uniform: int | None,
        doc_starts: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if self.post_norm:
            attn = self.self_attn(x, cos, sin, cache, positions, uniform, doc_starts)
            x = self.post_attention_layernorm(x + self.resid_dropout(attn))
            return self.post_mlp_layernorm(x + self.resid_dropout(self.mlp(x)))
        h = self.input_layernorm(x)
        attn = self.self_attn(h, cos, sin, cache, positions, uniform, doc_starts)
        if self.parallel:  # Phi-2: both branches read the same normed input
            return (self.resid_dropout(attn) + self.resid_dropout(self.mlp(h))) + x
        if self.sandwich:
            attn = self.attn_output_norm(attn)
        x = x + self.resid_dropout(attn)
        out = self.mlp(self.post_attention_layernorm(x))
        if self.sandwich:
            out = self.ffn_output_norm(out)
        return x + self.resid_dropout(out)


class Decoder(nn.Module):
    """Embeddings, the layer stack and the final norm (HF's `model.` prefix); with shared layers
    (ALBERT) the stack holds one layer, which the forward applies n_layers times; post-norm
    blocks have no final norm (an identity)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.resolved_embed_dim)
        for name, module in embedding_modules(config).items():
            setattr(self, name, module)
        self.layers = nn.ModuleList(
            BottleneckLayer(config, i, MLP) if config.bottleneck_dim else DecoderLayer(config, i)
            for i in range(config.n_layer_weights)
        )
        pre = config.norm_position == "pre"
        self.norm = make_norm(config, config.dim) if pre else nn.Identity()
        self.config = config
        for name, inv_freq in rope_buffers(config).items():
            self.register_buffer(name, inv_freq, persistent=False)

    def _apply(self, fn, recurse=True):  # the nn.Module hook behind .to() / .cuda() / .half()
        """Move and cast as nn.Module does, but keep the rope frequencies fp32: they are rebuilt
        from the config when a cast would round them (positions times a bf16 frequency drift)."""
        super()._apply(fn, recurse)
        for name, inv_freq in rope_buffers(self.config).items():
            current = getattr(self, name)
            if current.dtype != torch.float32 and current.device.type != "meta":
                setattr(self, name, inv_freq.to(current.device))
        return self


class CausalLM(nn.Module):
    """Decoder + LM head. forward(input_ids (B, T), cache?) -> logits (B, T, vocab); or a
    classifier's (B, n_labels), or an encoder's hidden states (B, T, dim) (see forward)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        # Training memory for compute: a layer keeps only its input for backward and runs its
        # forward again there (~1/3 more step time; set by the training loop, not saved).
        self.checkpoint_activations = False
        self.model = Decoder(config)
        if not config.has_lm_head:  # a classifier or an encoder: model/heads.py, no LM head
            for name, module in head_modules(config).items():
                setattr(self, name, module)
        else:
            self.lm_head = nn.Linear(config.dim, config.vocab_size, bias=config.lm_head_bias)
            if config.tie_embeddings:
                self.lm_head.weight = self.model.embed_tokens.weight
        self._rope_scale = attention_factor(config)

    def forward(
        self,
        input_ids: torch.Tensor,
        cache: KVCache | PastKV | None = None,
        *,
        output_positions: torch.Tensor | None = None,
        targets: torch.Tensor | None = None,
        reduction: str = "mean",
        positions: torch.Tensor | None = None,
        doc_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        output_hidden: bool = False,
    ) -> torch.Tensor:
        """Logits for every position, or only at output_positions (B,) -> (B, vocab);
        output_hidden: the final hidden states (B, T, dim) the head reads instead (a loss fused
        with the head, as train/linear_sparse_kl's, takes them).

        A classifier (config.labels) returns (B, n_labels) class logits instead: each row is
        pooled at its last (or first) real token; attention_mask (B, T), true on real tokens,
        marks the padding, on either side: padded and unpadded rows give the same logits.
        An encoder without labels (config.causal false) has no LM head and returns its final
        hidden states (B, T, dim), padding rows (where attention_mask is false) included.
        Encoders with token-type embeddings take token_type_ids (B, T) (default: type 0);
        learned positions count from each row's first real token, as rotary ones do.

        With a cache, input_ids are the new tokens of each row, written after the row's
        current length; the cache's lengths advance by T. A PastKV (model/past_kv.py, for graph
        export) takes past keys/values as tensors, collects the presents and needs positions
        (B, T): rotary positions, while cache indices follow the past. With targets (B, T) (-100 = no
        target) the result is instead the cross-entropy ("mean" over the targets or their
        "sum"), computed by the LM head fused with the loss so the (B, T, vocab) logits never
        exist at once.

        Packed rows (training, no cache): doc_ids (B, T) name each token's document (a run of
        equal ids) and attention stays inside it; positions (B, T) are the token positions
        (default: restarting at 0 with each document). Each document then computes exactly
        what it computes alone.
        """
        batch, seq = input_ids.shape
        if not self.config.has_lm_head:
            if cache is not None or targets is not None or output_positions is not None:
                raise ValueError(
                    "a classifier or encoder takes input_ids, attention_mask and token_type_ids"
                )
            if attention_mask is None and self.config.labels:
                attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
            if attention_mask is not None:
                if doc_ids is not None:
                    raise ValueError("attention_mask and doc_ids do not combine")
                doc_ids = padding_doc_ids(attention_mask)  # (B, T)
        elif attention_mask is not None:
            raise ValueError("attention_mask is for classifiers; language models take doc_ids")
        if isinstance(cache, PastKV):  # export (model/past_kv.py): explicit positions, no doc_ids
            if positions is None or doc_ids is not None:
                raise ValueError("a PastKV cache takes positions (B, T) and no doc_ids")
        elif cache is not None and (positions is not None or doc_ids is not None):
            raise ValueError("positions and doc_ids are for packed training rows, not a KV cache")
        doc_starts = None
        if doc_ids is not None:
            doc_starts = document_starts(doc_ids)  # (B, T)
            if positions is None:
                positions = torch.arange(seq, device=input_ids.device) - doc_starts  # (B, T)
        uniform: int | None = 0
        cache_pos: torch.Tensor | None = None
        if cache is not None:
            uniform = cache.uniform_length()
            cache_pos = cache.positions(seq, input_ids.device)  # (B, T)
        if positions is not None:
            if seq > self.config.max_seq_len:
                raise ValueError(
                    f"sequence of {seq} positions exceeds the model's context of {self.config.max_seq_len}"
                )
            pos = positions  # (B, T): rotary or learned positions
            # longrope picks its long factors by the furthest position (a sync: longrope only)
            long = self.config.rope_scaling == "longrope"
            end = int(positions.max()) + 1 if long and positions.numel() else seq
        elif uniform is not None:
            if uniform + seq > self.config.max_seq_len:
                raise ValueError(
                    f"sequence of {uniform + seq} positions exceeds the model's context of {self.config.max_seq_len}"
                )
            pos = torch.arange(uniform, uniform + seq, device=input_ids.device)[None]  # (1, T)
            end = uniform + seq
        else:
            pos = cache_pos  # (B, T)
            end = max(cache.lengths) + seq
        x = embed(self.model, self.config, input_ids, pos, token_type_ids)  # (B, T, dim)
        rope = self._rope(pos, end, x.dtype)  # empty with learned positions
        layers = self.model.layers
        if self.config.shared_layers:  # one layer's weights, applied n_layers times
            layers = [layers[0]] * self.config.n_layers
        recompute = self.checkpoint_activations and self.training and torch.is_grad_enabled()
        for layer in layers:
            cos, sin = rope.get(layer.rope_set, (None, None))
            if recompute and cache is None:
                # keep only the layer's input; its forward runs again during backward
                x = torch.utils.checkpoint.checkpoint(
                    layer, x, cos, sin, None, cache_pos, uniform, doc_starts, use_reentrant=False
                )
            else:
                x = layer(x, cos, sin, cache, cache_pos, uniform, doc_starts)
        if cache is not None:
            cache.advance(seq)
        if self.config.labels:
            rows = torch.arange(batch, device=x.device)
            pooled = self.model.norm(x)[rows, pooled_index(attention_mask, self.config.pooling)]
            return score_pooled(
                pooled, self.score, getattr(self, "pooler", None), self.config.pooler
            )
        if not self.config.causal:
            return self.model.norm(x)  # an encoder's final hidden states (B, T, dim)
        if output_positions is not None:
            x = x[torch.arange(batch, device=x.device), output_positions]  # (B, dim)
        if targets is not None:
            return self._loss(self.model.norm(x), targets, reduction)
        if output_hidden:
            return self.model.norm(x)
        return self._head(self.model.norm(x))

    def _rope(
        self, positions: torch.Tensor, end: int, dtype: torch.dtype
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """rope set -> (cos, sin) (B or 1, 1, T, rotary_dim) at positions; `end` = last position + 1
        of the call, which picks longrope's long factors past the original context (rope.py)."""
        out = {}
        for name, inv_freq in self.model.named_buffers(recurse=False):
            rope_set = name.removeprefix("rope_inv_freq_")
            if rope_set == LONG:
                continue
            long = (
                self.config.rope_scaling == "longrope" and end > self.config.rope_original_max_len
            )
            if rope_set == GLOBAL and long:
                inv_freq = self.model.rope_inv_freq_long
            out[rope_set] = cos_sin(inv_freq, positions, dtype, self._rope_scale)
        return out

    def _head(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits of final hidden states, soft-capped when the family caps them (Gemma 2)."""
        logits = self.lm_head(hidden)
        cap = self.config.final_softcap
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits

    def _loss(self, hidden: torch.Tensor, targets: torch.Tensor, reduction: str) -> torch.Tensor:
        """Cross-entropy of the head's logits; fused unless the head was swapped (LoRA), has a
        bias or is soft-capped."""
        plain_head = not (self.config.lm_head_bias or self.config.final_softcap)
        if type(self.lm_head) is nn.Linear and plain_head:
            return linear_cross_entropy(hidden, self.lm_head.weight, targets, reduction=reduction)
        if isinstance(self.lm_head, QuantizedLinear) and plain_head:
            # a quantized head is frozen (QLoRA): fused over its dequantized weight, a transient
            # copy, instead of (B, T, vocab) logits and their gradient
            weight = self.lm_head.dequantized(hidden.dtype)  # (vocab, dim)
            return linear_cross_entropy(hidden, weight, targets, reduction=reduction)
        logits = self._head(hidden)  # (B, T, vocab)
        summed = F.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]),
            targets.reshape(-1),
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        )
        if reduction == "sum":
            return summed
        return summed / (targets != IGNORE_INDEX).sum().clamp(min=1)  # no targets: 0, as fused

    def num_params(self) -> int:
        """Unique parameters (tied weights counted once)."""
        return sum(p.numel() for p in {id(p): p for p in self.parameters()}.values())


def set_attention_kernel(model: nn.Module, kind: str) -> None:
    """Choose the attention kernel of every layer: "auto" (native on CPU where it applies) or "sdpa"."""
    if kind not in native_attention.KERNELS:
        raise ValueError(
            f"attention kernel {kind!r}: choose one of {', '.join(native_attention.KERNELS)}"
        )
    for module in model.modules():
        if isinstance(module, Attention):
            module.kernel = kind


def init_weights(model: CausalLM, seed: int = 0) -> CausalLM:
    """Normal(0, init_std) weights, residual projections scaled by 1/sqrt(2 * n_layers), identity
    norms (weight 1, or 0 under Gemma's (1 + w)), zero biases."""
    generator = torch.Generator().manual_seed(seed)
    std = model.config.init_std
    residual_std = std / math.sqrt(2 * model.config.n_layers)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.fill_(1.0 - model.config.norm_offset)
            elif name.endswith(".bias"):
                param.zero_()
            else:
                s = residual_std if name.endswith(("o_proj.weight", "down_proj.weight")) else std
                # Draw on CPU with the explicit generator, then copy: same weights on every device.
                param.copy_(torch.normal(0.0, s, size=param.shape, generator=generator))
    return model


def materialize(model: CausalLM, device: torch.device | str = "cpu") -> CausalLM:
    """Give a meta-device model real (uninitialised) storage, rebuild rope frequencies, re-tie embeddings."""
    config = model.config
    model = model.to_empty(device=device)
    for name, inv_freq in rope_buffers(config).items():
        setattr(model.model, name, inv_freq.to(device))
    if config.tie_embeddings:
        retie(model)
    return model


def retie(model: CausalLM) -> None:
    """Make the LM head share the embedding's storage again (after to_empty / surgery)."""
    emb = model.model.embed_tokens
    if not model.config.has_lm_head:  # a classifier or encoder has no LM head to tie
        return
    if isinstance(emb, nn.Embedding):
        model.lm_head.weight = emb.weight
    else:  # quantized: the head's qweight/scales buffers are the embedding table's
        model.lm_head.qweight = emb.qweight
        model.lm_head.scales = emb.scales


def build_model(
    config: ModelConfig, *, seed: int = 0, device: torch.device | str = "cpu"
) -> CausalLM:
    """A freshly initialised model on `device` (weights drawn on CPU: identical on every device)."""
    with torch.device("meta"):
        model = CausalLM(config)
    return init_weights(materialize(model), seed).to(device)
