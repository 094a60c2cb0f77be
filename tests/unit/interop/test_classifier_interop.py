"""Decoder classifiers to and from transformers: `export hf` writes the family's
*ForSequenceClassification, which AutoModelForSequenceClassification loads with the same logits on
right-padded batches; an HF *ForSequenceClassification folder of every decoder family imports with
the same logits and exports back tensor for tensor."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from hf_families import FAMILIES, build_hf_model

from pocketlm.checkpoint.model_io import load_model, save_model
from pocketlm.common.errors import ArtifactError, UnsupportedModelError
from pocketlm.interop.families import find_family
from pocketlm.interop.families.hf_config import model_config
from pocketlm.interop.gguf_export import export_gguf
from pocketlm.interop.hf_export import export_hf
from pocketlm.interop.hf_import import import_hf
from pocketlm.model.classifier import to_classifier
from pocketlm.tokenizer.tokenizer import Tokenizer

transformers = pytest.importorskip("transformers")
from safetensors import safe_open  # noqa: E402
from transformers.models.auto.modeling_auto import (  # noqa: E402
    MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES as SEQ_CLS,
)

LABELS = ("negative", "neutral", "positive")


def _right_padded(lengths: list[int], pad: int, seed: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask): random ids in 3..511 (never the pad), each row padded on the right."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.full((len(lengths), max(lengths)), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        ids[row, :n] = torch.randint(3, 512, (n,), generator=gen)
        mask[row, :n] = 1
    return ids, mask


def _hf_classifier(folder):
    return transformers.AutoModelForSequenceClassification.from_pretrained(str(folder)).eval()


def test_pocketlm_classifier_exports_as_llama_for_sequence_classification(tiny_model_dir, tmp_path):
    model = to_classifier(load_model(tiny_model_dir).model, LABELS, seed=2, std=0.5)
    ours = save_model(tmp_path / "cls", model, tiny_model_dir)
    out = export_hf(ours, tmp_path / "hf")
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForSequenceClassification"]
    assert config["id2label"] == {"0": "negative", "1": "neutral", "2": "positive"}
    assert config["label2id"] == {"negative": 0, "neutral": 1, "positive": 2}
    pad = config["pad_token_id"]
    tok = Tokenizer.load(ours)
    assert pad == tok.pad_id
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert "score.weight" in set(f.keys()) and "lm_head.weight" not in set(f.keys())
    assert "AutoModelForSequenceClassification" in (out / "README.md").read_text()

    theirs = _hf_classifier(out)
    assert theirs.config.id2label == {0: "negative", 1: "neutral", 2: "positive"}
    ids, mask = _right_padded([9, 4, 1, 12], pad)
    with torch.no_grad():
        want = load_model(ours).model(ids, attention_mask=mask)
        got = theirs(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert want.std() > 0.1

    # transformers' tokenizer encodes a text as the classifier's own encoding does (bos first)
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(out))
    texts = ["the cat sat", "a big red ball"]
    assert hf_tok(texts)["input_ids"] == tok.encode_inputs(texts)

    pytest.importorskip("gguf")
    with pytest.raises(ArtifactError, match="classifier"):
        export_gguf(ours, tmp_path / "x.gguf")


def test_a_model_without_a_pad_token_exports_eos_as_the_pad():
    from types import SimpleNamespace

    from pocketlm.interop.hf_export import classifier_pad_id

    no_pad = SimpleNamespace(pad_id=None, eos_id=9)
    assert classifier_pad_id({"pad_token_id": None, "eos_token_id": [7, 8]}, no_pad) == 7
    assert classifier_pad_id({"pad_token_id": None}, no_pad) == 9
    assert classifier_pad_id({"pad_token_id": 5, "eos_token_id": 7}, no_pad) == 5
    assert classifier_pad_id({}, SimpleNamespace(pad_id=3, eos_id=9)) == 3
    assert classifier_pad_id({}, SimpleNamespace(pad_id=None, eos_id=None)) == 0


def _seq_cls_folder(family: str, root, tokenizer_dir):
    model_type = FAMILIES[family][0].removesuffix("Config")
    config = getattr(transformers, FAMILIES[family][0])()
    cls = SEQ_CLS[config.model_type]
    model = build_hf_model(
        family,
        model_cls=cls,
        id2label=dict(enumerate(LABELS)),
        label2id={label: i for i, label in enumerate(LABELS)},
    )
    folder = root / f"{family}-{model_type}-cls"
    model.save_pretrained(folder)
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copyfile(tokenizer_dir / f, folder / f)
    return folder, model


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_decoder_familys_classifier_imports_and_exports_with_its_logits(
    family, synthetic_pipeline, tmp_path
):
    folder, theirs = _seq_cls_folder(family, tmp_path, synthetic_pipeline["tokenizer"])
    hf = json.loads((folder / "config.json").read_text())
    spec = find_family(hf)
    assert hf["architectures"] == [spec.classifier_architecture]
    artifact = import_hf(folder, tmp_path / "ours")
    loaded = load_model(artifact)
    assert loaded.config.labels == LABELS and loaded.config.pooling == "last"
    ids, mask = _right_padded([11, 5, 1], hf["pad_token_id"])
    with torch.no_grad():
        want = theirs(input_ids=ids, attention_mask=mask).logits
        got = loaded.model(ids, attention_mask=mask)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert want.std() > 0.05

    back = export_hf(artifact, tmp_path / "back")
    written = json.loads((back / "config.json").read_text())
    assert written["architectures"] == hf["architectures"]
    assert written["id2label"] == {str(i): label for i, label in enumerate(LABELS)}
    source, written_back = folder / "model.safetensors", back / "model.safetensors"
    with safe_open(str(source), "pt") as a, safe_open(str(written_back), "pt") as b:
        names = set(a.keys())
        assert names == set(b.keys())
        assert all(torch.equal(a.get_tensor(k), b.get_tensor(k)) for k in names)
    with torch.no_grad():
        again = _hf_classifier(back)(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(again, want, atol=1e-5, rtol=0)


def test_classifier_configs_transformers_cannot_mean_are_refused():
    base = {
        "architectures": ["LlamaForSequenceClassification"], "model_type": "llama",
        "vocab_size": 64, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
        "num_attention_heads": 4, "max_position_embeddings": 32,
    }  # fmt: skip
    spec = find_family(base)
    assert model_config(spec, base).labels == ("LABEL_0", "LABEL_1")  # transformers' default
    with pytest.raises(UnsupportedModelError, match="regression"):
        model_config(spec, {**base, "id2label": {"0": "score"}})
    with pytest.raises(UnsupportedModelError, match="problem_type"):
        model_config(spec, {**base, "problem_type": "multi_label_classification"})
    with pytest.raises(UnsupportedModelError, match="0..n-1"):
        model_config(spec, {**base, "id2label": {"0": "a", "2": "b"}})
