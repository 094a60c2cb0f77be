"""ALBERT (BERT with factorised embeddings and one layer shared by the whole depth), as data.

Its embeddings are embedding_size wide and projected to hidden_size (embed_dim); with one hidden
group of one layer (num_hidden_groups = inner_group_num = 1, every released ALBERT) the stack is
one layer applied num_hidden_layers times, stored once (shared_layers). The tanh-approximate GELU
(gelu_new) and BERT's tanh pooler over [CLS].
"""

from __future__ import annotations

from pocketlm.interop.families.bert import BERT_KEYS, ENCODER_OPTIONS
from pocketlm.interop.families.encoder_spec import EncoderSpec
from pocketlm.interop.families.spec import FamilySpec, NameTable

ALBERT = FamilySpec(
    name="albert",
    architectures=(
        "AlbertModel",
        "AlbertForSequenceClassification",
        "AlbertForMaskedLM",
        "AlbertForPreTraining",
    ),
    model_types=("albert",),
    defaults={
        "vocab_size": 30000,
        "embedding_size": 128,
        "hidden_size": 4096,
        "num_hidden_layers": 12,
        "num_attention_heads": 64,
        "intermediate_size": 16384,
        "hidden_act": "gelu_new",
        "max_position_embeddings": 512,
        "type_vocab_size": 2,
        "layer_norm_eps": 1e-12,
        "initializer_range": 0.02,
    },
    fixed={**ENCODER_OPTIONS, "shared_layers": True},
    norm_eps_key="layer_norm_eps",
    # groups of layers with their own weights (num_hidden_groups > 1) or several layers per
    # group are not implemented: released ALBERTs have one of each
    refused={
        "num_hidden_groups": (1, None),
        "inner_group_num": (1, None),
        "position_embedding_type": ("absolute", None),
    },
    hf_names=NameTable(
        {
            "model.embed_tokens": "albert.embeddings.word_embeddings",
            "model.embed_positions": "albert.embeddings.position_embeddings",
            "model.embed_types": "albert.embeddings.token_type_embeddings",
            "model.embed_norm": "albert.embeddings.LayerNorm",
            "model.embed_proj": "albert.encoder.embedding_hidden_mapping_in",
            "pooler": "albert.pooler",
            "score": "classifier",
        },
        {
            "self_attn.q_proj": "attention.query",
            "self_attn.k_proj": "attention.key",
            "self_attn.v_proj": "attention.value",
            "self_attn.o_proj": "attention.dense",
            "post_attention_layernorm": "attention.LayerNorm",
            "mlp.up_proj": "ffn",
            "mlp.down_proj": "ffn_output",
            "post_mlp_layernorm": "full_layer_layer_norm",
        },
        layer_prefix="albert.encoder.albert_layer_groups.0.albert_layers.{i}.",
    ),
    encoder=EncoderSpec(
        keys={**BERT_KEYS, "embed_dim": "embedding_size"},
        classifiers=("AlbertForSequenceClassification",),
        base_prefix="albert.",
        pooler="tanh",
        pooler_tensor="pooler.weight",
        dropped=("predictions.", "sop_classifier."),  # masked-LM and sentence-order heads
    ),
)
