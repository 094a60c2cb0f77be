"""Sparse mixture-of-experts feed-forward (Mixtral, Qwen2-MoE, Qwen3-MoE): a router picks
`n_experts_per_token` of `n_experts` gated MLPs for each token, and only those run.

The arithmetic follows `transformers`' sparse MoE blocks step for step, so fp32 outputs agree
with them to rounding: the router's logits are a linear map in the activations' dtype, the
softmax over all experts is taken in fp32, then the top k, renormalised to sum to one for
`router = "softmax_topk"` (Mixtral; Qwen with norm_topk_prob) and left as they are for
`"softmax_topk_raw"` (Qwen with norm_topk_prob false). Softmax-then-top-k-then-renormalise is
the same number as Mixtral's published top-k-then-softmax-over-k, in the order transformers
computes it. Each expert's output is scaled by its fp32 routing weight, cast back to the
activations' dtype and summed per token (transformers sums in ascending expert order, PocketLM
in order of rank: the same number for k = 2, within rounding for larger k). In bf16 this is
Mixtral's arithmetic exactly; transformers' Qwen blocks round the routing weights to bf16
first, so bf16 Qwen outputs differ from theirs by a rounding step. Qwen2-MoE adds a shared
expert every token uses, scaled by sigmoid(shared_expert_gate(x)).

Experts are separate nn.Linear modules (`mlp.experts.{e}.gate_proj` ...) so quantization
surgery treats each expert matrix like any other linear; the router (`mlp.gate`) and the
shared expert's gate are never quantized. Not implemented: the auxiliary load-balancing loss
(fine-tuning with a frozen router does not need it; training a router from scratch would) and
Mixtral's training-time router jitter (router_jitter_noise, 0 in released configs).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from pocketlm.model.config import ModelConfig

ACTIVATIONS = {
    "silu": F.silu,
    "gelu_tanh": functools.partial(F.gelu, approximate="tanh"),
    "gelu": F.gelu,
}


class GatedExpert(nn.Module):
    """One expert: down(act(gate(x)) * up(x)), no biases."""

    def __init__(self, dim: int, hidden: int, activation: str) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)
        self.act = ACTIVATIONS[activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


def route(logits: torch.Tensor, k: int, renormalise: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Router logits (N, E) -> (weights float32 (N, k), expert ids int64 (N, k)).

    Softmax over all experts in fp32, the k largest, divided by their sum when renormalising.
    Ties go to the lower expert id (torch.topk), as in transformers.
    """
    probs = torch.softmax(logits.float(), dim=-1)  # (N, E)
    weights, experts = torch.topk(probs, k, dim=-1)  # (N, k)
    if renormalise:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, experts


class MoE(nn.Module):
    """Sparse MoE feed-forward: x (..., dim) -> (..., dim), running only the routed experts."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.k = config.n_experts_per_token
        self.renormalise = config.router == "softmax_topk"
        self.gate = nn.Linear(config.dim, config.n_experts, bias=False)  # the router
        self.experts = nn.ModuleList(
            GatedExpert(config.dim, config.expert_ffn_dim, config.activation)
            for _ in range(config.n_experts)
        )
        self.shared_expert: GatedExpert | None = None
        self.shared_expert_gate: nn.Linear | None = None
        if config.shared_expert_ffn_dim:
            self.shared_expert = GatedExpert(
                config.dim, config.shared_expert_ffn_dim, config.activation
            )
            self.shared_expert_gate = nn.Linear(config.dim, 1, bias=False)

    def router_logits(self, x: torch.Tensor) -> torch.Tensor:
        """(N, dim) -> (N, n_experts) in x's dtype, as transformers computes them."""
        return F.linear(x, self.gate.weight.to(x.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])  # (N, dim)
        weights, experts = route(self.router_logits(flat), self.k, self.renormalise)  # (N, k)
        n_tokens = flat.shape[0]
        if n_tokens == 0:
            return torch.zeros_like(x)
        # Group the N*k (token, expert) slots by expert: a stable sort keeps each expert's
        # tokens in order, so expert e's rows are the next counts[e] sorted slots.
        expert_of_slot = experts.reshape(-1)  # (N*k,)
        order = torch.argsort(expert_of_slot, stable=True)  # (N*k,)
        token_of_slot = order // self.k  # (N*k,) the token each sorted slot came from
        counts = torch.bincount(expert_of_slot, minlength=len(self.experts)).tolist()
        outputs, start = [], 0
        for expert, count in zip(self.experts, counts):
            if count:
                rows = flat.index_select(0, token_of_slot[start : start + count])  # (count, dim)
                outputs.append(expert(rows))
                start += count
        # Back to (token, rank) order with one gather: index_add_ of a few rows costs
        # milliseconds on CPU (a scatter), a gather and a sum over k microseconds.
        by_slot = torch.cat(outputs).index_select(0, torch.argsort(order))  # (N*k, dim)
        scaled = (by_slot * weights.reshape(-1, 1)).to(flat.dtype)  # fp32 weights, as transformers
        out = scaled.view(n_tokens, self.k, -1).sum(dim=1)  # (N, dim)
        if self.shared_expert is not None:
            gate = torch.sigmoid(F.linear(flat, self.shared_expert_gate.weight.to(flat.dtype)))
            out = out + gate * self.shared_expert(flat)  # gate (N, 1)
        return out.reshape(shape)
