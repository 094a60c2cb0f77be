"""The lm-evaluation-harness adapter: lm_eval on a local task YAML gives `pocketlm eval --task`'s
acc and acc_norm to 4 decimals, rolling bits/byte equals `pocketlm eval --tokens`'s (evaluate_bpb)
on the same text, and generate_until stops at `until`. Skips without lm_eval."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

lm_eval = pytest.importorskip("lm_eval")

from pocketlm.pipelines.lm_eval_model import MODEL_NAME, register  # noqa: E402
from pocketlm.pipelines.task_eval import TaskEvalSettings, evaluate_tasks  # noqa: E402

QUESTIONS = [
    ("The little dog", ["ran to the park", "sky", "and the big red ball"], 0),
    ("Once upon a time there was a", ["girl", "cloud river", "sun"], 1),
    ("The cat said", ["hello", "happy", "moon star"], 2),
    ("A bird", ["can fly", "tree", "cake"], 0),
    ("Mom and dad", ["went home", "green", "water"], 0),
    ("The sun", ["is big", "cake", "jumped"], 1),
]

TASK_YAML = """\
task: pocketlm_quiz
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
  - metric: acc_norm
"""


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("lmeval")
    data = root / "quiz.jsonl"
    records = [{"question": q, "choices": c, "answer": a} for q, c, a in QUESTIONS]
    data.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    (root / "quiz.yaml").write_text(TASK_YAML.format(data=data), encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def lm(tiny_model_dir):
    return register()(pretrained=str(tiny_model_dir), backend="torch", device="cpu")


def test_lm_eval_scores_the_local_task_as_pocketlm_eval(lm, task_dir, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    from lm_eval.tasks import TaskManager

    results = lm_eval.simple_evaluate(
        model=lm, tasks=["pocketlm_quiz"], task_manager=TaskManager(include_path=str(task_dir))
    )["results"]["pocketlm_quiz"]
    ours = evaluate_tasks(
        tiny_model_dir, [task_dir / "quiz.jsonl"], TaskEvalSettings(backend="torch")
    )["tasks"]["quiz"]["metrics"]
    for metric in ("acc", "acc_norm"):
        assert round(results[f"{metric},none"], 4) == round(ours[metric]["value"], 4)
        assert round(results[f"{metric}_stderr,none"], 4) == round(ours[metric]["stderr"], 4)


def test_the_model_is_registered_by_name(tiny_model_dir):
    from lm_eval.api.registry import get_model

    register()
    cls = get_model(MODEL_NAME)
    lm = cls.create_from_arg_string(
        f"pretrained={tiny_model_dir},backend=torch,max_gen_toks=5", {"batch_size": 4}
    )
    assert lm.max_gen_toks == 5


class _Split:
    """A tokens split held in memory (what evaluate_bpb reads of a TokenSplit)."""

    def __init__(self, tokens: list[int]) -> None:
        self.tokens = np.asarray(tokens, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.tokens)


def test_rolling_bits_per_byte_equals_pocketlm_eval_tokens(tiny_model_dir):
    """One document as a tokens split holds it (<bos> text <eos>) and lm-eval's rolling windows
    over the same text: with the split a whole number of windows long, the same tokens are
    predicted from the same contexts, so bits/byte agree."""
    from lm_eval.api.instance import Instance

    from pocketlm.checkpoint.model_io import load_model
    from pocketlm.evals.bpb import evaluate_bpb, token_byte_lengths

    loaded = load_model(tiny_model_dir)
    tok, window = loaded.tokenizer, 16
    sentence = "the little dog ran to the park and the happy cat said hello to the big red sun"
    words = sentence.split(" ")
    text = next(
        t
        for n in range(len(words), 3, -1)
        if (len(tok.encode(t := " ".join(words[:n]).capitalize() + ".")) + 1) % window == 0
    )
    ids = tok.encode(text)
    lm = register()(
        pretrained=str(tiny_model_dir), backend="torch", precision="fp32", max_length=window
    )
    request = Instance("loglikelihood_rolling", {}, (text,), 0)
    nats = -lm.loglikelihood_rolling([request])[0]
    theirs = nats / math.log(2) / len(text.encode("utf-8"))
    split = _Split([tok.bos_id, *ids, tok.eos_id])
    ours = evaluate_bpb(
        loaded.model, split, token_byte_lengths(tok, loaded.config.vocab_size), ctx=window
    )
    assert ours.bytes == len(text.encode("utf-8"))
    assert ours.bpb == pytest.approx(theirs, rel=1e-5)


def test_generate_until_stops_at_until(lm):
    from lm_eval.api.instance import Instance

    free = lm.generate_until([Instance("generate_until", {}, ("The dog", {"until": []}), 0)])[0]
    assert free
    stop = free.strip()[:1] or free[:1]
    cut = lm.generate_until([Instance("generate_until", {}, ("The dog", {"until": [stop]}), 0)])
    assert cut[0] == free[: free.index(stop)]


def test_without_lm_eval_the_error_says_what_to_install(monkeypatch):
    import sys

    from pocketlm.common.errors import MissingDependencyError
    from pocketlm.pipelines.lm_eval_model import model_class

    model_class.cache_clear()
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    try:
        with pytest.raises(MissingDependencyError, match=r"pocketlm\[lmeval\]"):
            model_class()
    finally:
        model_class.cache_clear()


HOOK_PROBE = """
import site, sys
site.addpackage(sys.argv[1], "pocketlm-lm-eval.pth", set())  # as Python's start-up reads it
from lm_eval.api.registry import get_model, model_registry
assert "pocketlm.pipelines.lm_eval_model" not in sys.modules  # registered lazily
cls = get_model("pocketlm")
assert "hf" in model_registry and "local-completions" in model_registry, "lm_eval's own models"
from lm_eval.api.model import LM
from pocketlm.pipelines.lm_eval_model import model_class
assert cls is model_class() and issubclass(cls, LM)
print("ok", cls.__name__)
"""


def test_the_start_up_hook_registers_pocketlm_beside_lm_evals_own_models():
    """packaging/pocketlm-lm-eval.pth (installed at the top of site-packages) makes lm_eval's
    registry know `pocketlm` when lm_eval fills it, without importing the adapter before then."""
    import subprocess
    import sys
    from pathlib import Path

    packaging = Path(__file__).resolve().parents[3] / "packaging"
    proc = subprocess.run(
        [sys.executable, "-c", HOOK_PROBE, str(packaging)], capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["ok", "PocketLMEval"]


def test_register_keeps_lm_evals_own_models():
    """get_model fills the registry only when it is empty: register() must fill it first."""
    from lm_eval.api.registry import get_model

    register()
    # (another test rebuilds the class: compare by name, not identity)
    assert get_model(MODEL_NAME).__qualname__ == register().__qualname__
    assert get_model("dummy").__name__ == "DummyLM"


@pytest.mark.slow
def test_lm_eval_as_typed_runs_the_pocketlm_model(tiny_model_dir, task_dir, tmp_path):
    """`lm_eval --model pocketlm ...` as the issue types it: lm_eval's own command, the hook
    installed with the package (pip install -e ".[lmeval]")."""
    import os
    import site
    import subprocess
    import sys
    from pathlib import Path

    hooks = [Path(d, "pocketlm-lm-eval.pth") for d in site.getsitepackages()]
    assert any(h.exists() for h in hooks), f"not installed: reinstall PocketLM ({hooks})"
    lm_eval_cli = Path(sys.executable).with_name("lm_eval")
    out = tmp_path / "results"
    cmd = [
        str(lm_eval_cli), "--model", MODEL_NAME, "--model_args",
        f"pretrained={tiny_model_dir},backend=torch", "--tasks", "pocketlm_quiz",
        "--include_path", str(task_dir), "--output_path", str(out),
    ]  # fmt: skip
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (result,) = out.rglob("results_*.json")
    assert "pocketlm_quiz" in json.loads(result.read_text())["results"]


@pytest.mark.slow
def test_the_lm_eval_command_line_runs_the_pocketlm_model(tiny_model_dir, task_dir, tmp_path):
    """`python -m pocketlm.pipelines.lm_eval_model run --model pocketlm ...` (lm_eval's CLI)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    src = Path(__file__).resolve().parents[3] / "src"
    out = tmp_path / "results"
    cmd = [
        sys.executable, "-m", "pocketlm.pipelines.lm_eval_model", "run", "--model", MODEL_NAME,
        "--model_args", f"pretrained={tiny_model_dir},backend=torch", "--tasks", "pocketlm_quiz",
        "--include_path", str(task_dir), "--output_path", str(out),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(src), "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "acc_norm" in proc.stdout
    (result,) = out.rglob("results_*.json")
    assert "pocketlm_quiz" in json.loads(result.read_text())["results"]
