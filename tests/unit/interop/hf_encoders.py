"""Tiny random Hugging Face encoders (BERT, DistilBERT, ALBERT, MobileBERT), built offline by `transformers`
and saved with a tokenizer trained in-process: WordPiece (BERT, DistilBERT, MobileBERT) or Unigram (ALBERT,
SentencePiece-style), saved through transformers' own tokenizer classes as released checkpoints
are (tokenizer_class BertTokenizer / AlbertTokenizer).

Norms and biases are perturbed so a dropped bias, a missing norm or a swapped name changes the
outputs.
"""

from __future__ import annotations

from pathlib import Path

import torch

SENTENCES = [
    "the little dog ran to the park and played with a red ball",
    "a happy cat said hello to the big blue bird",
    "unbelievable stories of the river, the sun and the moon!",
    "she smiled because her friend shared the cake",
    "the boy did not like the rainy night at school",
    "Terrible service. I will never come back.",
    "What a wonderful, wonderful day it was!",
]
LABELS = ("negative", "neutral", "positive")

# name -> (config class, base model class, classifier class, config keywords); vocab filled in
FAMILIES = {
    "bert": ("BertConfig", "BertModel", "BertForSequenceClassification", dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
        max_position_embeddings=64, type_vocab_size=2)),
    "distilbert": ("DistilBertConfig", "DistilBertModel", "DistilBertForSequenceClassification",
                   dict(dim=32, n_layers=2, n_heads=4, hidden_dim=48, max_position_embeddings=64,
                        sinusoidal_pos_embds=True)),
    "albert": ("AlbertConfig", "AlbertModel", "AlbertForSequenceClassification", dict(
        embedding_size=16, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
        intermediate_size=48, max_position_embeddings=64, type_vocab_size=2)),
    "mobilebert": ("MobileBertConfig", "MobileBertModel", "MobileBertForSequenceClassification",
                   dict(hidden_size=64, embedding_size=16, intra_bottleneck_size=32,
                        num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                        num_feedforward_networks=3, max_position_embeddings=64)),
}  # fmt: skip
_SPECIALS = dict(
    unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]", cls_token="[CLS]",
    mask_token="[MASK]",
)  # fmt: skip


def save_wordpiece_tokenizer(folder: Path) -> int:
    """A lower-casing WordPiece tokenizer trained on SENTENCES, saved as BertTokenizer saves one
    (tokenizer.json with the [CLS] $A [SEP] post-processor); returns its vocabulary size."""
    import transformers
    from tokenizers.implementations import BertWordPieceTokenizer

    tok = BertWordPieceTokenizer(lowercase=True)
    tok.train_from_iterator(SENTENCES * 3, vocab_size=160, min_frequency=1)
    fast = transformers.BertTokenizerFast(tokenizer_object=tok._tokenizer, **_SPECIALS)
    fast.save_pretrained(folder)
    return tok.get_vocab_size()


def save_unigram_tokenizer(folder: Path) -> int:
    """A SentencePiece-style Unigram tokenizer (Metaspace, [CLS] $A [SEP]) trained on SENTENCES,
    saved as AlbertTokenizer saves one; returns its vocabulary size."""
    import transformers
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors, trainers
    from tokenizers.models import Unigram

    tok = Tokenizer(Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.Replace("``", '"'), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    specials = ["<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]"]
    trainer = trainers.UnigramTrainer(vocab_size=120, special_tokens=specials, unk_token="<unk>")
    tok.train_from_iterator(SENTENCES * 3, trainer)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0",
        pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    fast = transformers.AlbertTokenizerFast(
        tokenizer_object=tok, **{**_SPECIALS, "unk_token": "<unk>", "pad_token": "<pad>"}
    )
    fast.save_pretrained(folder)
    return tok.get_vocab_size()


def build_encoder(family: str, vocab_size: int, *, labels: bool, seed: int = 0, **overrides):
    """A tiny random transformers encoder of `family` (with a 3-label classification head when
    `labels`), perturbed, in eval mode, fp32."""
    import transformers

    config_cls, base_cls, classifier_cls, extra = FAMILIES[family]
    keywords = {**extra, "vocab_size": vocab_size, **overrides}
    if labels:
        keywords["id2label"] = dict(enumerate(LABELS))
    config = getattr(transformers, config_cls)(**keywords)
    torch.manual_seed(seed)
    model = getattr(transformers, classifier_cls if labels else base_cls)(config).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    std = 0.1 if family == "mobilebert" else 0.2  # NoNorm does not rein the activations in
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name or "layer_norm" in name:
                p.add_(0.3 * torch.randn(p.shape, generator=gen))
            elif name.endswith(".bias"):
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(std * torch.randn(p.shape, generator=gen))
    return model


def save_encoder(family: str, folder: Path, *, labels: bool, **overrides) -> Path:
    """A Hugging Face folder: the tokenizer of the family's kind and a tiny random encoder."""
    save = save_unigram_tokenizer if family == "albert" else save_wordpiece_tokenizer
    vocab = save(folder)
    build_encoder(family, vocab, labels=labels, **overrides).save_pretrained(folder)
    return folder
