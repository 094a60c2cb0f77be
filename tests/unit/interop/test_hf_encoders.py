"""BERT, DistilBERT, ALBERT and MobileBERT imported from tiny random models `transformers` built
and saved: classifier logits and base hidden states equal to transformers' in fp32 (padding on
the right, attention masks, token types), token ids equal to AutoTokenizer's (WordPiece and Unigram, with
[CLS] ... [SEP]), `export hf` back to the family (AutoModelForSequenceClassification / AutoModel
load it with the same outputs), masked-LM folders as base encoders, refused configs."""

from __future__ import annotations

import json

import pytest
import torch
from hf_encoders import LABELS, SENTENCES, build_encoder, save_encoder

from pocketlm.checkpoint.model_io import load_model
from pocketlm.common.errors import InputError, UnsupportedModelError
from pocketlm.compress.quantize import quantize_model_dir
from pocketlm.engine.native_backend import NativeBackend, NativeUnavailable
from pocketlm.interop.hf_export import export_hf
from pocketlm.interop.hf_import import import_hf
from pocketlm.interop.open_model import model_dir
from pocketlm.model.config import ModelConfig

transformers = pytest.importorskip("transformers")
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

ENCODERS = ("bert", "distilbert", "albert", "mobilebert")
# What each family must turn on (so a test cannot pass with the feature silently off).
FEATURES = {
    "bert": {"causal", "position_kind", "type_vocab_size", "embed_norm", "norm_position"},
    "distilbert": {"causal", "position_kind", "embed_norm", "norm_position"},
    "albert": {"causal", "type_vocab_size", "embed_dim", "shared_layers", "norm_position"},
    "mobilebert": {"embed_trigram", "bottleneck_dim", "n_ffn", "norm_kind", "activation"},
}
POOLERS = {"bert": "tanh", "distilbert": "relu", "albert": "tanh", "mobilebert": "tanh"}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(family, labels) -> (HF folder, imported artifact), each made once per module."""
    root = tmp_path_factory.mktemp("encoders")
    made: dict = {}

    def get(family: str, labels: bool):
        if (family, labels) not in made:
            name = f"{family}-{'classifier' if labels else 'base'}"
            folder = save_encoder(family, root / name, labels=labels)
            made[family, labels] = folder, import_hf(folder, root / f"pocketlm-{name}")
        return made[family, labels]

    return get


def _batch(folder, pairs: bool = False):
    tok = transformers.AutoTokenizer.from_pretrained(str(folder))
    if pairs:  # two segments: token types 0 and 1
        return tok(SENTENCES[:3], SENTENCES[3:6], padding=True, return_tensors="pt")
    return tok(SENTENCES, padding=True, return_tensors="pt")  # padded on the right


def _theirs(hf, batch, family: str) -> torch.Tensor:
    """transformers' first output for a padded batch. MobileBERT's trigram embeddings read the
    padding beside a row's last token, so its padded rows depend on the padding; PocketLM's do
    not (zeros past a sequence's end, as transformers gives the row alone): compare with each
    row run alone."""
    with torch.no_grad():
        if family != "mobilebert":
            return hf(**batch)[0]
        rows = []
        for i, n in enumerate(batch["attention_mask"].sum(1).tolist()):
            alone = hf(**{k: v[i : i + 1, :n] for k, v in batch.items()})[0]  # (1, n, ...)
            if alone.dim() == 3:  # hidden states: pad back to the batch's length
                alone = torch.nn.functional.pad(alone, (0, 0, 0, batch["input_ids"].shape[1] - n))
            rows.append(alone)
        return torch.cat(rows)


def _ours(model, batch):
    kwargs = {"attention_mask": batch["attention_mask"]}
    if "token_type_ids" in batch and model.config.type_vocab_size:
        kwargs["token_type_ids"] = batch["token_type_ids"]
    with torch.no_grad():
        return model(batch["input_ids"], **kwargs)


@pytest.mark.parametrize("family", ENCODERS)
def test_classifier_logits_match_transformers(built, family):
    folder, artifact = built(family, True)
    config = ModelConfig.load(artifact / "model_config.json")
    assert FEATURES[family] <= set(config.family_features())
    assert config.labels == LABELS and config.pooler == POOLERS[family]
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(str(folder)).eval()
    model = load_model(artifact).model
    for batch in (_batch(folder), _batch(folder, pairs=family != "distilbert")):
        assert not batch["attention_mask"].all()  # some rows are padded
        theirs = _theirs(hf, batch, family)
        torch.testing.assert_close(_ours(model, batch), theirs, atol=1e-5, rtol=0)
        assert theirs.std() > 0.1


@pytest.mark.parametrize("family", ENCODERS)
def test_base_encoder_hidden_states_match_transformers(built, family):
    folder, artifact = built(family, False)
    loaded = load_model(artifact)
    config = loaded.config
    assert not config.labels and not hasattr(loaded.model, "lm_head")
    assert config.pooler == ("none" if family == "distilbert" else "tanh")  # BertModel's pooler
    hf = transformers.AutoModel.from_pretrained(str(folder)).eval()
    batch = _batch(folder)
    theirs = _theirs(hf, batch, family)
    ours = _ours(loaded.model, batch)  # (B, T, dim)
    real = batch["attention_mask"].bool()
    assert ours.shape == theirs.shape
    # 1e-5, relative to the largest state where they exceed 1 (MobileBERT's un-normalised ones)
    atol = 1e-5 * max(1.0, theirs[real].abs().max().item())
    torch.testing.assert_close(ours[real], theirs[real], atol=atol, rtol=0)
    if config.pooler != "none":  # kept for a classifier built on it: the pooled [CLS]
        n = int(batch["attention_mask"][0].sum())
        alone = {k: v[:1, :n] for k, v in batch.items()}
        with torch.no_grad():
            want = hf(**alone).pooler_output
            pooled = torch.tanh(loaded.model.pooler(_ours(loaded.model, alone)[:, 0]))
        torch.testing.assert_close(pooled, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", ["bert", "albert"])
def test_token_ids_match_autotokenizer(built, family):
    """WordPiece (BERT) and Unigram (ALBERT) through tokenizer.json, [CLS] text [SEP] included."""
    folder, artifact = built(family, True)
    theirs = transformers.AutoTokenizer.from_pretrained(str(folder))
    ours = load_model(artifact).tokenizer
    want = [theirs(s)["input_ids"] for s in SENTENCES]
    assert [ours.encode(s, add_special_tokens=True) for s in SENTENCES] == want
    assert ours.encode_batch(SENTENCES, add_special_tokens=True) == want
    cls, sep = theirs.cls_token_id, theirs.sep_token_id
    assert all(ids[0] == cls and ids[-1] == sep for ids in want)
    assert ours.encode(SENTENCES[0]) == want[0][1:-1]  # without: the text's tokens only
    with pytest.raises(ValueError, match="pick one"):
        ours.encode("a", add_bos=True, add_special_tokens=True)


@pytest.mark.parametrize("family", ENCODERS)
@pytest.mark.parametrize("labels", [True, False], ids=["classifier", "base"])
def test_export_hf_loads_back_with_the_same_outputs(built, family, labels, tmp_path):
    folder, artifact = built(family, labels)
    out = export_hf(artifact, tmp_path / "export")
    written = json.loads((out / "config.json").read_text())
    source = json.loads((folder / "config.json").read_text())
    assert written["architectures"] == source["architectures"]
    with (
        safe_open(str(out / "model.safetensors"), "pt") as f,
        safe_open(str(folder / "model.safetensors"), "pt") as g,
    ):
        assert set(f.keys()) == set(g.keys())
    auto = transformers.AutoModelForSequenceClassification if labels else transformers.AutoModel
    batch = _batch(folder)
    with torch.no_grad():
        theirs = auto.from_pretrained(str(folder)).eval()(**batch)[0]
        back = auto.from_pretrained(str(out)).eval()(**batch)[0]
    torch.testing.assert_close(back, theirs, atol=1e-6, rtol=0)
    if labels:
        assert written["id2label"] == {str(i): name for i, name in enumerate(LABELS)}
    assert not (out / "generation_config.json").exists()


def test_masked_lm_folder_imports_as_a_base_encoder_with_legacy_names(tmp_path):
    """BertForPreTraining (as bert-base-uncased ships): its masked-LM and next-sentence heads
    are skipped, its pooler kept, LayerNorm.gamma / .beta read as weight / bias."""
    folder = save_encoder("bert", tmp_path / "hf", labels=False)
    vocab = json.loads((folder / "config.json").read_text())["vocab_size"]
    hf = transformers.BertForPreTraining(build_encoder("bert", vocab, labels=False).config)
    hf.bert.load_state_dict(build_encoder("bert", vocab, labels=False).state_dict())
    hf.eval().save_pretrained(str(folder))
    weights = load_file(str(folder / "model.safetensors"))
    legacy = {
        k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
        for k, v in weights.items()
    }  # fmt: skip
    legacy["bert.embeddings.position_ids"] = torch.arange(64)[None]
    assert any(k.startswith("cls.") for k in legacy)
    save_file(legacy, str(folder / "model.safetensors"), metadata={"format": "pt"})
    loaded = load_model(import_hf(folder, tmp_path / "imported"))
    assert loaded.config.pooler == "tanh" and not loaded.config.labels
    batch = _batch(folder)
    with torch.no_grad():
        theirs = hf.bert(**batch).last_hidden_state
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(_ours(loaded.model, batch)[real], theirs[real], atol=1e-5, rtol=0)


def test_masked_lm_without_pooler_imports_without_one(tmp_path):
    folder = save_encoder("albert", tmp_path / "hf", labels=False)
    vocab = json.loads((folder / "config.json").read_text())["vocab_size"]
    hf = transformers.AlbertForMaskedLM(build_encoder("albert", vocab, labels=False).config)
    hf.eval().save_pretrained(str(folder))
    config = load_model(import_hf(folder, tmp_path / "imported")).config
    assert config.pooler == "none" and config.shared_layers


@pytest.mark.parametrize(
    ("family", "overrides", "key"),
    [
        ("albert", dict(num_hidden_groups=2), "num_hidden_groups"),
        ("albert", dict(inner_group_num=2), "inner_group_num"),
        ("bert", dict(position_embedding_type="relative_key"), "position_embedding_type"),
        ("bert", dict(problem_type="multi_label_classification"), "problem_type"),
    ],
)
def test_configs_pocketlm_does_not_run_are_refused(tmp_path, family, overrides, key):
    folder = save_encoder(family, tmp_path / "hf", labels=True)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **overrides}))
    with pytest.raises(UnsupportedModelError, match=key):
        import_hf(folder, tmp_path / "imported")


def test_open_model_imports_an_encoder_folder_and_native_refuses_it(built, tmp_path):
    folder, _ = built("bert", True)
    artifact = model_dir(folder, cache=tmp_path / "cache")
    config = ModelConfig.load(artifact / "model_config.json")
    assert config.labels == LABELS
    assert model_dir(folder, cache=tmp_path / "cache") == artifact  # imported once
    with pytest.raises(NativeUnavailable, match="classifier has no LM head") as info:
        NativeBackend(artifact, config)
    assert "causal" in info.value.features


def test_an_encoder_quantizes_to_bf16_only(built, tmp_path):
    folder, artifact = built("bert", True)
    with pytest.raises(InputError, match="bf16 only"):
        quantize_model_dir(artifact, tmp_path / "int8", "int8")
    out, _ = quantize_model_dir(artifact, tmp_path / "bf16", "bf16")
    batch = _batch(folder)
    full, half = load_model(artifact).model, load_model(out).model
    torch.testing.assert_close(_ours(half, batch).float(), _ours(full, batch), atol=0.05, rtol=0)
