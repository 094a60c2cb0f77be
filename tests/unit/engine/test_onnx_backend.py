"""The onnxruntime backend (an `export onnx` directory): the engine's greedy tokens are the torch
backend's, slots of any lengths decode in one run with the logits of each alone, the loader picks
it by the path and refuses what does not fit, and bench measures it. The protocol itself is
test_backend_protocol.py's, run on every backend."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from pocketlm.common.errors import ConfigError
from pocketlm.engine.bench import bench_model
from pocketlm.engine.generation import GenerationEngine
from pocketlm.engine.load import open_backend
from pocketlm.engine.sampling import SamplingParams

pytest.importorskip("onnxruntime", reason="onnxruntime not installed: pip install '.[onnx]'")
sys.path.insert(0, str(Path(__file__).parents[1] / "interop"))
from onnx_models import save_family

from pocketlm.interop.onnx_export import export_onnx

GREEDY = 64


@pytest.fixture(scope="module")
def exported(synthetic_pipeline, tmp_path_factory):
    """(model dir, its ONNX dir) of the Gemma 3 option set: sliding layers past their window."""
    root = tmp_path_factory.mktemp("onnx-backend")
    src = save_family(root, "gemma3", synthetic_pipeline["tokenizer"])
    return src, export_onnx(src, root / "onnx")


def test_greedy_generation_is_the_torch_backends(exported):
    src, onnx_dir = exported
    params = SamplingParams(temperature=0, max_new_tokens=GREEDY)
    greedy, texts = {}, {}
    for kind, path in (("torch", src), ("onnx", onnx_dir)):
        backend, tokenizer = open_backend(path, backend=kind, device="cpu", precision="fp32")
        assert backend.name == kind
        texts[kind] = GenerationEngine(backend, tokenizer).complete("the cat sat", params).token_ids
        backend.release(0)
        tokens = [int(np.argmax(backend.prefill(0, [1, 40, 41, 42])))]
        for _ in range(GREEDY - 1):  # every step, never stopping at an end token
            tokens.append(int(np.argmax(backend.decode([0], [tokens[-1]])[0])))
        greedy[kind] = tokens
    assert greedy["onnx"] == greedy["torch"] and texts["onnx"] == texts["torch"]


def test_slots_decode_together_as_each_alone(exported):
    """One run for slots of any lengths (right-padded: the fused graph), past the sliding window
    of 8 too."""
    _, onnx_dir = exported
    assert json.loads((onnx_dir / "onnx_config.json").read_text())["padding_side"] == "right"
    _decode_together(onnx_dir)


def test_slots_decode_together_in_the_traced_graph(synthetic_pipeline, tmp_path):
    """The traced graph (Phi-2's options) takes Optimum's left padding."""
    src = save_family(tmp_path, "phi2_parallel", synthetic_pipeline["tokenizer"])
    onnx_dir = export_onnx(src, tmp_path / "onnx")
    assert json.loads((onnx_dir / "onnx_config.json").read_text())["padding_side"] == "left"
    _decode_together(onnx_dir)


def _decode_together(onnx_dir):
    backend, _ = open_backend(onnx_dir, slots=3, threads=1)
    alone, _ = open_backend(onnx_dir, slots=1, threads=1)
    prompts = [list(range(5, 17)), list(range(30, 42)), [13, 14]]  # 12, 12 and 2 tokens
    for slot, prompt in enumerate(prompts):
        backend.prefill(slot, prompt)
    for step in range(3):  # the rows follow the order of the slots asked
        tokens = [20 + step, 21 + step, 22 + step]
        got = backend.decode([1, 0, 2], tokens)
        for row, slot in enumerate([1, 0, 2]):
            prompts[slot].append(tokens[row])
            alone.release(0)
            want = alone.prefill(0, prompts[slot])
            assert np.abs(got[row] - want).max() < 1e-4
    assert [backend.position(s) for s in range(3)] == [15, 15, 5]


def test_the_loader_picks_onnx_by_the_path_and_refuses_what_does_not_fit(exported):
    src, onnx_dir = exported
    backend, tokenizer = open_backend(onnx_dir)  # auto
    assert backend.name == "onnx" and backend.device == "cpu"
    assert tokenizer.encode("the cat") == open_backend(src, backend="torch")[1].encode("the cat")
    with pytest.raises(ConfigError, match="runs on --backend onnx"):
        open_backend(onnx_dir, backend="torch")
    with pytest.raises(ConfigError, match="is not one: export the model first"):
        open_backend(src, backend="onnx")
    with pytest.raises(ConfigError, match="on the CPU"):
        open_backend(onnx_dir, device="cuda")
    with pytest.raises(ConfigError, match="without adapters"):
        open_backend(onnx_dir, adapter=src)
    assert open_backend(onnx_dir, max_len=20)[0].context_length == 20


def test_a_classifier_graph_generates_nothing(synthetic_pipeline, tmp_path):
    from pocketlm.checkpoint.model_io import save_model
    from pocketlm.model.classifier import to_classifier
    from pocketlm.model.config import ModelConfig
    from pocketlm.model.transformer import build_model

    config = ModelConfig(vocab_size=512, dim=32, n_layers=1, n_heads=2, n_kv_heads=1)
    model = to_classifier(build_model(config), ["a", "b"])
    out = export_onnx(save_model(tmp_path / "clf", model, synthetic_pipeline["tokenizer"]), tmp_path / "onnx")  # fmt: skip
    with pytest.raises(ConfigError, match="text-classification graph"):
        open_backend(out)


def test_bench_measures_the_onnx_directory(exported):
    _, onnx_dir = exported
    result = bench_model(onnx_dir, prompt_tokens=8, new_tokens=4, repeats=1, threads=1)
    assert result["backend"] == "onnx" and result["decode_tokens_per_s"] > 0
    assert result["model_bytes"] == (onnx_dir / "model.onnx").stat().st_size
