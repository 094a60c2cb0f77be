"""What structured pruning cuts: pure functions of importance scores and target sizes.

Sizes (`PruneSizes`) are uniform: every kept layer gets the same number of attention groups (a
kv head with all its query heads), FFN channels, and the model one hidden width, so the result is
an ordinary model of its family. Which layers, groups and channels survive is chosen per layer
from importance scores (compress/importance.py): the highest scores stay, in their original order.

The size policy for a parameter target (`sizes_for_target`) shrinks one axis at a time, in the
order given (default: FFN channels, hidden channels, attention groups, then layers), each down to
its floor before the next is touched (the axis that reaches the target stops the walk); then the
axes already at their floors grow back as far as the target allows. Width before depth follows
Minitron's finding that width-pruned models heal better than depth-pruned ones.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pocketlm.common.errors import ConfigError
from pocketlm.model.config import ModelConfig

AXES = ("ffn", "dim", "heads", "layers")
DEFAULT_AXES = AXES
# the least share of each axis the target policy keeps (explicit sizes may go below)
FLOORS = {"ffn": 0.25, "dim": 0.5, "heads": 0.5, "layers": 0.5}


@dataclass(frozen=True)
class PruneSizes:
    """The pruned model's uniform sizes."""

    n_layers: int
    n_kv_heads: int  # attention groups: each keeps all n_heads // n_kv_heads of its query heads
    ffn_dim: int
    dim: int


@dataclass(frozen=True)
class PruneChoice:
    """What survives: kept layers (original indices, in order), and per kept layer its kept
    attention groups and FFN channels; the kept hidden channels (shared by every layer)."""

    layers: tuple[int, ...]
    kv_groups: tuple[tuple[int, ...], ...]
    ffn_channels: tuple[tuple[int, ...], ...]
    dim_channels: tuple[int, ...]


def sizes_of(config: ModelConfig) -> PruneSizes:
    """The sizes a config has now."""
    return PruneSizes(config.n_layers, config.n_kv_heads, config.resolved_ffn_dim, config.dim)


def check_prunable(config: ModelConfig) -> None:
    """ConfigError naming the feature when structured pruning does not handle this model."""
    reasons = {
        "a mixture of experts (prune the experts' width is not implemented)": config.n_experts,
        "an encoder or classifier (language models only)": not config.has_lm_head,
        "shared layers (ALBERT)": config.shared_layers,
        "bottleneck layers (MobileBERT)": config.bottleneck_dim,
        "an embedding projection (embed_dim != dim)": config.embed_proj_in,
        "learned absolute positions": config.position_kind != "rope",
    }
    bad = [reason for reason, present in reasons.items() if present]
    if bad:
        raise ConfigError(f"structured pruning does not handle {'; '.join(bad)}")


def dim_prunable(config: ModelConfig) -> bool:
    """Whether hidden channels can be cut exactly-where-dead: RMSNorm rescales (see
    pruned_config); LayerNorm's mean over channels would shift."""
    return config.norm_kind == "rms"


def pruned_config(
    config: ModelConfig, sizes: PruneSizes, layers: Sequence[int] | None = None
) -> ModelConfig:
    """The config of the pruned model; `layers` (kept original indices) carries per-layer options
    (layer_types). head_dim is pinned (whole heads go, never dims inside one); a narrower RMSNorm
    divides its sum of squares by fewer channels, so eps scales by dim/new_dim to keep
    normalisation exact when the cut channels were zero (the weights scale in surgery)."""
    if not 1 <= sizes.n_kv_heads <= config.n_kv_heads:
        raise ConfigError(
            f"attention groups must be in 1..{config.n_kv_heads}, got {sizes.n_kv_heads}"
        )
    for name, new, old in (
        ("layers", sizes.n_layers, config.n_layers),
        ("ffn_dim", sizes.ffn_dim, config.resolved_ffn_dim),
        ("dim", sizes.dim, config.dim),
    ):
        if not 1 <= new <= old:
            raise ConfigError(f"pruned {name} must be in 1..{old}, got {new}")
    if sizes.dim != config.dim and not dim_prunable(config):
        raise ConfigError(
            f"hidden channels (dim) are pruned under RMSNorm only; this model has {config.norm_kind!r} norms"
        )
    keep = list(layers) if layers is not None else list(range(sizes.n_layers))
    if len(keep) != sizes.n_layers:
        raise ConfigError(f"{len(keep)} layers named for a depth of {sizes.n_layers}")
    n_heads = sizes.n_kv_heads * (config.n_heads // config.n_kv_heads)
    hd = config.resolved_head_dim
    changes: dict = {
        "n_layers": sizes.n_layers,
        "n_kv_heads": sizes.n_kv_heads,
        "n_heads": n_heads,
        # pinned only where dim // n_heads would differ: the canonical form an export reads back
        "head_dim": 0 if sizes.dim == n_heads * hd else hd,
        "ffn_dim": sizes.ffn_dim,
        "dim": sizes.dim,
        "norm_eps": config.norm_eps * config.dim / sizes.dim,
    }
    if config.layer_types:
        changes["layer_types"] = tuple(config.layer_types[i] for i in keep)
    return dataclasses.replace(config, **changes)


def params_of(config: ModelConfig, sizes: PruneSizes) -> int:
    """Parameters (tied embeddings once) of the model these sizes make."""
    return pruned_config(config, sizes).num_params()


def _step(size: int) -> int:
    """Granularity of a width: multiples of 32 keep int8/int4 quantization possible."""
    for step in (32, 8):
        if size % step == 0 and size >= 4 * step:
            return step
    return 1


def _candidates(axis: str, config: ModelConfig) -> list[int]:
    """Sizes an axis may take under the policy, largest first, down to its floor."""
    full = getattr(sizes_of(config), _FIELD[axis])
    floor = max(1, int(np.ceil(FLOORS[axis] * full)))
    step = _step(full) if axis in ("ffn", "dim") else 1
    return sorted({full, *(n for n in range(floor, full) if n % step == 0)}, reverse=True)


_FIELD = {"ffn": "ffn_dim", "dim": "dim", "heads": "n_kv_heads", "layers": "n_layers"}


def sizes_for_target(
    config: ModelConfig,
    target_params: int,
    *,
    axes: Sequence[str] = DEFAULT_AXES,
    fixed: dict[str, int] | None = None,
) -> PruneSizes:
    """Uniform sizes with at most `target_params` parameters by the module's policy; `fixed`
    axes (by AXES name) keep the sizes given and the others are sized around them."""
    fixed = dict(fixed or {})
    unknown = set(axes) - set(AXES) | set(fixed) - set(AXES)
    if unknown:
        raise ConfigError(f"unknown pruning axes {sorted(unknown)}: use {', '.join(AXES)}")
    sizes = dataclasses.replace(sizes_of(config), **{_FIELD[a]: n for a, n in fixed.items()})
    free = [a for a in axes if a not in fixed and (a != "dim" or dim_prunable(config))]

    def fits(s: PruneSizes) -> bool:
        return params_of(config, s) <= target_params

    def largest(axis: str, s: PruneSizes) -> PruneSizes | None:
        for n in _candidates(axis, config):
            trial = dataclasses.replace(s, **{_FIELD[axis]: n})
            if fits(trial):
                return trial
        return None

    walked: list[str] = []
    for axis in free:
        if fits(sizes):
            break
        walked.append(axis)
        found = largest(axis, sizes)
        if found is None:  # not enough: this axis at its floor, the next one shrinks
            sizes = dataclasses.replace(sizes, **{_FIELD[axis]: _candidates(axis, config)[-1]})
        else:
            sizes = found
    if not fits(sizes):
        raise ConfigError(
            f"cannot reach {target_params:,} parameters with the axes {', '.join(free) or 'none'} at "
            f"their floors ({params_of(config, sizes):,} left): give smaller explicit sizes "
            "(--layers/--heads/--ffn-dim/--dim) or a larger target"
        )
    for axis in walked[:-1]:  # grow back what the last axis's coarse step left room for
        sizes = largest(axis, sizes) or sizes
    return sizes


def target_from_ratio(config: ModelConfig, ratio: float) -> int:
    """The parameter target that keeps `ratio` of the non-embedding parameters."""
    if not 0 < ratio <= 1:
        raise ConfigError(f"--ratio must be in (0, 1], got {ratio}")
    body = config.num_params(include_embeddings=False)
    return config.num_params() - body + int(ratio * body)


def top_indices(scores: Sequence[float] | np.ndarray, keep: int) -> tuple[int, ...]:
    """Indices of the `keep` highest scores, in ascending index order (ties: the earlier index)."""
    scores = np.asarray(scores, dtype=np.float64)
    if not 0 <= keep <= len(scores):
        raise ValueError(f"cannot keep {keep} of {len(scores)}")
    order = np.argsort(-scores, kind="stable")[:keep]
    return tuple(sorted(int(i) for i in order))


def group_scores(head_scores: Sequence[float] | np.ndarray, n_kv_heads: int) -> np.ndarray:
    """(n_heads,) per-query-head scores -> (n_kv_heads,) per attention group: the sum of its
    query heads' (query head h reads kv head h // (n_heads // n_kv_heads))."""
    heads = np.asarray(head_scores, dtype=np.float64)
    return heads.reshape(n_kv_heads, -1).sum(axis=1)  # (KV, heads per group) -> (KV,)


def choose(
    sizes: PruneSizes,
    layer_scores: np.ndarray,
    head_scores: np.ndarray,
    ffn_scores: np.ndarray,
    dim_scores: np.ndarray,
    n_kv_heads: int,
) -> PruneChoice:
    """The most important layers (layer_scores (L,)), and in each kept layer its most important
    attention groups (head_scores (L, n_heads)) and FFN channels (ffn_scores (L, ffn)); the most
    important hidden channels (dim_scores (dim,))."""
    layers = top_indices(layer_scores, sizes.n_layers)
    kv = tuple(
        top_indices(group_scores(head_scores[i], n_kv_heads), sizes.n_kv_heads) for i in layers
    )
    ffn = tuple(top_indices(ffn_scores[i], sizes.ffn_dim) for i in layers)
    return PruneChoice(layers, kv, ffn, top_indices(dim_scores, sizes.dim))


def query_heads(kv_groups: Sequence[int], heads_per_group: int) -> list[int]:
    """The query heads of the kept attention groups, in order."""
    return [g * heads_per_group + j for g in kv_groups for j in range(heads_per_group)]
