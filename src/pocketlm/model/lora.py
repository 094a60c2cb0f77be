"""LoRA and QLoRA by module surgery: a frozen linear plus a trained low-rank update.

`apply_lora` swaps chosen linears (nn.Linear, or the int8/int4 QuantizedLinear of a quantized
model: QLoRA) for a LoRALinear holding the original as `base_layer` and two small matrices:

    y = base_layer(x) + scale * B(A(dropout(x))),   A (rank, in), B (out, rank)

scale = alpha / rank (rsLoRA: alpha / sqrt(rank)). A starts Kaiming-uniform and B at zeros, as
`peft` does, so a fresh adapter leaves the model's outputs exactly as they were. Parameter names
follow peft: `<module path>.lora_A.weight`, `<module path>.lora_B.weight` and the base's own
tensors under `<module path>.base_layer.`. A quantized base stays integer: its forward
dequantizes on the fly and its backward (the gradient of the input, which LoRA needs below it)
dequantizes again instead of keeping a float copy of the weight for the whole step
(model/quantized.py), in wrapped and unwrapped layers alike.

`merge_lora` folds the update into plain float linears. For a quantized base the merged layer is
the dequantized weight plus the update, in fp32: the merged model computes what base + adapter
computed, and it is a float model. Nothing here knows of optimizers or data.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

import torch
from torch import nn

from pocketlm.common.errors import ArtifactError, ConfigError
from pocketlm.model.quantized import LINEAR_NAMES, QuantizedLinear

ALL_LINEAR = "all-linear"
BASE_QUANT = ("none", "int8", "int4")


@dataclass(frozen=True)
class LoRAConfig:
    """An adapter's shape and the form of the base it trains over (rank 0: no LoRA)."""

    rank: int = 0
    alpha: float = 16.0
    dropout: float = 0.0
    # comma-separated module-name suffixes ("q_proj,v_proj"), or "all-linear" (every linear of
    # the decoder layers, mixture-of-experts experts included; add ",lm_head" for the head)
    targets: str = ALL_LINEAR
    rslora: bool = False  # scale alpha / sqrt(rank) instead of alpha / rank
    # QLoRA over a float base: quantize it in memory first ("none": train over it as stored;
    # a base that is already int8/int4 is QLoRA as it is)
    base_quant: str = "none"
    group_size: int = 32  # int4 group size when base_quant is int4

    def __post_init__(self) -> None:
        if self.rank < 0:
            raise ValueError("lora.rank must be >= 0 (0: no LoRA)")
        if self.rank and self.alpha <= 0:
            raise ValueError("lora.alpha must be > 0")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError("lora.dropout must be in [0, 1)")
        if self.base_quant not in BASE_QUANT:
            raise ValueError(f"lora.base_quant must be one of {', '.join(BASE_QUANT)}")

    @property
    def scale(self) -> float:
        """The factor on B(A(x))."""
        return lora_scale(self.rank, self.alpha, self.rslora)


def lora_scale(rank: int, alpha: float, rslora: bool = False) -> float:
    """alpha / rank, or alpha / sqrt(rank) for rsLoRA."""
    return alpha / math.sqrt(rank) if rslora else alpha / rank


class LoRALinear(nn.Module):
    """base_layer(x) + scale * lora_B(lora_A(dropout(x))); the base is frozen by the caller."""

    def __init__(
        self,
        base_layer: nn.Module,
        rank: int,
        alpha: float,
        dropout: float = 0.0,
        *,
        rslora: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if rank < 1:
            raise ConfigError(f"LoRA rank must be >= 1, got {rank}")
        self.in_features, self.out_features = base_layer.in_features, base_layer.out_features
        self.base_layer = base_layer
        self.rank, self.alpha, self.rslora = rank, float(alpha), rslora
        self.scale = lora_scale(rank, alpha, rslora)
        device = next(iter(base_layer.state_dict().values())).device
        self.lora_A = nn.Linear(self.in_features, rank, bias=False, device=device)
        self.lora_B = nn.Linear(rank, self.out_features, bias=False, device=device)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        with torch.no_grad():
            # peft's initialisation, drawn on the CPU with the caller's generator: the same
            # adapter start on every device
            a = torch.empty(rank, self.in_features)
            nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=generator)
            self.lora_A.weight.copy_(a)
            self.lora_B.weight.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)  # (..., out); a quantized base keeps no float weight for backward
        x_a = self.lora_dropout(x)
        if not torch.is_autocast_enabled(x.device.type):  # autocast picks the dtype itself; a
            x_a = x_a.to(self.lora_A.weight.dtype)  # cast here would be a copy kept per linear
        a = self.lora_A(x_a)  # (..., rank)
        b_t = self.lora_B.weight.t()  # (rank, out)
        if a.dtype != y.dtype:  # a float adapter on a model run in another dtype
            a, b_t = a.to(y.dtype), b_t.to(y.dtype)
        # y + scale * a @ B^T in one addmm: no (..., out) temporaries for B's output, its scaled
        # copy and the sum, in the forward pass or the backward (they fragment the CPU heap)
        out = torch.addmm(
            y.reshape(-1, self.out_features), a.reshape(-1, self.rank), b_t, alpha=self.scale
        )  # (N, out)
        return out.view(y.shape)

    def delta_weight(self) -> torch.Tensor:
        """scale * B @ A in fp32: (out, in), what merging adds to the base weight."""
        return (self.lora_B.weight.float() @ self.lora_A.weight.float()) * self.scale

    def base_weight(self) -> torch.Tensor:
        """The base's float weight (out, in): a quantized one dequantized to fp32."""
        if isinstance(self.base_layer, QuantizedLinear):
            return self.base_layer.dequantized(torch.float32)
        return self.base_layer.weight

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha:g}, scale={self.scale:g}"


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    """Module path -> LoRALinear, in the model's module order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def _linears(model: nn.Module) -> dict[str, nn.Module]:
    """Every float or quantized linear outside LoRA wrappers, by module path."""
    found: dict[str, nn.Module] = {}
    inside = [name + "." for name in lora_modules(model)]
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear | QuantizedLinear) and not any(
            name.startswith(prefix) for prefix in inside
        ):
            found[name] = module
    return found


def decoder_linears(model: nn.Module) -> list[str]:
    """Paths of the decoder layers' projections (attention, MLP, every expert and the shared
    expert): the linears quantization reaches, and "all-linear". Routers stay out: the mixture
    of experts reads their weights directly."""
    return [
        name
        for name in _linears(model)
        if name.startswith("model.layers.") and name.rsplit(".", 1)[-1] in LINEAR_NAMES
    ]


def resolve_targets(model: nn.Module, targets: str | Iterable[str]) -> list[str]:
    """Module paths a target list names: suffixes ("q_proj", "self_attn.o_proj", full paths),
    "all-linear", or both; in the model's module order. ConfigError for a target that names
    nothing or a linear LoRA cannot wrap."""
    wanted = (
        [t.strip() for t in targets.split(",") if t.strip()]
        if isinstance(targets, str)
        else list(targets)
    )
    if not wanted:
        raise ConfigError("no LoRA targets: name module suffixes (q_proj,v_proj) or all-linear")
    linears = _linears(model)
    wrappable = set(decoder_linears(model)) | ({"lm_head"} & set(linears))
    chosen: set[str] = set()
    for target in wanted:
        if target == ALL_LINEAR:
            chosen |= set(decoder_linears(model))
            continue
        matched = [p for p in linears if p == target or p.endswith("." + target)]
        if not matched:
            leaves = sorted({p.rsplit(".", 1)[-1] for p in wrappable})
            raise ConfigError(
                f"LoRA target {target!r} names no linear layer of this model; choose among "
                f"{', '.join(leaves)} (module-name suffixes), or {ALL_LINEAR}"
            )
        refused = [p for p in matched if p not in wrappable]
        if refused:
            raise ConfigError(
                f"LoRA target {target!r} names {refused[0]}, which LoRA cannot wrap (a router "
                "is read by weight); LoRA wraps the decoder layers' projections and lm_head"
            )
        chosen |= set(matched)
    return [p for p in linears if p in chosen]


def apply_lora(
    model: nn.Module,
    rank: int,
    alpha: float,
    targets: str | Iterable[str] = ALL_LINEAR,
    dropout: float = 0.0,
    *,
    rslora: bool = False,
    seed: int = 0,
) -> list[str]:
    """Module surgery in place: wrap the targeted linears in LoRALinear, freeze every other
    parameter; returns the wrapped module paths. A's initial values follow from `seed`."""
    if lora_modules(model):
        raise ConfigError("this model already has LoRA layers: merge them first")
    paths = resolve_targets(model, targets)
    generator = torch.Generator().manual_seed(seed)
    for param in model.parameters():
        param.requires_grad_(False)
    for path in paths:
        parent_path, _, leaf = path.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        wrapped = LoRALinear(
            getattr(parent, leaf), rank, alpha, dropout, rslora=rslora, generator=generator
        )
        setattr(parent, leaf, wrapped)
    return paths


def lora_parameter_names(model: nn.Module) -> list[str]:
    """Names (as in model.named_parameters()) of every LoRA A and B matrix."""
    return [f"{path}.{m}.weight" for path in lora_modules(model) for m in ("lora_A", "lora_B")]


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapter: `<module path>.lora_A.weight` (rank, in) and `.lora_B.weight` (out, rank)."""
    out: dict[str, torch.Tensor] = {}
    for path, module in lora_modules(model).items():
        out[f"{path}.lora_A.weight"] = module.lora_A.weight.detach()
        out[f"{path}.lora_B.weight"] = module.lora_B.weight.detach()
    return out


@torch.no_grad()
def load_lora_state(model: nn.Module, tensors: Mapping[str, torch.Tensor], where: str) -> None:
    """Copy adapter tensors into a model's LoRA layers; ArtifactError naming the tensor when the
    names or shapes disagree (another target list or rank)."""
    own = lora_state_dict(model)
    missing, unexpected = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
    if missing or unexpected:
        raise ArtifactError(
            f"{where}: the adapter's tensors do not fit the LoRA layers (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]})"
        )
    for name, target in own.items():
        value = tensors[name]
        if tuple(value.shape) != tuple(target.shape):
            raise ArtifactError(
                f"{where}: tensor {name} is {tuple(value.shape)}, the model's LoRA layer "
                f"needs {tuple(target.shape)}"
            )
        target.copy_(value)


def _shared_elsewhere(model: nn.Module, path: str, tensor: torch.Tensor) -> bool:
    """True when another module holds the same tensor (tied embeddings)."""
    for name, other in model.named_parameters(remove_duplicate=False):
        if other is tensor and not name.startswith(path + "."):
            return True
    for name, other in model.named_buffers(remove_duplicate=False):
        if other is tensor and not name.startswith(path + "."):
            return True
    return False


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every LoRA layer into a plain nn.Linear (base weight + scale * B @ A, computed in
    fp32) in place. A quantized base merges into its dequantized fp32 weight: the merged layer
    is float. A head tied to the embeddings gets its own weight and the config is untied."""
    for path, module in lora_modules(model).items():
        base = module.base_layer
        tied = isinstance(base, nn.Linear) and _shared_elsewhere(
            model, path + ".base_layer", base.weight
        )
        if isinstance(base, QuantizedLinear):
            tied = _shared_elsewhere(model, path + ".base_layer", base.qweight)
        weight = module.base_weight()
        dtype = weight.dtype if isinstance(base, nn.Linear) else torch.float32
        merged = nn.Linear(
            module.in_features,
            module.out_features,
            bias=base.bias is not None,
            device=weight.device,
            dtype=dtype,
        )
        merged.weight.copy_((weight.float() + module.delta_weight()).to(dtype))
        if base.bias is not None:
            merged.bias.copy_(base.bias.to(dtype))
        parent_path, _, leaf = path.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        setattr(parent, leaf, merged)
        config = getattr(model, "config", None)
        if tied and path == "lm_head" and getattr(config, "tie_embeddings", False):
            model.config = replace(config, tie_embeddings=False)
    return model


def cast_frozen_linears(model: nn.Module, dtype: torch.dtype) -> int:
    """Store every frozen float nn.Linear (a LoRA base, all of whose parameters are frozen) in
    `dtype`; returns how many. Under autocast in that dtype the computation is unchanged (autocast
    casts a weight to it for every matmul anyway) but the fp32 masters and the per-step casts,
    kept for backward, are gone. A weight shared with another module (a tied head) is left."""
    counts: dict[int, int] = {}
    for module in model.modules():
        for p in module.parameters(recurse=False):
            counts[id(p)] = counts.get(id(p), 0) + 1
    cast = 0
    for module in model.modules():
        params = list(module.parameters(recurse=False))
        if (
            type(module) is nn.Linear
            and params
            and not any(p.requires_grad or counts[id(p)] > 1 for p in params)
            and module.weight.is_floating_point()
        ):
            module.to(dtype)
            cast += 1
    return cast


def quantize_base(model: nn.Module, config: LoRAConfig) -> None:
    """QLoRA over a float base: quantize its linears and embeddings in place (config.base_quant);
    a base already quantized the same way is kept, another scheme refused."""
    from pocketlm.model.quantized import is_quantized, quantize_modules

    if config.base_quant == "none":
        return
    if is_quantized(model):
        schemes = {m.scheme for m in model.modules() if isinstance(m, QuantizedLinear)}
        if schemes != {config.base_quant}:
            raise ConfigError(
                f"the base is already {'/'.join(sorted(schemes))}-quantized: drop the "
                f"{config.base_quant} base quantization, or start from the float model"
            )
        return
    try:
        quantize_modules(model, config.base_quant, config.group_size)  # type: ignore[arg-type]
    except ValueError as exc:
        raise ConfigError(f"cannot quantize the base to {config.base_quant}: {exc}") from exc
