"""An `export onnx` classifier where PocketLM runs classifiers (engine/classify.open_classifier,
and so `classify predict/eval` and serve's POST /v1/classify): the same logits as the torch
classifier within 1e-4, padding included; an encoder graph takes token_type_ids."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pocketlm.checkpoint.model_io import load_model, save_model
from pocketlm.common.errors import ConfigError
from pocketlm.engine.classify import open_classifier
from pocketlm.engine.load import classifier_labels
from pocketlm.interop.onnx_export import export_onnx
from pocketlm.model.classifier import to_classifier
from pocketlm.model.config import ModelConfig
from pocketlm.model.transformer import build_model

ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed: pip install '.[onnx]'")
pytest.importorskip("onnx", reason="onnx not installed: pip install '.[onnx]'")
sys.path.insert(0, str(Path(__file__).parents[1] / "interop"))  # hf_encoders

LABELS = ("negative", "neutral", "positive")
TEXTS = ["the cat sat", "a big red ball and a small blue ball in the park", "happy", "sad story"]


@pytest.fixture(scope="module")
def exported(synthetic_pipeline, tmp_path_factory):
    """(classifier dir, its ONNX dir): a tiny decoder classifier."""
    root = tmp_path_factory.mktemp("onnx-cls")
    config = ModelConfig(vocab_size=512, dim=32, n_layers=2, n_heads=2, n_kv_heads=1, max_seq_len=24)  # fmt: skip
    model = to_classifier(build_model(config, seed=4), LABELS, seed=1, std=0.5)
    src = save_model(root / "model", model, synthetic_pipeline["tokenizer"])
    return src, export_onnx(src, root / "onnx")


def test_the_onnx_classifier_predicts_what_the_torch_one_does(exported):
    src, onnx_dir = exported
    torch_cls = open_classifier(src, device="cpu", precision="fp32")
    onnx_cls = open_classifier(onnx_dir, threads=1)
    assert onnx_cls.labels == LABELS and classifier_labels(onnx_dir) == LABELS
    tokens = torch_cls.prepare(TEXTS)
    want, got = torch_cls.logits(tokens, batch_size=3), onnx_cls.logits(tokens, batch_size=3)
    assert np.abs(got - want).max() < 1e-4  # batches right-padded to their longest
    for a, b in zip(onnx_cls.predict(TEXTS), torch_cls.predict(TEXTS), strict=True):
        assert a.label == b.label and a.tokens == b.tokens
        assert max(abs(a.probabilities[k] - b.probabilities[k]) for k in LABELS) < 1e-4


def test_the_onnx_classifier_refuses_what_it_cannot_take(exported, synthetic_pipeline, tmp_path):
    src, onnx_dir = exported
    with pytest.raises(ConfigError, match="without adapters"):
        open_classifier(onnx_dir, adapter=src)
    with pytest.raises(ConfigError, match="on the CPU"):
        open_classifier(onnx_dir, device="cuda")
    config = ModelConfig(vocab_size=512, dim=32, n_layers=1, n_heads=2, n_kv_heads=1)
    lm = export_onnx(save_model(tmp_path / "lm", build_model(config), synthetic_pipeline["tokenizer"]), tmp_path / "onnx")  # fmt: skip
    assert classifier_labels(lm) == ()
    with pytest.raises(ConfigError, match="not a classifier"):
        open_classifier(lm)


def test_an_encoder_graph_takes_token_type_ids(tmp_path):
    """BERT (token-type embeddings): the graph's token_type_ids change the logits as in torch;
    open_classifier feeds type 0, as the torch classifier defaults."""
    from hf_encoders import save_encoder

    from pocketlm.interop.hf_import import import_hf

    artifact = import_hf(save_encoder("bert", tmp_path / "hf", labels=True), tmp_path / "art")
    out = export_onnx(artifact, tmp_path / "onnx")
    model = load_model(artifact).model.eval()
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask", "token_type_ids"]  # fmt: skip
    ids = np.array([[2, 10, 11, 12, 3], [2, 14, 3, 0, 0]])
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    types = np.array([[0, 0, 1, 1, 1], [0, 1, 1, 0, 0]])
    got = session.run(None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": types})[0]
    with torch.inference_mode():
        want = model(torch.tensor(ids), attention_mask=torch.tensor(mask), token_type_ids=torch.tensor(types)).numpy()  # fmt: skip
        zero = model(torch.tensor(ids), attention_mask=torch.tensor(mask)).numpy()
    assert np.abs(got - want).max() < 1e-4 and np.abs(want - zero).max() > 1e-3
    rows = [[2, 10, 11, 12, 3], [2, 14, 3]]
    assert np.abs(open_classifier(out, threads=1).logits(rows) - zero).max() < 1e-4


def test_classify_predict_and_serve_open_the_export(exported):
    """`classify predict` writes the torch classifier's labels; `serve` batches the export."""
    import io
    import json

    pytest.importorskip("fastapi")
    from pocketlm.cli.main import build_parser
    from pocketlm.cli.serve_cmd import open_models
    from pocketlm.engine.classify_batcher import ClassifyBatcher
    from pocketlm.pipelines.classify import predict_lines

    src, onnx_dir = exported
    lines = {}
    for name, path in (("torch", src), ("onnx", onnx_dir)):
        out = io.StringIO()
        assert predict_lines(path, TEXTS, out) == len(TEXTS)
        lines[name] = [json.loads(line)["label"] for line in out.getvalue().splitlines()]
    assert lines["onnx"] == lines["torch"]
    args = build_parser().parse_args(["serve", "--model", str(onnx_dir), "--slots", "2"])
    base, adapters = open_models(args, threads=1)
    assert isinstance(base.scheduler, ClassifyBatcher) and adapters == []
    assert base.scheduler.labels == LABELS
