"""An encoder family's config.json <-> ModelConfig (families/hf_config.py hands encoders here).

Sizes come from the family's own keys (EncoderSpec.keys: BERT's hidden_size, DistilBERT's dim),
absent keys from what transformers assumes (FamilySpec.defaults). A *ForSequenceClassification
architecture makes a classifier: its labels are id2label's names in id order (LABEL_i when a
config leaves them out), its pooler the family's; any other architecture imports the base
encoder (labels ()), keeping a pooler where the family has one and the checkpoint holds it.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from pocketlm.common.errors import ConfigError, UnsupportedModelError
from pocketlm.interop.families.spec import FamilySpec
from pocketlm.model.config import ModelConfig

SINGLE_LABEL = "single_label_classification"


def _value(spec: FamilySpec, hf: Mapping[str, Any], key: str) -> Any:
    return hf[key] if key in hf else spec.defaults.get(key)


def encoder_model_config(
    spec: FamilySpec,
    hf: Mapping[str, Any],
    activations: Mapping[str, str],
    tensor_names: Collection[str] | None = None,
) -> ModelConfig:
    """The ModelConfig of an encoder family's config.json; `tensor_names` (the checkpoint's)
    decide whether a base encoder keeps its pooler (without them: the family's default)."""
    enc = spec.encoder
    assert enc is not None
    for key, allowed in spec.refused.items():
        if _value(spec, hf, key) not in allowed:
            raise _unsupported(spec, key, _value(spec, hf, key))
    opts: dict[str, Any] = {field: _value(spec, hf, key) for field, key in enc.keys.items()}
    opts["n_kv_heads"] = opts["n_heads"]
    opts.update(spec.fixed)
    act = _value(spec, hf, spec.activation_key)
    if act not in activations:
        raise _unsupported(spec, spec.activation_key, act)
    opts["activation"] = activations[act]
    architecture = (hf.get("architectures") or [spec.architectures[0]])[0]
    pooler = enc.pooler if not enc.pooler_flag or _value(spec, hf, enc.pooler_flag) else "none"
    if architecture in enc.classifiers:
        opts.update(labels=labels_from_config(spec, hf), pooler=pooler, classifier_bias=True)
    elif enc.pooler_tensor and _has_pooler(enc.pooler_tensor, enc.base_prefix, tensor_names):
        opts["pooler"] = pooler
    try:
        return ModelConfig(**opts)
    except (ConfigError, TypeError) as exc:
        raise ConfigError(f"{spec.name} config.json: {exc}") from exc


def _has_pooler(tensor: str, prefix: str, names: Collection[str] | None) -> bool:
    return names is None or tensor in names or prefix + tensor in names


def labels_from_config(spec: FamilySpec, hf: Mapping[str, Any]) -> tuple[str, ...]:
    """A classifier's class names in logit order: id2label's, else LABEL_0 .. LABEL_{n-1}."""
    problem = hf.get("problem_type")
    if problem not in (None, SINGLE_LABEL):
        raise _unsupported(spec, "problem_type", problem, f"PocketLM classifies {SINGLE_LABEL}")
    id2label = hf.get("id2label")
    if isinstance(id2label, Mapping) and id2label:
        try:
            items = sorted((int(i), name) for i, name in id2label.items())
        except (TypeError, ValueError) as exc:
            raise _unsupported(spec, "id2label", id2label, "ids must be integers") from exc
        if [i for i, _ in items] != list(range(len(items))) or not all(
            isinstance(name, str) for _, name in items
        ):
            raise _unsupported(spec, "id2label", id2label, "names for the ids 0 .. n-1")
        labels = tuple(name for _, name in items)
    else:
        labels = tuple(f"LABEL_{i}" for i in range(int(hf.get("num_labels", 2))))
    if len(labels) < 2:
        raise _unsupported(spec, "num_labels", len(labels), "one output is a regression")
    return labels


def encoder_hf_config(
    spec: FamilySpec,
    config: ModelConfig,
    hf_activation: str,
    *,
    dtype: str,
    token_ids: Mapping[str, Any],
) -> dict[str, Any]:
    """config.json for an encoder of this family: the classifier architecture with its labels,
    or the base model's."""
    enc = spec.encoder
    assert enc is not None
    c = config
    architecture = enc.classifiers[0] if c.labels else spec.architectures[0]
    out: dict[str, Any] = {"architectures": [architecture], "model_type": spec.model_types[0]}
    for field, key in enc.keys.items():
        out[key] = c.resolved_ffn_dim if field == "ffn_dim" else getattr(c, field)
    out[spec.activation_key] = hf_activation
    for key, allowed in spec.refused.items():
        out[key] = allowed[0]
    if enc.pooler_flag:
        out[enc.pooler_flag] = c.pooler != "none"
    out["pad_token_id"] = token_ids.get("pad_token_id")
    if c.labels:
        out["id2label"] = {str(i): name for i, name in enumerate(c.labels)}
        out["label2id"] = {name: i for i, name in enumerate(c.labels)}
        out["problem_type"] = SINGLE_LABEL
    out["torch_dtype"] = dtype  # transformers 4.x
    out["dtype"] = dtype  # transformers 5.x
    return out


def _unsupported(spec: FamilySpec, key: str, value: Any, what: str = "") -> UnsupportedModelError:
    hint = f" ({what})" if what else ""
    return UnsupportedModelError(
        f"{spec.name} config.json: {key} = {value!r} is not supported by PocketLM{hint}"
    )
