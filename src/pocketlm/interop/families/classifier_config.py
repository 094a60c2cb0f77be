"""A decoder family's sequence classifier in config.json, both directions.

transformers' *ForSequenceClassification decoders (GenericForSequenceClassification: Llama,
Mistral, Qwen2/3, Phi, Phi-3, Gemma 1-3, the mixtures of experts) are the family's body plus a
bias-free `score` layer (n_labels x hidden) applied at the last token that is not
config.pad_token_id, with the class names in id2label. PocketLM reads that as ModelConfig.labels
(pooling at the last real token, no pooler, no score bias) and writes its classifiers back the
same way. Regression (num_labels 1) and multi-label problem types are refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pocketlm.common.errors import UnsupportedModelError
from pocketlm.interop.families.spec import FamilySpec
from pocketlm.model.config import ModelConfig

_SINGLE_LABEL = (None, "single_label_classification")


def is_classifier(spec: FamilySpec, hf: Mapping[str, Any]) -> bool:
    """Whether a config.json of this family names its sequence classifier."""
    archs = hf.get("architectures") or []
    return bool(archs) and archs[0] == spec.classifier_architecture


def classifier_options(spec: FamilySpec, hf: Mapping[str, Any]) -> dict[str, Any]:
    """The ModelConfig options of a sequence-classifier config ({} for a language model):
    labels from id2label in id order (transformers' LABEL_i names when it has none)."""
    if not is_classifier(spec, hf):
        return {}
    problem = hf.get("problem_type")
    if problem not in _SINGLE_LABEL:
        raise UnsupportedModelError(
            f"{spec.name} config.json: problem_type {problem!r} is not supported by PocketLM "
            "(single-label classification only)"
        )
    id2label = hf.get("id2label")
    if isinstance(id2label, Mapping) and id2label:
        try:
            by_id = {int(k): str(v) for k, v in id2label.items()}
        except (TypeError, ValueError) as exc:
            raise UnsupportedModelError(
                f"{spec.name} config.json: id2label keys must be label ids, got {list(id2label)}"
            ) from exc
        if sorted(by_id) != list(range(len(by_id))):
            raise UnsupportedModelError(
                f"{spec.name} config.json: id2label ids must be 0..n-1, got {sorted(by_id)}"
            )
        labels = tuple(by_id[i] for i in range(len(by_id)))
    else:
        labels = tuple(f"LABEL_{i}" for i in range(int(hf.get("num_labels") or 2)))
    if len(labels) < 2:
        raise UnsupportedModelError(
            f"{spec.name} config.json: {len(labels)} label (regression) is not supported by "
            "PocketLM: a classifier needs two classes or more"
        )
    return {"labels": labels, "pooling": "last", "pooler": "none", "classifier_bias": False}


def classifier_keys(spec: FamilySpec, config: ModelConfig) -> dict[str, Any]:
    """config.json keys of a classifier ({} for a language model): the family's
    *ForSequenceClassification architecture and its labels both ways."""
    if not config.labels:
        return {}
    return {
        "architectures": [spec.classifier_architecture],
        "id2label": {str(i): label for i, label in enumerate(config.labels)},
        "label2id": {label: i for i, label in enumerate(config.labels)},
        "problem_type": "single_label_classification",
    }
