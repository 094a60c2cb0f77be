"""`pocketlm compare`'s library on the tiny model, its int8 variant and its exports: every
variant measured in its own process, the table's facts, bits/byte as `pocketlm eval`, task scores
as `pocketlm eval --task`, the parity with the reference, the report artifact."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from pocketlm.common.errors import InputError
from pocketlm.pipelines.compare import CompareSettings, compare_models, variant_facts

FAST = CompareSettings(
    prompt_tokens=8, new_tokens=4, rounds=2, max_tokens=2048, pause_s=0.0, greedy_tokens=8
)
TASK = [
    {
        "question": "The little dog",
        "choices": ["ran to the park", "sky", "big red ball"],
        "answer": 0,
    },
    {"question": "Once upon a time there was a", "choices": ["girl", "cloud river"], "answer": 1},
    {"question": "The cat said", "choices": ["hello", "happy", "moon star"], "answer": 2},
    {"question": "A bird", "choices": ["can fly", "tree", "cake"], "answer": 0},
]


@pytest.fixture(scope="module")
def int8_dir(tiny_model_dir, tmp_path_factory):
    from pocketlm.compress.quantize import quantize_model_dir

    return quantize_model_dir(tiny_model_dir, tmp_path_factory.mktemp("q") / "q8", "int8")[0]


def _files_bytes(directory):
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def test_compare_tiny_model_and_its_int8_variant(
    tiny_model_dir, int8_dir, synthetic_pipeline, tmp_path
):
    from pocketlm.checkpoint.model_io import load_model
    from pocketlm.common.manifest import read_manifest
    from pocketlm.evals.evaluate import evaluate_model

    tokens = synthetic_pipeline["tokens"]
    out, report = compare_models(
        [tiny_model_dir, int8_dir], tmp_path / "cmp", tokens=tokens, settings=FAST
    )
    rows = {r["directory"]: r for r in report["variants"]}
    assert list(rows) == [str(tiny_model_dir), str(int8_dir)]
    n_params = sum(p.numel() for p in load_model(tiny_model_dir).model.parameters())
    for directory, scheme in ((tiny_model_dir, "float"), (int8_dir, "int8")):
        row = rows[str(directory)]
        assert row["params"] == n_params  # quantization keeps the parameter count
        assert row["quantization"] == scheme
        assert row["size_bytes"] == _files_bytes(directory)
        expected = evaluate_model(directory, tokens, max_tokens=FAST.max_tokens)["bpb"]
        assert row["bpb"] == pytest.approx(expected, rel=1e-6)
        assert row["decode_tokens_per_s"] > 0 and row["prefill_tokens_per_s"] > 0
        assert row["time_to_first_token_s"] > 0 and row["peak_memory_mb"] > 0
        assert row["task_accuracy"] is None
    assert rows[str(int8_dir)]["size_bytes"] < rows[str(tiny_model_dir)]["size_bytes"]
    assert report["quality"] == "bpb"
    assert set(report["pareto"]) == {"speed", "size"}
    assert str(rows[str(int8_dir)]["name"]) in report["pareto"]["size"]  # the smallest
    assert (out / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    md = (out / "report.md").read_text(encoding="utf-8")
    assert all(r["name"] in md for r in report["variants"])
    assert json.loads((out / "report.json").read_text()) == report
    # parity: the int8 copy's greedy continuations against the model's (no task: no scores)
    parity = report["parity"]
    assert parity["reference"] == rows[str(tiny_model_dir)]["name"] and parity["tasks"] == {}
    (v,) = parity["variants"]
    assert v["greedy"]["prompts"] == len(FAST.greedy_prompts)
    assert v["greedy"]["tokens"] == FAST.greedy_tokens * len(FAST.greedy_prompts)
    assert 0.0 <= v["greedy"]["until_divergence"] <= 1.0
    assert "## Parity with the reference" in md
    assert all("items" not in r and "greedy" not in r for r in report["variants"])
    manifest = read_manifest(out, kind="compare")
    assert [p["path"] for p in manifest["parents"]] == [
        str(tiny_model_dir.resolve()),
        str(int8_dir.resolve()),
    ]


def test_a_bad_directory_is_named_before_anything_runs(tiny_model_dir, tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(InputError, match="no-such-model"):
        compare_models([tiny_model_dir, missing], tmp_path / "cmp", settings=FAST)
    assert not (tmp_path / "cmp").exists()
    not_a_model = tmp_path / "plain"
    not_a_model.mkdir()
    with pytest.raises(InputError, match="plain"):
        variant_facts(not_a_model, None)


def test_tokens_of_another_tokenizer_are_refused_naming_the_variant(
    tiny_model_dir, synthetic_pipeline, tmp_path
):
    from pocketlm.data.encode import encode_corpus
    from pocketlm.tokenizer.train import TokenizerConfig, train_tokenizer

    corpus = synthetic_pipeline["corpus"]
    tok = train_tokenizer(corpus, tmp_path / "tok", TokenizerConfig(vocab_size=300))
    tokens = encode_corpus(corpus, tok, tmp_path / "tokens")
    with pytest.raises(InputError, match=str(tiny_model_dir)):
        variant_facts(tiny_model_dir, tokens)


@pytest.mark.slow  # ~6-12 s: a measuring process that imports torch, on top of the one above
def test_a_classifier_is_scored_on_the_task_file(tiny_classifier_dir, tmp_path):
    from pocketlm.data.classify_data import read_labelled
    from pocketlm.pipelines.classify import evaluate_examples

    task = tmp_path / "task.csv"
    rows = [f"the {w} text number {i},{lab}" for i, (w, lab) in
            enumerate([("good", "positive"), ("bad", "negative"), ("fine", "positive"),
                       ("awful", "negative"), ("nice", "positive"), ("poor", "negative")])]  # fmt: skip
    task.write_text("text,label\n" + "\n".join(rows) + "\n", encoding="utf-8")
    _, report = compare_models([tiny_classifier_dir], tmp_path / "cmp", task=task, settings=FAST)
    (row,) = report["variants"]
    expected = evaluate_examples(
        tiny_classifier_dir, read_labelled([str(task)]).examples, tmp_path / "eval"
    )["accuracy"]
    assert row["task_accuracy"] == pytest.approx(expected)
    assert row["decode_tokens_per_s"] is None and row["bpb"] is None
    assert report["quality"] == "task_accuracy"
    assert "no decode speed" in row["notes"][0]


def test_a_failure_inside_a_measuring_process_names_the_variant(tiny_model_dir, tmp_path):
    too_long = replace(FAST, prompt_tokens=100_000)  # beyond the tiny model's context
    with pytest.raises(InputError, match=r"model: .*exceed the context"):
        compare_models([tiny_model_dir], tmp_path / "cmp", settings=too_long)
    assert list(tmp_path.iterdir()) == []  # no report, no half-written temporary directory


@pytest.fixture(scope="module")
def task_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("task") / "mc.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in TASK), encoding="utf-8")
    return path


def _task_eval(model, task_file, **settings):
    from pocketlm.pipelines.task_eval import TaskEvalSettings, evaluate_tasks

    return evaluate_tasks(model, [task_file], TaskEvalSettings(**settings))


def test_the_model_its_int8_copy_and_its_onnx_export_against_the_reference(
    tiny_model_dir, int8_dir, task_file, tmp_path
):
    """With --task: each variant scored as `pocketlm eval --task` on its own backend, and the
    parity table: the ONNX export's answers and greedy tokens are the model's."""
    pytest.importorskip("onnxruntime", reason="onnxruntime not installed: pip install '.[onnx]'")
    from pocketlm.common.manifest import read_manifest
    from pocketlm.evals.task_parity import parity
    from pocketlm.interop.onnx_export import export_onnx

    onnx_dir = export_onnx(tiny_model_dir, tmp_path / "onnx")
    # no --tokens: without bits/byte no measuring process imports torch (seconds each)
    out, report = compare_models(
        [tiny_model_dir, int8_dir, onnx_dir], tmp_path / "cmp", task=task_file,
        settings=replace(FAST, rounds=1),
    )  # fmt: skip
    rows = {r["directory"]: r for r in report["variants"]}
    model, int8, onnx = rows[str(tiny_model_dir)], rows[str(int8_dir)], rows[str(onnx_dir)]
    assert onnx["quantization"] == "onnx fp32" and onnx["exported"] == "onnx"
    assert onnx["params"] == model["params"] and onnx["backend"] == "onnx"
    assert onnx["size_bytes"] == _files_bytes(onnx_dir)
    assert onnx["decode_tokens_per_s"] > 0
    assert report["quality"] == "task_accuracy"
    expected = {}
    for directory in (tiny_model_dir, int8_dir, onnx_dir):  # what `pocketlm eval --task` gives
        row = rows[str(directory)]
        ran = _task_eval(directory, task_file, backend="auto", device="cpu")
        expected[directory] = ran
        want = ran["tasks"]["mc"]["metrics"]["acc"]["value"]
        assert row["task_scores"] == {"mc": {"metric": "acc", "value": want}}
        assert row["task_accuracy"] == pytest.approx(want)
    by_name = {v["name"]: v for v in report["parity"]["variants"]}
    assert report["parity"]["reference"] == model["name"]
    assert report["parity"]["tasks"] == model["task_scores"]
    exported = by_name[onnx["name"]]
    assert exported["greedy"]["until_divergence"] == 1.0  # the same model, another runtime
    assert exported["greedy"]["exact_match"] == 1.0
    assert exported["tasks"]["mc"]["difference"] == 0.0
    assert exported["tasks"]["mc"]["same_answer"] == 1.0
    q8 = by_name[int8["name"]]["tasks"]["mc"]
    same = parity(expected[tiny_model_dir]["items"], expected[int8_dir]["items"])["mc"]
    assert q8["same_answer"] == pytest.approx(same["same_answer"])
    assert q8["difference"] == pytest.approx(int8["task_accuracy"] - model["task_accuracy"])
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "| onnx | onnx | 100.0% | 100.0% |" in md and "mc acc" in md
    assert str(onnx_dir.resolve()) in [p["path"] for p in read_manifest(out)["parents"]]


def test_a_bad_task_file_is_named_before_anything_runs(tiny_model_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "choices": ["a"], "answer": 5}\n', encoding="utf-8")
    with pytest.raises(InputError, match="bad.jsonl"):
        compare_models([tiny_model_dir], tmp_path / "cmp", task=bad, settings=FAST)
    assert not (tmp_path / "cmp").exists()


@pytest.mark.slow  # llama.cpp in one more measuring process
def test_a_gguf_file_is_compared_on_llama_cpp(tiny_model_dir, task_file, tmp_path):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python not installed (slow CI tier)")
    from pocketlm.interop.gguf_export import export_gguf

    path = export_gguf(tiny_model_dir, tmp_path / "model.gguf")
    _, report = compare_models(
        [tiny_model_dir, path], tmp_path / "cmp", task=task_file, settings=FAST
    )
    model, gguf = report["variants"]
    assert gguf["exported"] == "gguf" and gguf["quantization"] == "gguf f32"
    assert gguf["backend"] == "llamacpp" and gguf["params"] == model["params"]
    assert gguf["size_bytes"] == path.stat().st_size
    (v,) = report["parity"]["variants"]
    assert v["greedy"]["until_divergence"] == 1.0 and v["tasks"]["mc"]["same_answer"] == 1.0
