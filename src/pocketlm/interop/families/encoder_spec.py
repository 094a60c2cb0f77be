"""What an encoder family (BERT, DistilBERT, ALBERT) adds to its FamilySpec, as data: how its
config.json spells each size, which of its architectures are classifiers, and how its
checkpoints name the base model's tensors and the heads PocketLM does not run.

A Hugging Face encoder comes as the base model alone (BertModel: tensors `embeddings.*`), or
under a head (BertForSequenceClassification, BertForMaskedLM: tensors `bert.embeddings.*` plus the
head's own). The family's NameTable names the tensors as a head model stores them; a base
model's checkpoint lacks `base_prefix` (families/encoder_names.py reconciles the two).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class EncoderSpec:
    """An encoder family's config keys, classifier architectures and checkpoint spellings."""

    keys: Mapping[str, str]  # ModelConfig field -> the family's config.json key
    classifiers: tuple[str, ...]  # *ForSequenceClassification architectures (the first written)
    base_prefix: str  # "bert.": the base model's tensors inside a head model
    pooler: str  # the classifier's pooler activation ("tanh": BERT's pooler; "relu": DistilBERT)
    pooler_tensor: str = ""  # HF tensor of a base model's pooler, when the family has one: its
    # presence in the weights keeps the pooler of an imported base model
    pooler_flag: str = ""  # a config key that, false, means no pooler (MobileBERT's
    # classifier_activation: [CLS]'s hidden state goes to the classifier as it is)
    dropped: tuple[str, ...] = ()  # tensor name prefixes of heads PocketLM does not run (the
    # masked-LM and next-sentence heads): skipped on import, with a log line
