"""MobileBERT (a wide residual stream around narrow bottleneck layers), as data.

Trigram input embeddings (each token's embedding beside its neighbours', projected to the
hidden size), NoNorm (an affine map: norm_kind "affine"), ReLU, bottleneck layers with stacked
feed-forward networks (model/bottleneck.py), a tanh pooler over [CLS] unless
classifier_activation is off. The layout of released MobileBERTs only: trigram input, the
bottleneck with queries and keys from their own shared bottleneck, NoNorm.
"""

from __future__ import annotations

from pocketlm.interop.families.bert import (
    BERT_ATTENTION_NAMES,
    BERT_KEYS,
    BERT_MLP_NAMES,
    ENCODER_OPTIONS,
)
from pocketlm.interop.families.encoder_spec import EncoderSpec
from pocketlm.interop.families.spec import FamilySpec, NameTable

_MAX_FFNS = 16  # stacked feed-forward networks a layer may have (released: 3 besides its own)
_STACKED = {
    name: theirs
    for j in range(_MAX_FFNS - 1)
    for name, theirs in (
        (f"ffns.{j}.mlp.up_proj", f"ffn.{j}.intermediate.dense"),
        (f"ffns.{j}.mlp.down_proj", f"ffn.{j}.output.dense"),
        (f"ffns.{j}.norm", f"ffn.{j}.output.LayerNorm"),
    )
}

MOBILEBERT = FamilySpec(
    name="mobilebert",
    architectures=(
        "MobileBertModel",
        "MobileBertForSequenceClassification",
        "MobileBertForMaskedLM",
        "MobileBertForPreTraining",
    ),
    model_types=("mobilebert",),
    defaults={
        "vocab_size": 30522,
        "hidden_size": 512,
        "num_hidden_layers": 24,
        "num_attention_heads": 4,
        "intermediate_size": 512,
        "hidden_act": "relu",
        "max_position_embeddings": 512,
        "type_vocab_size": 2,
        "layer_norm_eps": 1e-12,
        "initializer_range": 0.02,
        "embedding_size": 128,
        "intra_bottleneck_size": 128,
        "num_feedforward_networks": 4,
        "classifier_activation": True,
    },
    fixed={**ENCODER_OPTIONS, "norm_kind": "affine", "embed_trigram": True},
    norm_eps_key="layer_norm_eps",
    activations={"relu": "relu"},
    refused={
        "trigram_input": (True, None),
        "use_bottleneck": (True, None),
        "use_bottleneck_attention": (False, None),
        "key_query_shared_bottleneck": (True, None),
        "normalization_type": ("no_norm", None),
        "position_embedding_type": ("absolute", None),
    },
    hf_names=NameTable(
        {
            "model.embed_tokens": "mobilebert.embeddings.word_embeddings",
            "model.embed_positions": "mobilebert.embeddings.position_embeddings",
            "model.embed_types": "mobilebert.embeddings.token_type_embeddings",
            "model.embed_proj": "mobilebert.embeddings.embedding_transformation",
            "model.embed_norm": "mobilebert.embeddings.LayerNorm",
            "pooler": "mobilebert.pooler.dense",
            "score": "classifier",
        },
        {
            "bottleneck_in": "bottleneck.input.dense",
            "bottleneck_in_norm": "bottleneck.input.LayerNorm",
            "bottleneck_qk": "bottleneck.attention.dense",
            "bottleneck_qk_norm": "bottleneck.attention.LayerNorm",
            **BERT_ATTENTION_NAMES,
            **_STACKED,
            **BERT_MLP_NAMES,
            "bottleneck_out": "output.bottleneck.dense",
            "bottleneck_out_norm": "output.bottleneck.LayerNorm",
        },
        layer_prefix="mobilebert.encoder.layer.{i}.",
    ),
    encoder=EncoderSpec(
        keys={
            **BERT_KEYS,
            "embed_dim": "embedding_size",
            "bottleneck_dim": "intra_bottleneck_size",
            "n_ffn": "num_feedforward_networks",
        },
        classifiers=("MobileBertForSequenceClassification",),
        base_prefix="mobilebert.",
        pooler="tanh",
        pooler_tensor="pooler.dense.weight",
        pooler_flag="classifier_activation",
        dropped=("cls.",),  # masked-LM and next-sentence heads
    ),
)
