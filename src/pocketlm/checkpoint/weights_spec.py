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

    def norm(name: str, n: int) -> None:
        vector(name + ".weight", n)
        if c.norm_kind != "rms":  # LayerNorm's and NoNorm's shift
            vector(name + ".bias", n)

    matrix("model.embed_tokens", c.vocab_size, c.resolved_embed_dim)
    out.update(encoder_embedding_tensors(c))
    if not c.has_lm_head:  # a classifier's or encoder's head stays in float (tiny, and decisive)
        out.update(classifier_tensors(c))
    else:
        if not c.tie_embeddings:
            matrix("lm_head", c.vocab_size, c.dim)
        if c.lm_head_bias:
            vector("lm_head.bias", c.vocab_size)
    if c.norm_position == "pre":  # post-norm blocks end normalised: no final norm
        norm("model.norm", c.dim)
    for i in range(c.n_layer_weights):  # shared layers (ALBERT): one layer's tensors
        p = f"model.layers.{i}."
        if c.bottleneck_dim:  # MobileBERT's layers: every linear biased
            for name, rows, cols in bottleneck_linears(c):
                matrix(p + name, rows, cols)
                vector(p + name + ".bias", rows)
            for name, width in bottleneck_norms(c):
                norm(p + name, width)
            continue
        for name in layer_norms(c):
            norm(p + name, c.resolved_head_dim if name.startswith("self_attn.") else c.dim)
        if c.n_experts:  # the router stays in float: routing decides which experts run
            out[p + "mlp.gate.weight"] = TensorSpec((c.n_experts, c.dim), FLOAT_DTYPES)
        if c.shared_expert_ffn_dim:
            out[p + "mlp.shared_expert_gate.weight"] = TensorSpec((1, c.dim), FLOAT_DTYPES)
        for name, rows, cols in layer_matrices(c):
            matrix(p + name, rows, cols)
            if name in biased_matrices(c):
                vector(p + name + ".bias", rows)
    return out


def classifier_tensors(config: ModelConfig) -> dict[str, TensorSpec]:
    """The classification head's tensors (model/heads.py): an optional pooler, the score layer
    (an encoder without labels: its pooler only)."""
    c, out = config, {}
    if c.pooler != "none":
        out["pooler.weight"] = TensorSpec((c.dim, c.dim), FLOAT_DTYPES)
        out["pooler.bias"] = TensorSpec((c.dim,), FLOAT_DTYPES)
    if not c.labels:
        return out
    out["score.weight"] = TensorSpec((len(c.labels), c.dim), FLOAT_DTYPES)
    if c.classifier_bias:
        out["score.bias"] = TensorSpec((len(c.labels),), FLOAT_DTYPES)
    return out


def encoder_embedding_tensors(config: ModelConfig) -> dict[str, TensorSpec]:
    """The encoder options' embedding tensors (model/embeddings.py), kept in float: learned
    positions, token types, the embedding norm and the projection to the hidden width (ALBERT's,
    MobileBERT's trigram one)."""
    c, s, out = config, config.embed_sum_dim, {}
    if c.position_kind == "learned":
        out["model.embed_positions.weight"] = TensorSpec((c.max_seq_len, s), FLOAT_DTYPES)
    if c.type_vocab_size:
        out["model.embed_types.weight"] = TensorSpec((c.type_vocab_size, s), FLOAT_DTYPES)
    if c.embed_norm:
        out["model.embed_norm.weight"] = TensorSpec((s,), FLOAT_DTYPES)
        if c.norm_kind != "rms":
            out["model.embed_norm.bias"] = TensorSpec((s,), FLOAT_DTYPES)
    if c.embed_proj_in:
        out["model.embed_proj.weight"] = TensorSpec((c.dim, c.embed_proj_in), FLOAT_DTYPES)
        out["model.embed_proj.bias"] = TensorSpec((c.dim,), FLOAT_DTYPES)
    return out


BIASED = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")  # with qkv_bias


def biased_matrices(config: ModelConfig) -> tuple[str, ...]:
    """Names of the layer matrices that carry a bias under this config."""
    c = config
    names = BIASED if c.qkv_bias else ()
    if c.o_bias:
        names += ("self_attn.o_proj",)
    if c.mlp_bias:
        names += tuple(n for n, _, _ in layer_matrices(c) if n.startswith("mlp."))
    return names


def layer_norms(config: ModelConfig) -> tuple[str, ...]:
    """Names (without .weight/.bias) of each decoder layer's norms, in the order they apply.

    input_layernorm is before attention, post_attention_layernorm before the MLP (Llama's names);
    with sandwich norms attn_output_norm / ffn_output_norm scale each branch's output before the
    residual add (Gemma 2's post_attention_layernorm / post_feedforward_layernorm); q_norm and
    k_norm (head_dim wide) normalise each head. Post-norm blocks (BERT) normalise after each
    residual add instead: post_attention_layernorm after attention, post_mlp_layernorm after the
    MLP.
    """
    c = config
    if c.norm_position == "post":
        qk = ("self_attn.q_norm", "self_attn.k_norm") if c.qk_norm else ()
        return (*qk, "post_attention_layernorm", "post_mlp_layernorm")
    names: tuple[str, ...] = ("input_layernorm",)
    if c.qk_norm:
        names += ("self_attn.q_norm", "self_attn.k_norm")
    if c.sandwich_norms:
        names += ("attn_output_norm",)
    if not c.parallel_block:
        names += ("post_attention_layernorm",)
    if c.sandwich_norms:
        names += ("ffn_output_norm",)
    return names


def layer_matrices(config: ModelConfig) -> tuple[tuple[str, int, int], ...]:
    """(name, rows = out features, cols = in features) of each decoder layer's linear weights,
    in the order the native backend hands them over: attention, then the MLP (gate/up/down,
    or up/down for a plain MLP; with experts, each expert's gate/up/down, then the shared one)."""
    c, ffn = config, config.resolved_ffn_dim
    attention = (
        ("self_attn.q_proj", c.q_dim, c.dim),
        ("self_attn.k_proj", c.kv_dim, c.dim),
        ("self_attn.v_proj", c.kv_dim, c.dim),
        ("self_attn.o_proj", c.dim, c.q_dim),
    )

    def gated(prefix: str, hidden: int) -> tuple[tuple[str, int, int], ...]:
        return (
            (prefix + "gate_proj", hidden, c.dim),
            (prefix + "up_proj", hidden, c.dim),
            (prefix + "down_proj", c.dim, hidden),
        )

    if c.n_experts:
        mlp = sum((gated(f"mlp.experts.{e}.", c.expert_ffn_dim) for e in range(c.n_experts)), ())
        if c.shared_expert_ffn_dim:
            mlp += gated("mlp.shared_expert.", c.shared_expert_ffn_dim)
    elif c.mlp_kind == "plain":
        mlp = (("mlp.up_proj", ffn, c.dim), ("mlp.down_proj", c.dim, ffn))
    else:
        mlp = gated("mlp.", ffn)
    return attention + mlp


def bottleneck_linears(config: ModelConfig) -> tuple[tuple[str, int, int], ...]:
    """(name, rows, cols) of a bottleneck layer's linears (model/bottleneck.py), in the order
    they apply: the projections in (the layer's own, then q/k's), attention (v reads the
    full-width input), the stacked MLPs, the layer's MLP, the projection out."""
    c, d, b, f = config, config.dim, config.bottleneck_dim, config.resolved_ffn_dim
    out = [("bottleneck_in", b, d), ("bottleneck_qk", b, d)]
    out += [("self_attn.q_proj", c.q_dim, b), ("self_attn.k_proj", c.q_dim, b)]
    out += [("self_attn.v_proj", c.q_dim, d), ("self_attn.o_proj", b, c.q_dim)]
    for j in range(c.n_ffn - 1):
        out += [(f"ffns.{j}.mlp.up_proj", f, b), (f"ffns.{j}.mlp.down_proj", b, f)]
    out += [("mlp.up_proj", f, b), ("mlp.down_proj", b, f), ("bottleneck_out", d, b)]
    return tuple(out)


def bottleneck_norms(config: ModelConfig) -> tuple[tuple[str, int], ...]:
    """(name, width) of a bottleneck layer's norms, in the order they apply."""
    b = config.bottleneck_dim
    out = [("bottleneck_in_norm", b), ("bottleneck_qk_norm", b), ("post_attention_layernorm", b)]
    out += [(f"ffns.{j}.norm", b) for j in range(config.n_ffn - 1)]
    return (*out, ("post_mlp_layernorm", b), ("bottleneck_out_norm", config.dim))


def check_quantizable(config: ModelConfig, quant: dict[str, Any], where: Path) -> None:
    """Raise ArtifactError when the config's input sizes do not fit the quantization's blocks."""
    scheme = quant["scheme"]
    if scheme not in ("int8", "int4"):
        return
    block = 32 if scheme == "int8" else quant["group_size"]
    what = "blocks of 32" if scheme == "int8" else f"groups of {block}"
    moe = bool(config.n_experts)  # with experts the dense ffn_dim is unused
    for name, cols in (
        ("dim", config.dim),
        ("q_dim", config.q_dim),
        ("ffn_dim", 0 if moe else config.resolved_ffn_dim),
        ("expert_ffn_dim", config.expert_ffn_dim),
        ("shared_expert_ffn_dim", config.shared_expert_ffn_dim),
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
