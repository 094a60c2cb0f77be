"""BERT and DistilBERT (post-norm encoders with learned positions, [CLS] pooling), as data.

Both: bidirectional attention, absolute position embeddings, an embedding LayerNorm, post-norm
blocks (x = LN(x + attn(x)); x = LN(x + mlp(x))), a plain exact-GELU MLP, biases on every
linear. BERT adds token types and a tanh pooler over [CLS]; DistilBERT has no token types and
its classifier's pre_classifier + ReLU is the pooler.
"""

from __future__ import annotations

from pocketlm.interop.families.encoder_spec import EncoderSpec
from pocketlm.interop.families.spec import FamilySpec, NameTable

# ModelConfig options every post-norm encoder of these families has.
ENCODER_OPTIONS = {
    "causal": False,
    "position_kind": "learned",
    "embed_norm": True,
    "norm_position": "post",
    "norm_kind": "layer",
    "mlp_kind": "plain",
    "qkv_bias": True,
    "o_bias": True,
    "mlp_bias": True,
    "tie_embeddings": False,  # no LM head
    "pooling": "first",  # [CLS]
}
# transformers' BertConfig: the sizes of bert-base
# A BERT layer's tensors (HF names after the layer prefix), shared with MobileBERT's layers
BERT_ATTENTION_NAMES = {
    "self_attn.q_proj": "attention.self.query",
    "self_attn.k_proj": "attention.self.key",
    "self_attn.v_proj": "attention.self.value",
    "self_attn.o_proj": "attention.output.dense",
    "post_attention_layernorm": "attention.output.LayerNorm",
}
BERT_MLP_NAMES = {
    "mlp.up_proj": "intermediate.dense",
    "mlp.down_proj": "output.dense",
    "post_mlp_layernorm": "output.LayerNorm",
}
BERT_KEYS = {
    "vocab_size": "vocab_size",
    "dim": "hidden_size",
    "n_layers": "num_hidden_layers",
    "n_heads": "num_attention_heads",
    "ffn_dim": "intermediate_size",
    "max_seq_len": "max_position_embeddings",
    "type_vocab_size": "type_vocab_size",
    "norm_eps": "layer_norm_eps",
    "init_std": "initializer_range",
}
_BERT_DEFAULTS = {
    "vocab_size": 30522,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "hidden_act": "gelu",
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
    "layer_norm_eps": 1e-12,
    "initializer_range": 0.02,
}
# Configs PocketLM does not run: relative position embeddings (transformers 4.x), a decoder.
_BERT_REFUSED = {
    "position_embedding_type": ("absolute", None),
    "is_decoder": (False, None),
    "add_cross_attention": (False, None),
}

BERT = FamilySpec(
    name="bert",
    architectures=(
        "BertModel",
        "BertForSequenceClassification",
        "BertForMaskedLM",
        "BertForPreTraining",
    ),
    model_types=("bert",),
    defaults=_BERT_DEFAULTS,
    fixed=ENCODER_OPTIONS,
    norm_eps_key="layer_norm_eps",
    refused=_BERT_REFUSED,
    hf_names=NameTable(
        {
            "model.embed_tokens": "bert.embeddings.word_embeddings",
            "model.embed_positions": "bert.embeddings.position_embeddings",
            "model.embed_types": "bert.embeddings.token_type_embeddings",
            "model.embed_norm": "bert.embeddings.LayerNorm",
            "pooler": "bert.pooler.dense",
            "score": "classifier",
        },
        {**BERT_ATTENTION_NAMES, **BERT_MLP_NAMES},
        layer_prefix="bert.encoder.layer.{i}.",
    ),
    encoder=EncoderSpec(
        keys=BERT_KEYS,
        classifiers=("BertForSequenceClassification",),
        base_prefix="bert.",
        pooler="tanh",
        pooler_tensor="pooler.dense.weight",
        dropped=("cls.",),  # BertForMaskedLM / BertForPreTraining's heads
    ),
)

DISTILBERT = FamilySpec(
    name="distilbert",
    architectures=(
        "DistilBertModel",
        "DistilBertForSequenceClassification",
        "DistilBertForMaskedLM",
    ),
    model_types=("distilbert",),
    defaults={
        "vocab_size": 30522,
        "dim": 768,
        "n_layers": 6,
        "n_heads": 12,
        "hidden_dim": 3072,
        "activation": "gelu",
        "max_position_embeddings": 512,
        "initializer_range": 0.02,
        "sinusoidal_pos_embds": False,
    },
    # its LayerNorms' eps is fixed at 1e-12 (no config key); sinusoidal position embeddings are
    # stored in the checkpoint like learned ones
    fixed={**ENCODER_OPTIONS, "norm_eps": 1e-12},
    activation_key="activation",
    hf_names=NameTable(
        {
            "model.embed_tokens": "distilbert.embeddings.word_embeddings",
            "model.embed_positions": "distilbert.embeddings.position_embeddings",
            "model.embed_norm": "distilbert.embeddings.LayerNorm",
            "pooler": "pre_classifier",
            "score": "classifier",
        },
        {
            "self_attn.q_proj": "attention.q_lin",
            "self_attn.k_proj": "attention.k_lin",
            "self_attn.v_proj": "attention.v_lin",
            "self_attn.o_proj": "attention.out_lin",
            "post_attention_layernorm": "sa_layer_norm",
            "mlp.up_proj": "ffn.lin1",
            "mlp.down_proj": "ffn.lin2",
            "post_mlp_layernorm": "output_layer_norm",
        },
        layer_prefix="distilbert.transformer.layer.{i}.",
    ),
    encoder=EncoderSpec(
        keys={
            "vocab_size": "vocab_size",
            "dim": "dim",
            "n_layers": "n_layers",
            "n_heads": "n_heads",
            "ffn_dim": "hidden_dim",
            "max_seq_len": "max_position_embeddings",
            "init_std": "initializer_range",
        },
        classifiers=("DistilBertForSequenceClassification",),
        base_prefix="distilbert.",
        pooler="relu",  # pre_classifier + ReLU, in the classifier only
        dropped=("vocab_transform.", "vocab_layer_norm.", "vocab_projector."),  # masked-LM head
    ),
)
