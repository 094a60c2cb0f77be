"""evaluate_tasks on a tiny model: every task kind, the report's numbers against the scoring code
and lm-eval's definitions, few-shot repeatability, classifiers, quantized models and --out."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pocketlm.common.errors import ConfigError
from pocketlm.engine.load import open_backend
from pocketlm.evals.loglikelihood import encode_pairs, score_continuations
from pocketlm.pipelines.task_eval import TaskEvalSettings, evaluate_tasks

TORCH = TaskEvalSettings(backend="torch", device="cpu")
QUESTIONS = [
    ("The little dog", ["ran to the park", "sky", "and the big red ball"], 0),
    ("Once upon a time there was a", ["girl", "cloud river", "sun"], 1),
    ("The cat said", ["hello", "happy", "moon star"], 2),
    ("A bird", ["can fly", "tree", "cake"], 0),
    ("Mom and dad", ["went home", "green", "water"], 0),
]


def _write(path, records) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


@pytest.fixture
def mc_file(tmp_path):
    return _write(
        tmp_path / "mc.jsonl",
        [{"question": q, "choices": c, "answer": a} for q, c, a in QUESTIONS],
    )


def test_choice_scores_follow_lm_evals_definitions(tiny_model_dir, mc_file):
    report = evaluate_tasks(tiny_model_dir, [mc_file], TORCH)
    task = report["tasks"]["mc"]
    assert task["kind"] == "choice" and task["items"] == 5 and task["primary"] == "acc"
    backend, tok = open_backend(tiny_model_dir, backend="torch", device="cpu")
    acc, acc_norm = [], []
    for question, choices, gold in QUESTIONS:
        ctx, conts = encode_pairs(tok, question, [" " + c for c in choices])
        lls = np.array([s.loglikelihood for s in score_continuations(backend, ctx, conts)])
        acc.append(float(np.argmax(lls) == gold))
        acc_norm.append(float(np.argmax(lls / np.array([len(c) for c in choices])) == gold))
    assert task["metrics"]["acc"]["value"] == pytest.approx(np.mean(acc))
    assert task["metrics"]["acc_norm"]["value"] == pytest.approx(np.mean(acc_norm))
    stderr = np.std(acc, ddof=1) / np.sqrt(len(acc))
    assert task["metrics"]["acc"]["stderr"] == pytest.approx(stderr)
    wrong = task["failures"]
    assert len(wrong) == round(5 * (1 - np.mean(acc)))
    assert all(f["where"].startswith(mc_file) and len(f["loglikelihoods"]) == 3 for f in wrong)


def test_few_shot_is_repeatable(tiny_model_dir, mc_file):
    one = evaluate_tasks(tiny_model_dir, [mc_file], TaskEvalSettings(backend="torch", shots=2))
    two = evaluate_tasks(tiny_model_dir, [mc_file], TaskEvalSettings(backend="torch", shots=2))
    assert one["tasks"] == two["tasks"] and one["shots"] == 2


def test_generation_and_label_words(tiny_model_dir, tmp_path):
    backend, tok = open_backend(tiny_model_dir, backend="torch", device="cpu")
    prompt = "The little dog"
    from pocketlm.engine.generation import GenerationEngine
    from pocketlm.engine.sampling import SamplingParams

    greedy = (
        GenerationEngine(backend, tok)
        .complete(prompt, SamplingParams(max_new_tokens=6, temperature=0))
        .text
    )
    gen = _write(
        tmp_path / "gen.jsonl",
        [
            {"prompt": prompt, "answer": greedy.strip()},  # what it says: an exact match
            {"prompt": prompt, "answer": "zebra", "regex": "."},
            {"prompt": "A bird", "answer": ["zebra", "giraffe"]},
        ],
    )
    cls = _write(
        tmp_path / "cls.jsonl",
        [{"text": "The dog ran.", "label": "happy"}, {"text": "It rained.", "label": "sad"}],
    )
    report = evaluate_tasks(
        tiny_model_dir, [gen, cls], TaskEvalSettings(backend="torch", max_new_tokens=6)
    )
    g = report["tasks"]["gen"]
    assert g["kind"] == "generate" and g["primary"] == "regex"
    assert g["metrics"]["exact_match"]["value"] == pytest.approx(1 / 3)
    assert g["metrics"]["regex"]["value"] == 1.0 and g["metrics"]["regex"]["stderr"] is None
    assert [f["expected"] for f in g["failures"]] == []  # the one regex item passes
    c = report["tasks"]["cls"]
    assert c["kind"] == "classify" and set(c["metrics"]) == {"acc", "acc_norm", "acc_bytes"}


def test_a_classifier_labels_a_classify_task(tiny_classifier_dir, tmp_path):
    from pocketlm.engine.classify import open_classifier

    texts = ["The dog ran to the park.", "It rained all night.", "A happy bird sang."]
    predicted = [p.label for p in open_classifier(tiny_classifier_dir, device="cpu").predict(texts)]
    gold = ["positive", "negative", "positive"]
    path = _write(tmp_path / "sent.jsonl", [{"text": t, "label": g} for t, g in zip(texts, gold)])
    task = evaluate_tasks(tiny_classifier_dir, [path], TORCH)["tasks"]["sent"]
    assert task["metrics"]["acc"]["value"] == pytest.approx(
        np.mean([p == g for p, g in zip(predicted, gold)])
    )
    mc = _write(tmp_path / "mc.jsonl", [{"question": "Q", "choices": ["a", "b"], "answer": 0}])
    with pytest.raises(ConfigError, match="scores text/label tasks only"):
        evaluate_tasks(tiny_classifier_dir, [mc], TORCH)


def test_quantized_model_and_the_artifact(tiny_model_dir, mc_file, tmp_path):
    from pocketlm.common.manifest import read_manifest
    from pocketlm.compress.quantize import quantize_model_dir

    q8, _ = quantize_model_dir(tiny_model_dir, tmp_path / "q8", "int8")
    out = tmp_path / "eval"
    report = evaluate_tasks(q8, [mc_file], TaskEvalSettings(limit=3), out=out)
    assert report["tasks"]["mc"]["items"] == 3 and report["out"] == str(out)
    assert json.loads((out / "report.json").read_text())["tasks"] == report["tasks"]
    assert "| mc | choice | 3 | acc (primary) |" in (out / "report.md").read_text()
    assert read_manifest(out)["kind"] == "task-eval"


def test_parity_of_a_model_and_its_int8_variant(tiny_model_dir, mc_file, tmp_path):
    from pocketlm.compress.quantize import quantize_model_dir
    from pocketlm.evals.task_parity import parity, parity_markdown, read_items

    q8, _ = quantize_model_dir(tiny_model_dir, tmp_path / "q8", "int8")
    settings = TaskEvalSettings(backend="torch", precision="fp32")
    ref = evaluate_tasks(tiny_model_dir, [mc_file], settings, out=tmp_path / "ref")
    var = evaluate_tasks(q8, [mc_file], settings)
    same = parity(ref["items"], read_items(tmp_path / "ref"))["mc"]
    assert same["same_answer"] == 1.0 and same["loglikelihood_abs_diff"]["max"] == 0.0
    table = parity(ref["items"], var["items"])
    entry = table["mc"]
    assert entry["items"] == 5 and 0.0 <= entry["same_answer"] <= 1.0
    assert entry["metrics"]["acc"]["difference"] == pytest.approx(
        var["tasks"]["mc"]["metrics"]["acc"]["value"]
        - ref["tasks"]["mc"]["metrics"]["acc"]["value"]
    )
    assert 0 < entry["loglikelihood_abs_diff"]["max"] < 1.0  # int8 moves the numbers a little
    assert "| mc | acc |" in parity_markdown(table, ("fp32", "int8"))
