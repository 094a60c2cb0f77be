"""Weight-only quantized linears and embeddings, and the quantization math they store.

int8: per output channel (row), w = q * scale[row], q in [-127, 127].
int4: groups of `group` values along each row (a multiple of 32), w = (q - 8) * d[group], q in
      [0, 15], packed two per byte in blocks of 32 values: byte j of a block holds value j in its
      low nibble and value j + 16 in its high nibble (the GGUF Q4_0 layout), d stored as fp16.
Both stay in this layout on disk, in memory and in the native kernels. Activations may be any
float dtype (fp32, bf16, fp16): `module.to(dtype)` converts biases but never the integer weights
or their scales, and the forward pass computes in the activations' dtype. The integer weights never
train; when the input needs a gradient (LoRA layers below: QLoRA), the backward pass dequantizes
the weight again instead of autograd keeping a float copy of it for the whole step.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

Scheme = Literal["int8", "int4"]


def quantize_int8_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, in) float -> (q int8 (out, in), scale float32 (out,)), symmetric per row."""
    w = w.float()
    scale = w.abs().amax(dim=1) / 127.0  # (out,)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.clamp(torch.round(w / scale[:, None]), -127, 127).to(torch.int8)
    return q, scale


def dequantize_int8(
    q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Inverse of quantize_int8_rows."""
    return q.to(dtype) * scale.to(dtype)[:, None]


def quantize_int4_groups(
    w: torch.Tensor, group: int = 32, search: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, in) float -> (packed uint8 (out, in/2), d float16 (out, in/group)).

    The base scale maps the group's largest-magnitude value to -8 (as GGUF Q4_0 does); with
    `search`, a few nearby scales are tried per group and the one with the least squared error
    kept (same format, lower error).
    """
    out_f, in_f = w.shape
    if in_f % group or group % 32:
        raise ValueError(
            f"int4 needs a group size that is a multiple of 32 and divides {in_f}, got {group}"
        )
    wg = w.float().reshape(out_f, in_f // group, group)  # (out, groups, group)
    idx = wg.abs().argmax(dim=2, keepdim=True)
    signed_max = torch.gather(wg, 2, idx)  # (out, groups, 1)
    base = signed_max / -8.0
    candidates = (1.0,) if not search else (0.86, 0.9, 0.94, 0.97, 1.0, 1.03)
    best_d = best_err = None
    for c in candidates:
        d = (base * c).to(torch.float16).float()  # the scale as it will be stored
        safe = torch.where(d == 0, torch.ones_like(d), d)
        q = torch.clamp(torch.floor(wg / safe + 8.5), 0, 15)
        err = ((q - 8) * d - wg).pow(2).sum(dim=2, keepdim=True)
        if best_err is None:
            best_d, best_err = d, err
        else:
            better = err < best_err
            best_d = torch.where(better, d, best_d)
            best_err = torch.where(better, err, best_err)
    d = best_d
    safe = torch.where(d == 0, torch.ones_like(d), d)
    q = (
        torch.clamp(torch.floor(wg / safe + 8.5), 0, 15)
        .to(torch.uint8)
        .reshape(out_f, in_f // 32, 32)
    )  # (out, blocks, 32)
    packed = (q[:, :, :16] | (q[:, :, 16:] << 4)).reshape(out_f, in_f // 2)  # (out, in/2)
    return packed.contiguous(), d.reshape(out_f, in_f // group).to(torch.float16).contiguous()


def dequantize_int4(
    packed: torch.Tensor, d: torch.Tensor, group: int, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Inverse of quantize_int4_groups -> (out, in)."""
    out_f = packed.shape[0]
    in_f = packed.shape[1] * 2
    blocks = packed.reshape(out_f, in_f // 32, 16)  # (out, blocks, 16)
    q = torch.cat([blocks & 0x0F, blocks >> 4], dim=2).reshape(
        out_f, in_f // group, group
    )  # (out, groups, group)
    return ((q.to(dtype) - 8) * d.to(dtype)[:, :, None]).reshape(out_f, in_f)


def _apply_keeping_scales(module: nn.Module, fn, recurse: bool) -> nn.Module:
    """nn.Module._apply (moves and casts every tensor), then the scales back to their stored
    dtype (fp32 per row, fp16 per group): a model cast to bf16 keeps its quantization exact."""
    stored = module.scales.dtype
    nn.Module._apply(module, fn, recurse)
    if module.scales.dtype != stored:
        module.scales = module.scales.to(stored)
    return module


def _autocast_dtype(device_type: str) -> torch.dtype | None:
    """The autocast dtype in force for the device type, or None when autocast is off."""
    try:  # torch >= 2.4
        on = torch.is_autocast_enabled(device_type)
    except TypeError:  # torch 2.3 has per-device functions only
        if device_type == "cpu":
            return torch.get_autocast_cpu_dtype() if torch.is_autocast_cpu_enabled() else None
        return torch.get_autocast_gpu_dtype() if torch.is_autocast_enabled() else None
    return torch.get_autocast_dtype(device_type) if on else None


class _FrozenWeightMatmul(torch.autograd.Function):
    """x @ W^T for a quantized layer's W, differentiable in x only: backward dequantizes W
    again rather than keeping the float copy the forward made (F.linear would save it)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, layer: QuantizedLinear) -> torch.Tensor:  # type: ignore[override]
        device_type = x.device.type
        dtype = _autocast_dtype(device_type) or x.dtype  # what F.linear would compute in
        ctx.layer, ctx.dtype, ctx.x_dtype = layer, dtype, x.dtype
        with torch.autocast(device_type, enabled=False):
            return F.linear(x.to(dtype), layer.dequantized(dtype))  # (..., out)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_y: torch.Tensor) -> tuple[torch.Tensor | None, None]:  # type: ignore[override]
        if not ctx.needs_input_grad[0]:
            return None, None
        weight = ctx.layer.dequantized(ctx.dtype)  # (out, in), dropped after this matmul
        return (grad_y.to(ctx.dtype) @ weight).to(ctx.x_dtype), None  # (..., in)


class QuantizedLinear(nn.Module):
    """y = x W^T (+ b) with W stored as int8 rows or int4 groups; dequantised on the fly."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        scheme: Scheme,
        group: int = 32,
        bias: bool = False,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features, self.scheme, self.group = (
            in_features,
            out_features,
            scheme,
            group,
        )
        if scheme == "int8":
            self.register_buffer(
                "qweight", torch.zeros(out_features, in_features, dtype=torch.int8)
            )
            self.register_buffer("scales", torch.ones(out_features, dtype=torch.float32))
        else:
            self.register_buffer(
                "qweight", torch.zeros(out_features, in_features // 2, dtype=torch.uint8)
            )
            self.register_buffer(
                "scales", torch.ones(out_features, in_features // group, dtype=torch.float16)
            )
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    @classmethod
    def from_linear(cls, linear: nn.Linear, scheme: Scheme, group: int = 32) -> QuantizedLinear:
        """Quantize an existing nn.Linear."""
        q = cls(
            linear.in_features, linear.out_features, scheme, group, bias=linear.bias is not None
        )
        q.load_weight(linear.weight.detach())
        if linear.bias is not None:
            q.bias.data.copy_(linear.bias.detach().float())
        return q

    def load_weight(self, weight: torch.Tensor) -> None:
        """Quantize a float (out, in) weight into this module's buffers."""
        if self.scheme == "int8":
            q, s = quantize_int8_rows(weight)
        else:
            q, s = quantize_int4_groups(weight, self.group)
        self.qweight.copy_(q)
        self.scales.copy_(s)

    def dequantized(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The float weight (out, in) this module represents."""
        if self.scheme == "int8":
            return dequantize_int8(self.qweight, self.scales, dtype)
        return dequantize_int4(self.qweight, self.scales, self.group, dtype)

    def _apply(self, fn, recurse=True):  # the nn.Module hook behind .to() / .cuda() / .half()
        return _apply_keeping_scales(self, fn, recurse)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Dequantize, then one float matmul: O(out x in) extra work against the matmul's
        # O(rows x out x in). torch._weight_int8pack_mm measured 40-60x slower than this on an
        # AVX-512 CPU at every shape tried (1 to 2048 rows); the native engine is the fast path.
        if x.requires_grad and torch.is_grad_enabled():
            y = _FrozenWeightMatmul.apply(x, self)  # (..., out)
            return y if self.bias is None else y + self.bias.to(y.dtype)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.dequantized(x.dtype), bias)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, {self.scheme}" + (
            f", group={self.group}" if self.scheme == "int4" else ""
        )


class QuantizedEmbedding(nn.Module):
    """Embedding rows stored quantized; with tied embeddings its buffers ARE the LM head's."""

    def __init__(self, table: QuantizedLinear) -> None:
        super().__init__()
        self.scheme, self.group, self.dim = table.scheme, table.group, table.in_features
        self.register_buffer("qweight", table.qweight)  # (vocab, dim) int8 or (vocab, dim/2) uint8
        self.register_buffer("scales", table.scales)
        # Follows .to(dtype) like a float weight would: the dtype the rows come out in.
        self.register_buffer("out_probe", torch.empty(0), persistent=False)

    def _apply(self, fn, recurse=True):  # the nn.Module hook behind .to() / .cuda() / .half()
        return _apply_keeping_scales(self, fn, recurse)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        dtype = self.out_probe.dtype
        if self.scheme == "int8":
            return (self.qweight[ids].float() * self.scales[ids].float()[..., None]).to(dtype)
        flat = ids.reshape(-1)
        rows = dequantize_int4(self.qweight[flat], self.scales[flat], self.group)  # (N, dim)
        return rows.reshape(*ids.shape, self.dim).to(dtype)


LINEAR_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _linear_parents(layer: nn.Module) -> list[nn.Module]:
    """The modules of a decoder layer whose LINEAR_NAMES children are its quantizable linears:
    attention and the MLP, or with a mixture of experts every expert and the shared one (the
    router `mlp.gate` and `mlp.shared_expert_gate` are not in LINEAR_NAMES: they stay float)."""
    mlp = layer.mlp
    parents = [layer.self_attn, mlp, *getattr(mlp, "experts", ())]
    if getattr(mlp, "shared_expert", None) is not None:
        parents.append(mlp.shared_expert)
    return parents


def quantize_modules(
    model: nn.Module, scheme: Scheme, group: int = 32, *, empty: bool = False
) -> nn.Module:
    """Module surgery in place: every decoder linear, the LM head and the embeddings become quantized.

    With empty=True only the structure changes (buffers to be filled by load_state_dict).
    """

    def convert(linear: nn.Linear) -> QuantizedLinear:
        if empty:
            return QuantizedLinear(
                linear.in_features, linear.out_features, scheme, group, bias=linear.bias is not None
            )
        return QuantizedLinear.from_linear(linear, scheme, group)

    for layer in model.model.layers:
        for parent in _linear_parents(layer):
            for name in LINEAR_NAMES:
                if isinstance(getattr(parent, name, None), nn.Linear):
                    setattr(parent, name, convert(getattr(parent, name)))
    emb = model.model.embed_tokens
    table = nn.Linear(emb.embedding_dim, emb.num_embeddings, bias=False, device=emb.weight.device)
    table.weight = emb.weight
    qtable = convert(table)
    if model.config.labels:  # a classifier: no LM head, and its score layer stays float
        pass
    elif model.config.tie_embeddings:
        qtable.bias = model.lm_head.bias  # the head's own bias (Phi-2 style), not the table's
        model.lm_head = qtable
    else:
        model.lm_head = convert(model.lm_head)
    model.model.embed_tokens = QuantizedEmbedding(qtable)
    return model


def dequantize_modules(model: nn.Module) -> nn.Module:
    """Inverse surgery: quantized linears and embeddings back to float nn.Linear / nn.Embedding."""

    def to_linear(q: QuantizedLinear) -> nn.Linear:
        lin = nn.Linear(q.in_features, q.out_features, bias=q.bias is not None)
        lin.weight.data.copy_(q.dequantized())
        if q.bias is not None:
            lin.bias.data.copy_(q.bias.detach())
        return lin

    for layer in model.model.layers:
        for parent in _linear_parents(layer):
            for name in LINEAR_NAMES:
                if isinstance(getattr(parent, name, None), QuantizedLinear):
                    setattr(parent, name, to_linear(getattr(parent, name)))
    emb = model.model.embed_tokens
    tied_head = model.config.tie_embeddings and not model.config.labels
    if isinstance(emb, QuantizedEmbedding):
        table = model.lm_head if tied_head else None
        weight = (
            table.dequantized() if table is not None else QuantizedEmbeddingView(emb).dequantized()
        )
        model.model.embed_tokens = nn.Embedding.from_pretrained(weight, freeze=False)
        if tied_head:
            bias = model.lm_head.bias
            model.lm_head = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
            model.lm_head.weight = model.model.embed_tokens.weight
            if bias is not None:
                model.lm_head.bias = nn.Parameter(bias.detach().float())
    if isinstance(getattr(model, "lm_head", None), QuantizedLinear):
        model.lm_head = to_linear(model.lm_head)
    return model


class QuantizedEmbeddingView:
    """Read access to a QuantizedEmbedding's full float table."""

    def __init__(self, emb: QuantizedEmbedding) -> None:
        self.emb = emb

    def dequantized(self) -> torch.Tensor:
        e = self.emb
        if e.scheme == "int8":
            return dequantize_int8(e.qweight, e.scales)
        return dequantize_int4(e.qweight, e.scales, e.group)


def is_quantized(model: nn.Module) -> bool:
    """True when any module of the model holds integer weights."""
    return any(isinstance(m, QuantizedLinear | QuantizedEmbedding) for m in model.modules())
