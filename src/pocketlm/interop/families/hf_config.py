"""Hugging Face config.json <-> ModelConfig, for any family spec, in both config styles.

Reads what transformers 4.x writes (rope_theta, rope_scaling, partial_rotary_factor, torch_dtype,
Gemma 3's rope_local_base_freq and sliding_window_pattern) and what transformers 5 writes
(rope_parameters, per layer type for Gemma 3, layer_types, dtype); a key config.json leaves out
takes the value transformers assumes for the family (FamilySpec.defaults). Writes both styles at
once, so transformers 4.45+ and 5.x load the result. Anything PocketLM does not implement (a rope
type, a layer type, a flag) is an UnsupportedModelError naming the key and its value. A family's
*ForSequenceClassification config reads as a classifier (families/classifier_config.py).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import fields, replace
from typing import Any

from pocketlm.common.errors import ConfigError, UnsupportedModelError
from pocketlm.interop.families.classifier_config import classifier_keys, classifier_options
from pocketlm.interop.families.encoder_config import encoder_hf_config, encoder_model_config
from pocketlm.interop.families.encoder_names import export_names
from pocketlm.interop.families.spec import FamilySpec
from pocketlm.model.config import ModelConfig

# HF activation names -> ours (a spec may override: Gemma 1 reads "gelu" as the tanh form)
ACTIVATIONS = {
    "silu": "silu",
    "swish": "silu",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_new": "gelu_tanh",
    "gelu": "gelu",
}
_WRITE_ACTIVATIONS = {"silu": "silu", "gelu_tanh": "gelu_pytorch_tanh", "gelu": "gelu"}
_LAYER_TYPES = {"full_attention": "full", "sliding_attention": "sliding"}
_NESTED_ROPE = ("full_attention", "sliding_attention")
# Options written by other means, or meaningless at inference: not compared on export.
_NOT_COMPARED = {"init_std", "dropout"}


def _value(spec: FamilySpec, hf: Mapping[str, Any], key: str) -> Any:
    """config.json's value for key, or what transformers assumes when it is absent."""
    return hf[key] if key in hf else spec.defaults.get(key)


def _unsupported(spec: FamilySpec, key: str, value: Any, what: str = "") -> UnsupportedModelError:
    hint = f" ({what})" if what else ""
    return UnsupportedModelError(
        f"{spec.name} config.json: {key} = {value!r} is not supported by PocketLM{hint}"
    )


def model_config(
    spec: FamilySpec, hf: Mapping[str, Any], tensor_names: Collection[str] | None = None
) -> ModelConfig:
    """The ModelConfig of a Hugging Face config of this family; UnsupportedModelError for what
    PocketLM does not implement, ConfigError for inconsistent values. `tensor_names` (the
    checkpoint's) settle what a config leaves to the weights (an encoder's pooler)."""
    v = lambda key: _value(spec, hf, key)  # noqa: E731
    if hf.get("quantization_config"):
        method = hf["quantization_config"].get("quant_method", "?")
        raise UnsupportedModelError(
            f"{spec.name} config.json: a pre-quantized checkpoint ({method}); import the float "
            "(bf16/fp16/fp32) checkpoint and quantize it with `pocketlm quantize`"
        )
    if spec.encoder is not None:  # BERT and kin spell their configs their own way
        activations = {**ACTIVATIONS, **spec.activations}
        return encoder_model_config(spec, hf, activations, tensor_names)
    for key, allowed in spec.refused.items():
        if v(key) not in allowed:
            raise _unsupported(spec, key, v(key))
    dim, n_heads = v("hidden_size"), v("num_attention_heads")
    head_dim = v("head_dim") or dim // n_heads
    n_layers = v("num_hidden_layers")
    opts: dict[str, Any] = dict(
        vocab_size=v("vocab_size"),
        dim=dim,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=v("num_key_value_heads") or n_heads,
        ffn_dim=v("intermediate_size"),
        head_dim=0 if head_dim * n_heads == dim else head_dim,
        max_seq_len=v("max_position_embeddings"),
        norm_eps=v(spec.norm_eps_key),
        tie_embeddings=bool(v("tie_word_embeddings")),
        init_std=v("initializer_range") or 0.02,
    )
    opts.update(spec.fixed)
    act = v(spec.activation_key)
    activations = {**ACTIVATIONS, **spec.activations}
    if act not in activations:
        raise _unsupported(spec, spec.activation_key, act)
    opts["activation"] = activations[act]
    for flag, options in spec.bias_flags.items():
        if v(flag):
            opts.update(dict.fromkeys(options, True))
    if spec.qk_norm_flag and v(spec.qk_norm_flag):
        opts["qk_norm"] = True
    opts.update(_rope(spec, hf, head_dim))
    opts.update(_windows(spec, hf, n_layers, opts["max_seq_len"]))
    if spec.gemma:
        opts.update(_gemma(spec, hf, dim, head_dim))
    if spec.experts:
        opts.update(_experts(spec, hf, n_layers))
    opts.update(classifier_options(spec, hf))
    try:
        return ModelConfig(**opts)
    except ConfigError as exc:
        raise ConfigError(f"{spec.name} config.json: {exc}") from exc


def _rope_dicts(spec: FamilySpec, hf: Mapping[str, Any]) -> tuple[dict, dict | None]:
    """(global rope parameters, sliding layers' own or None), each with rope_type and rope_theta,
    from either config style (transformers 5: rope_scaling, when present, wins, as there)."""
    params = hf.get("rope_parameters")
    scaling = hf.get("rope_scaling")
    default_theta = spec.defaults.get("rope_theta", 10000.0)
    if isinstance(params, dict) and any(k in params for k in _NESTED_ROPE):
        full = dict(params.get("full_attention") or {})
        local = dict(params.get("sliding_attention") or {})
        if scaling:
            full.update(scaling)
    else:
        full = dict(scaling or params or {})
        local = None
        if spec.gemma == 3:  # transformers 4.x: rope_scaling is the global layers' only
            local = {"rope_theta": hf.get("rope_local_base_freq", spec.defaults["rope_local_base_freq"])}  # fmt: skip
    full.setdefault("rope_theta", hf.get("rope_theta", default_theta))
    for d in (full, local):
        if d is not None:
            d.setdefault("rope_theta", default_theta)
            kind = d.get("rope_type", d.get("type", "default"))
            d["rope_type"] = spec.rope_aliases.get(kind, kind)
    return full, local


def _rope(spec: FamilySpec, hf: Mapping[str, Any], head_dim: int) -> dict[str, Any]:
    """rope_theta, rotary_dim and the scaling options of a config."""
    full, local = _rope_dicts(spec, hf)
    kind = full["rope_type"]
    if kind not in spec.rope_types:
        raise _unsupported(spec, "rope_type", kind, f"{spec.name} takes {', '.join(spec.rope_types)}")  # fmt: skip
    partial = full.get("partial_rotary_factor", hf.get("partial_rotary_factor"))
    if partial is None:
        partial = spec.defaults.get("partial_rotary_factor", 1.0)
    rotary = int(head_dim * partial)
    out: dict[str, Any] = {"rope_theta": float(full["rope_theta"])}
    if rotary != head_dim:
        out["rotary_dim"] = rotary
    max_len = _value(spec, hf, "max_position_embeddings")
    original = full.get("original_max_position_embeddings") or max_len
    if spec.original_max_key:  # Phi-3: the top-level value wins (transformers' standardize)
        original = _value(spec, hf, "original_max_position_embeddings")
    if kind == "linear":
        out.update(rope_scaling="linear", rope_factor=float(full["factor"]))
    elif kind == "llama3":
        out.update(
            rope_scaling="llama3",
            rope_factor=float(full["factor"]),
            rope_low_freq_factor=float(full["low_freq_factor"]),
            rope_high_freq_factor=float(full["high_freq_factor"]),
            rope_original_max_len=int(original),
        )
    elif kind == "longrope":
        factor = full.get("factor") or max_len / original
        out.update(
            rope_scaling="longrope",
            rope_factor=float(factor),
            rope_original_max_len=int(original),
            rope_short_factor=tuple(float(f) for f in full["short_factor"]),
            rope_long_factor=tuple(float(f) for f in full["long_factor"]),
        )
        given = full.get("attention_factor")
        derived = 1.0 if factor <= 1 else math.sqrt(1 + math.log(factor) / math.log(original))
        if given is not None and not math.isclose(given, derived, rel_tol=1e-12):
            raise _unsupported(spec, "rope attention_factor", given, f"PocketLM derives {derived}")
    if local is not None:
        if local["rope_type"] != "default":
            raise _unsupported(spec, "sliding layers' rope_type", local["rope_type"])
        if float(local["rope_theta"]) != out["rope_theta"] or kind != "default":
            out["rope_local_theta"] = float(local["rope_theta"])
    return out


def _windows(
    spec: FamilySpec, hf: Mapping[str, Any], n_layers: int, max_len: int
) -> dict[str, Any]:
    """sliding_window and layer_types ("full" | "sliding" per layer), normalised: () when all
    layers are alike; a window as long as the context slides nothing and is dropped."""
    v = lambda key: _value(spec, hf, key)  # noqa: E731
    if spec.windows == "none":
        return {}
    window = v("sliding_window") or 0
    if spec.windows == "qwen" and not v("use_sliding_window"):
        window = 0
    kinds: list[str] = ["sliding"] * n_layers
    if spec.windows in ("qwen", "layer_types"):
        given = hf.get("layer_types")
        if given is not None:
            if len(given) != n_layers or any(t not in _LAYER_TYPES for t in given):
                bad = [t for t in given if t not in _LAYER_TYPES]
                raise _unsupported(spec, "layer_types", bad or given)
            kinds = [_LAYER_TYPES[t] for t in given]
        elif spec.windows == "qwen":
            first = v("max_window_layers")
            kinds = ["sliding" if i >= first else "full" for i in range(n_layers)]
        else:
            pattern = hf.get("sliding_window_pattern", spec.window_pattern)
            kinds = ["sliding" if (i + 1) % pattern else "full" for i in range(n_layers)]
    if not window or window >= max_len or "sliding" not in kinds:
        return {}
    if "full" not in kinds:
        return {"sliding_window": int(window)}
    return {"sliding_window": int(window), "layer_types": tuple(kinds)}


def _gemma(spec: FamilySpec, hf: Mapping[str, Any], dim: int, head_dim: int) -> dict[str, Any]:
    """Gemma's embedding scale and, from Gemma 2, its attention scale and soft-caps."""
    v = lambda key: _value(spec, hf, key)  # noqa: E731
    out: dict[str, Any] = {"embed_scale": dim**0.5}
    if spec.gemma >= 2:
        scale = v("query_pre_attn_scalar") ** -0.5
        out["attn_scale"] = 0.0 if scale == head_dim**-0.5 else scale
        out["final_softcap"] = float(v("final_logit_softcapping") or 0.0)
    if spec.gemma == 2:  # Gemma 3's attention ignores attn_logit_softcapping, as transformers does
        out["attn_softcap"] = float(v("attn_logit_softcapping") or 0.0)
    return out


def _experts(spec: FamilySpec, hf: Mapping[str, Any], n_layers: int) -> dict[str, Any]:
    """The mixture-of-experts options ({} when the config has no experts: dense layers)."""
    out: dict[str, Any] = {}
    for option, keys in spec.experts.items():
        given = [hf[k] for k in keys if k in hf]
        out[option] = given[0] if given else spec.defaults[keys[0]]
    if not out.get("n_experts"):
        return {}
    if spec.router_flag:
        out["router"] = "softmax_topk" if _value(spec, hf, spec.router_flag) else "softmax_topk_raw"
    if spec.sparse_step_keys:
        # A layer is sparse iff it is not in mlp_only_layers and (i + 1) % decoder_sparse_step
        # == 0 (transformers' Qwen2MoeDecoderLayer); PocketLM's experts are in every layer.
        step = _value(spec, hf, "decoder_sparse_step") or 1
        dense_only = set(_value(spec, hf, "mlp_only_layers") or ())
        dense = [i for i in range(n_layers) if i in dense_only or (i + 1) % step]
        if dense:
            key = "mlp_only_layers" if dense_only else "decoder_sparse_step"
            raise UnsupportedModelError(
                f"{spec.name} config.json: {key} makes layers {dense} dense MLPs between sparse "
                "ones; PocketLM runs a mixture of experts in every layer (needs mlp_only_layers "
                "[] and decoder_sparse_step 1)"
            )
    return out


def hf_config(
    spec: FamilySpec, config: ModelConfig, *, dtype: str, token_ids: Mapping[str, Any]
) -> dict[str, Any]:
    """config.json for a model of this family (both config styles); UnsupportedModelError naming
    the options the family cannot express (the result read back must be the same model)."""
    if spec.encoder is not None:
        act = _hf_activation(spec, config.activation)
        out = encoder_hf_config(spec, config, act, dtype=dtype, token_ids=token_ids)
        _check_round_trip(spec, config, out, [name for name, _ in export_names(spec, config)])
        return out
    c = config
    out: dict[str, Any] = {
        "architectures": [spec.architectures[0]],
        "model_type": spec.model_types[0],
        "vocab_size": c.vocab_size,
        "hidden_size": c.dim,
        "intermediate_size": c.resolved_ffn_dim,
        "num_hidden_layers": c.n_layers,
        "num_attention_heads": c.n_heads,
        "num_key_value_heads": c.n_kv_heads,
        "head_dim": c.resolved_head_dim,
        "max_position_embeddings": c.max_seq_len,
        spec.norm_eps_key: c.norm_eps,
        "tie_word_embeddings": c.tie_embeddings,
        "initializer_range": c.init_std,
        spec.activation_key: _hf_activation(spec, c.activation),
        "attention_dropout": 0.0,
        "use_cache": True,
        **{k: token_ids.get(k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")},
        "torch_dtype": dtype,  # transformers 4.x
        "dtype": dtype,  # transformers 5.x
    }
    for flag, options in spec.bias_flags.items():
        out[flag] = all(getattr(c, o) for o in options)
    if spec.qk_norm_flag:
        out[spec.qk_norm_flag] = c.qk_norm
    for key, allowed in spec.refused.items():
        out.setdefault(key, allowed[0])
    out.update(_hf_rope(spec, c))
    out.update(_hf_windows(spec, c))
    out.update(classifier_keys(spec, c))
    for option, keys in spec.experts.items():
        out[keys[0]] = getattr(c, option)
    if spec.router_flag:
        out[spec.router_flag] = c.router == "softmax_topk"
    if spec.sparse_step_keys:
        out.update(decoder_sparse_step=1, mlp_only_layers=[])
    if spec.gemma >= 2:
        scale = c.attn_scale or c.resolved_head_dim**-0.5
        whole = round(scale**-2)
        out["query_pre_attn_scalar"] = whole if whole**-0.5 == scale else scale**-2
        out["final_logit_softcapping"] = c.final_softcap or None
        out["attn_logit_softcapping"] = (c.attn_softcap or None) if spec.gemma == 2 else None
    _check_round_trip(spec, config, out)
    return out


def _hf_activation(spec: FamilySpec, ours: str) -> str:
    """The family's own spelling of an activation (its default when that reads back the same)."""
    default = spec.defaults.get(spec.activation_key)
    if {**ACTIVATIONS, **spec.activations}.get(default) == ours:
        return default
    return _WRITE_ACTIVATIONS[ours]


def _hf_rope(spec: FamilySpec, c: ModelConfig) -> dict[str, Any]:
    """rope_parameters (transformers 5) and rope_theta / rope_scaling / partial_rotary_factor
    (transformers 4.x) describing the same rotation."""
    scaling: dict[str, Any] = {"rope_type": "default" if c.rope_scaling == "none" else c.rope_scaling}  # fmt: skip
    if c.rope_scaling in ("linear", "llama3", "longrope"):
        scaling["factor"] = c.rope_factor
    if c.rope_scaling == "llama3":
        scaling["low_freq_factor"] = c.rope_low_freq_factor
        scaling["high_freq_factor"] = c.rope_high_freq_factor
    if c.rope_scaling in ("llama3", "longrope"):
        scaling["original_max_position_embeddings"] = c.rope_original_max_len
    if c.rope_scaling == "longrope":
        scaling["short_factor"] = list(c.rope_short_factor)
        scaling["long_factor"] = list(c.rope_long_factor)
    out: dict[str, Any] = {"rope_theta": c.rope_theta}
    full = {**scaling, "rope_theta": c.rope_theta}
    if c.rotary_dim or "partial_rotary_factor" in spec.defaults:
        partial = c.resolved_rotary_dim / c.resolved_head_dim
        out["partial_rotary_factor"] = partial
        full["partial_rotary_factor"] = partial
    if spec.original_max_key:
        out["original_max_position_embeddings"] = c.rope_original_max_len or c.max_seq_len
    out["rope_scaling"] = scaling if c.rope_scaling != "none" else None
    if spec.gemma == 3:
        local = c.rope_local_theta or c.rope_theta
        out["rope_local_base_freq"] = local
        out["rope_parameters"] = {
            "full_attention": full,
            "sliding_attention": {"rope_type": "default", "rope_theta": local},
        }
    else:
        out["rope_parameters"] = full
    return out


def _hf_windows(spec: FamilySpec, c: ModelConfig) -> dict[str, Any]:
    """sliding_window (+ layer_types / use_sliding_window) in the family's own keys."""
    if spec.windows == "none":
        return {}
    kinds = [c.layer_kind(i) for i in range(c.n_layers)]
    names = {ours: theirs for theirs, ours in _LAYER_TYPES.items()}
    out: dict[str, Any] = {"sliding_window": c.sliding_window or None}
    if spec.windows == "qwen":
        first = kinds.index("sliding") if c.sliding_window else c.n_layers
        out.update(use_sliding_window=bool(c.sliding_window), max_window_layers=first)
    if spec.windows in ("qwen", "layer_types"):
        out["layer_types"] = [names[k] for k in kinds]
    return out


def _check_round_trip(
    spec: FamilySpec,
    config: ModelConfig,
    written: Mapping[str, Any],
    tensor_names: Collection[str] | None = None,
) -> None:
    """Raise UnsupportedModelError unless the written config (with the tensors written beside
    it) reads back as `config`."""
    try:
        back = model_config(spec, written, tensor_names)
    except (ConfigError, UnsupportedModelError) as exc:
        raise UnsupportedModelError(f"{spec.name} cannot express this model: {exc}") from exc
    ignore = {f.name: getattr(config, f.name) for f in fields(config) if f.name in _NOT_COMPARED}
    want = replace(config, **ignore)
    back = replace(back, **ignore, ffn_dim=back.ffn_dim if config.ffn_dim else 0)
    if back.head_dim and not config.head_dim and back.head_dim == config.resolved_head_dim:
        back = replace(back, head_dim=0)
    diff = [
        f"model.{f.name}={getattr(want, f.name)!r}"
        for f in fields(config)
        if getattr(want, f.name) != getattr(back, f.name)
    ]
    if diff:
        raise UnsupportedModelError(
            f"{spec.architectures[0]} cannot express {', '.join(diff)}; transformers would load "
            "a different model"
        )
