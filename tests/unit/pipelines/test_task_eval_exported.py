"""The same `pocketlm eval --task` on the artifacts that ship: an ONNX export (onnxruntime) and a
GGUF file (llama.cpp, slow tier) score the model's tasks as the torch model does, item by item
(evals/task_parity)."""

from __future__ import annotations

import json

import pytest

from pocketlm.evals.task_parity import parity
from pocketlm.pipelines.task_eval import TaskEvalSettings, evaluate_tasks

RECORDS = [
    {
        "question": "The little dog",
        "choices": ["ran to the park", "sky", "big red ball"],
        "answer": 0,
    },
    {"question": "Once upon a time there was a", "choices": ["girl", "cloud river"], "answer": 1},
    {"question": "The cat said", "choices": ["hello", "happy", "moon star"], "answer": 2},
    {"question": "A bird", "choices": ["can fly", "tree", "cake"], "answer": 0},
]
GEN = [{"prompt": "The little dog", "answer": "ran", "stop": ["."]}]


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    root = tmp_path_factory.mktemp("exported-tasks")
    for name, records in (("mc", RECORDS), ("gen", GEN)):
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return [root / "mc.jsonl", root / "gen.jsonl"]


def _check_parity(reference, variant, backend):
    assert variant["backend"] == backend
    table = parity(reference["items"], variant["items"])
    assert table["mc"]["loglikelihood_abs_diff"]["max"] < 1e-3
    assert table["mc"]["same_answer"] == 1.0
    assert table["gen"]["same_answer"] == 1.0  # the same greedy text


def test_an_onnx_export_scores_as_the_torch_model(tiny_model_dir, tasks, tmp_path):
    pytest.importorskip("onnxruntime", reason="onnxruntime not installed: pip install '.[onnx]'")
    from pocketlm.interop.onnx_export import export_onnx

    fp32 = TaskEvalSettings(backend="torch", precision="fp32", max_new_tokens=8)
    reference = evaluate_tasks(tiny_model_dir, tasks, fp32)
    onnx_dir = export_onnx(tiny_model_dir, tmp_path / "onnx")
    variant = evaluate_tasks(onnx_dir, tasks, TaskEvalSettings(max_new_tokens=8))
    _check_parity(reference, variant, "onnx")


@pytest.mark.slow
def test_a_gguf_file_scores_as_the_torch_model(tiny_model_dir, tasks, tmp_path):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python not installed (slow CI tier)")
    from pocketlm.interop.gguf_export import export_gguf

    fp32 = TaskEvalSettings(backend="torch", precision="fp32", max_new_tokens=8)
    reference = evaluate_tasks(tiny_model_dir, tasks, fp32)
    path = export_gguf(tiny_model_dir, tmp_path / "model.gguf")
    variant = evaluate_tasks(path, tasks, TaskEvalSettings(max_new_tokens=8))
    _check_parity(reference, variant, "llamacpp")
