"""What model.safetensors must hold for a config and a quantization: every tensor, its exact shape
and its allowed dtypes. Both loaders (native and torch) check a file against this before they
use it, so they accept and refuse the same files. No torch here: the native path is torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pocketlm.checkpoint.json_files import read_json_object
from pocketlm.checkpoint.layout import CONFIG_FILE, QUANT_FILE
from pocketlm.common.errors import ArtifactError
from pocketlm.model.config import ModelConfig

SCHEMES = ("none", "bf16", "int8", "int4")
FLOAT_DTYPES = ("F32", "BF16")
_QUANT_KEYS = {"scheme", "group_size", "source"}
DEFAULT_GROUP = 32  # int4 group size of artifacts whose quantization.json does not say


@dataclass(frozen=True)
class TensorSpec:
    """A tensor the config implies: its exact shape and the dtypes it may be stored in."""

    shape: tuple[int, ...]
    dtypes: tuple[str, ...]


def read_quantization(directory: Path) -> dict[str, Any]:
    """The artifact's quantization.json, validated ({'scheme': 'none'} when there is none).

    int4 always carries its group size (a multiple of 32; 32 when the file does not say).
    """
    path = Path(directory) / QUANT_FILE
    if not path.is_file():
        return {"scheme": "none"}
    quant = read_json_object(path)
    unknown = set(quant) - _QUANT_KEYS
    if unknown:
        raise ArtifactError(
            f"{path}: unknown keys {sorted(unknown)} (known: {sorted(_QUANT_KEYS)})"
        )
    scheme = quant.get("scheme")
    if scheme not in SCHEMES:
        raise ArtifactError(f"{path}: scheme {scheme!r} is not one of {', '.join(SCHEMES)}")
    group = quant.get("group_size")
    if group is not None and (
        not isinstance(group, int) or isinstance(group, bool) or group < 32 or group % 32
    ):
        raise ArtifactError(f"{path}: group_size {group!r} is not a positive multiple of 32")
    if scheme == "int4" and group is None:
        quant = {**quant, "group_size": DEFAULT_GROUP}
    return quant


def expected_tensors(config: ModelConfig, quant: dict[str, Any]) -> dict[str, TensorSpec]:
    """name -> TensorSpec of every tensor a model with this config and quantization stores."""
    scheme = quant["scheme"]
    group = quant.get("group_size") or DEFAULT_GROUP
    out: dict[str, TensorSpec] = {}

    def matrix(prefix: str, rows: int, cols: int) -> None:
        if scheme == "int8":  # per row: w = q * scale[row]
            out[f"{prefix}.qweight"] = TensorSpec((rows, cols), ("I8",))
            out[f"{prefix}.scales"] = TensorSpec((rows,), ("F32",))
        elif scheme == "int4":  # two values a byte, one fp16 scale per group of a row
            out[f"{prefix}.qweight"] = TensorSpec((rows, cols // 2), ("U8",))
            out[f"{prefix}.scales"] = TensorSpec((rows, cols // group), ("F16",))
        else:
            out[f"{prefix}.weight"] = TensorSpec((rows, cols), FLOAT_DTYPES)

    def vector(name: str, n: int) -> None:
        out[name] = TensorSpec((n,), FLOAT_DTYPES)

    c = config
    matrix("model.embed_tokens", c.vocab_size, c.dim)
    if not c.tie_embeddings:
        matrix("lm_head", c.vocab_size, c.dim)
    vector("model.norm.weight", c.dim)
    for i in range(c.n_layers):
        p = f"model.layers.{i}."
        vector(p + "input_layernorm.weight", c.dim)
        vector(p + "post_attention_layernorm.weight", c.dim)
        for name, rows, cols in layer_matrices(c):
            matrix(p + name, rows, cols)
            if c.qkv_bias and name in BIASED:
                vector(p + name + ".bias", rows)
    return out


BIASED = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")  # with qkv_bias


def layer_matrices(config: ModelConfig) -> tuple[tuple[str, int, int], ...]:
    """(name, rows = out features, cols = in features) of each decoder layer's linear weights,
    in the order the native backend hands them over."""
    c, ffn = config, config.resolved_ffn_dim
    return (
        ("self_attn.q_proj", c.q_dim, c.dim),
        ("self_attn.k_proj", c.kv_dim, c.dim),
        ("self_attn.v_proj", c.kv_dim, c.dim),
        ("self_attn.o_proj", c.dim, c.q_dim),
        ("mlp.gate_proj", ffn, c.dim),
        ("mlp.up_proj", ffn, c.dim),
        ("mlp.down_proj", c.dim, ffn),
    )


def check_quantizable(config: ModelConfig, quant: dict[str, Any], where: Path) -> None:
    """Raise ArtifactError when the config's input sizes do not fit the quantization's blocks."""
    scheme = quant["scheme"]
    if scheme not in ("int8", "int4"):
        return
    block = 32 if scheme == "int8" else quant["group_size"]
    what = "blocks of 32" if scheme == "int8" else f"groups of {block}"
    for name, cols in (
        ("dim", config.dim),
        ("q_dim", config.q_dim),
        ("ffn_dim", config.resolved_ffn_dim),
    ):
        if cols % block:
            raise ArtifactError(
                f"{where}: {scheme} stores rows in {what}, but {CONFIG_FILE} has "
                f"{name} = {cols}; {QUANT_FILE} and the config disagree"
            )


def check_weights(
    header: dict[str, Any], config: ModelConfig, quant: dict[str, Any], path: Path
) -> None:
    """Raise ArtifactError naming the file and tensor unless the safetensors header holds exactly
    the tensors the config and quantization imply, each of its shape and an allowed dtype."""
    check_quantizable(config, quant, path)
    spec = expected_tensors(config, quant)
    about = CONFIG_FILE
    if quant["scheme"] != "none":
        about += f" with {QUANT_FILE} (scheme {quant['scheme']!r})"
    missing = [n for n in spec if n not in header]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ArtifactError(f"{path}: tensor {missing[0]!r}{more} is missing, expected by {about}")
    unexpected = sorted(n for n in header if n not in spec)
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise ArtifactError(
            f"{path}: unexpected tensor {unexpected[0]!r}{more}, not expected by {about}"
        )
    for name, want in spec.items():
        info = header[name]
        if tuple(info["shape"]) != want.shape:
            raise ArtifactError(
                f"{path}: tensor {name!r} has shape {list(info['shape'])}, expected "
                f"{list(want.shape)} by {about}"
            )
        if info["dtype"] not in want.dtypes:
            raise ArtifactError(
                f"{path}: tensor {name!r} is {info['dtype']}, expected {' or '.join(want.dtypes)} "
                f"by {about}"
            )
