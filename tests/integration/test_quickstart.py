"""The quickstart end to end with a seconds-long budget, and reuse of finished stages."""

from __future__ import annotations

import json

import pytest

from pocketlm.pipelines.quickstart import QuickstartConfig, run_quickstart
from pocketlm.pipelines.quickstart_variants import missing_exports


@pytest.mark.timeout(600)
def test_quickstart_runs_end_to_end_and_reuses_stages(text_folder, tmp_path):
    lines: list[str] = []
    config = QuickstartConfig(
        corpus=(str(text_folder),), budget="6s", vocab_size=320, ctx=64, batch_size=4
    )
    report = run_quickstart(config, tmp_path / "qs", echo=lines.append)
    text = report.read_text()
    for needle in (
        "parameters",
        "tokens seen",
        "tokens/s",
        "validation bits per byte",
        "machine load | other programs used",
        "loss.png",
        "## Samples",
        "## Variants: which one to ship",
        "compare/pareto.png",
    ):
        assert needle in text
    assert text.count("```") == 10  # five sample completions
    assert (tmp_path / "qs" / "pretrain" / "loss.png").exists()
    # the variants stage: int8 and int4 copies and the exports the installed extras allow,
    # measured beside the model, the copies smaller on disk
    compared = json.loads((tmp_path / "qs" / "compare" / "report.json").read_text())
    by_name = {r["name"]: r for r in compared["variants"]}
    exports = {name for name, extra in (("onnx", "ONNX"), ("model.gguf", "GGUF"))
               if extra not in missing_exports()}  # fmt: skip
    assert set(by_name) == {"model", "int8", "int4", *exports}, set(by_name)
    assert by_name["int4"]["size_mb"] < by_name["int8"]["size_mb"] < by_name["model"]["size_mb"]
    assert all(r["decode_tokens_per_s"] > 0 for r in by_name.values())
    assert all(r["bpb"] > 0 for n, r in by_name.items() if n not in exports)
    # the cloze task from the validation text scores every variant; the parity with the model
    assert all(0.0 <= r["task_scores"]["cloze"]["value"] <= 1.0 for r in by_name.values())
    parity = {v["name"]: v for v in compared["parity"]["variants"]}
    assert compared["parity"]["reference"] == "model" and set(parity) == set(by_name) - {"model"}
    for name in exports:  # the same weights on another runtime: the same greedy tokens
        assert parity[name]["greedy"]["until_divergence"] == 1.0, (name, parity[name])
        assert parity[name]["tasks"]["cloze"]["same_answer"] == 1.0
    assert "identical greedy continuations" in text and "| model (reference) |" in text
    assert all(
        f"{n} export not compared" not in text for n in ("ONNX", "GGUF") if n.lower() in exports
    )
    assert (tmp_path / "qs" / "compare" / "pareto.png").exists()
    assert any("<- chosen" in line for line in lines)
    assert any(line.strip().startswith("pocketlm generate --model") for line in lines)

    again: list[str] = []
    run_quickstart(config, tmp_path / "qs", echo=again.append)
    assert sum("reusing" in line for line in again) == 5

    changed: list[str] = []
    run_quickstart(
        QuickstartConfig(
            corpus=(str(text_folder),),
            budget="6s",
            vocab_size=300,
            ctx=64,
            batch_size=4,
            variants=False,
        ),
        tmp_path / "qs",
        echo=changed.append,
    )
    assert (
        sum("reusing" in line for line in changed) == 1
    )  # the corpus; the tokenizer changed, so all after it rebuild


@pytest.mark.timeout(600)
def test_quickstart_on_stdlib_with_a_tiny_budget(tmp_path):
    """THE end-to-end pipeline test: the README's main command on the embedded corpus."""

    report = run_quickstart(
        QuickstartConfig(budget="8s", model="pico-1m", ctx=128, batch_size=8, variants=False),
        tmp_path / "std",
        echo=lambda s: None,
    )
    assert "validation bits per byte" in report.read_text()
    data_report = (tmp_path / "std" / "corpus" / "data_report.md").read_text()
    assert "`stdlib`" in data_report and "## Removed" in data_report
    summary = json.loads((tmp_path / "std" / "tokens" / "manifest.json").read_text())["summary"]
    assert summary["splits"]["train"]["tokens"] > 1_000_000
    assert 2.0 < summary["bytes_per_token"] < 6.0  # Python source: ~3 bytes/token at 4k vocab


_QUICKSTART = """
import sys
from pocketlm.pipelines.quickstart import QuickstartConfig, run_quickstart
from pocketlm.pipelines.quickstart_variants import missing_exports
config = QuickstartConfig(corpus=(sys.argv[1],), budget="12s", vocab_size=320, ctx=64,
                          batch_size=4, model="pico-1m", device="cpu", variants=False)
run_quickstart(config, sys.argv[2], echo=lambda line: print(line, flush=True))
"""


@pytest.mark.timeout(600)
def test_an_interrupted_quickstart_resumes_its_training_stage(text_folder, tmp_path):
    """Killed (SIGKILL) after a checkpoint of its training stage, the quickstart run again
    reuses the data stages and continues training from that checkpoint, not from step 0."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from pocketlm.checkpoint.run_checkpoints import list_checkpoints
    from pocketlm.train.metrics import read_metrics

    out = tmp_path / "qs"
    env = {**os.environ, "POCKETLM_NO_PROGRESS": "1"}
    args = [sys.executable, "-c", _QUICKSTART, str(text_folder), str(out)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 240
    while not list_checkpoints(out / "pretrain" / "checkpoints") and time.monotonic() < deadline:
        assert proc.poll() is None, "the quickstart ended before its first checkpoint"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    (step, _), *_ = list_checkpoints(out / "pretrain" / "checkpoints")
    lines: list[str] = []
    config = QuickstartConfig(
        corpus=(str(text_folder),), budget="12s", vocab_size=320, ctx=64, batch_size=4,
        model="pico-1m", device="cpu", variants=False,
    )  # fmt: skip
    report = run_quickstart(config, out, echo=lines.append)
    assert sum("reusing" in line for line in lines) == 3  # corpus, tokenizer, tokens
    assert any("(resuming)" in line for line in lines)
    steps = [r["step"] for r in read_metrics(out / "pretrain" / "metrics.jsonl")]
    assert steps[0] == 1 and steps == sorted(steps) and step < steps[-1]  # one continuous run
    assert "validation bits per byte" in report.read_text()


@pytest.mark.slow  # ~100 s on 2 cores (the stdlib request set, 32 greedy end-of-turn replies);
# the parts are unit-tested: data/stdlib_instructions, train/tasks/sft, train/end_of_turn
@pytest.mark.timeout(600)
def test_quickstart_chat_adds_a_fine_tuning_stage_on_stdlib_requests(text_folder, tmp_path):
    """--chat: the pretrained model is fine-tuned on requests derived from the stdlib's
    functions, and the output says how to chat with it; a second run reuses every stage."""
    from pocketlm.checkpoint.model_io import load_model
    from pocketlm.common.manifest import read_manifest

    lines: list[str] = []
    config = QuickstartConfig(
        corpus=(str(text_folder),), budget="6s", vocab_size=320, ctx=256, batch_size=2,
        model="pico-1m", chat=True, chat_budget="3 steps", variants=False,
    )  # fmt: skip
    run_quickstart(config, tmp_path / "qs", echo=lines.append)
    chat = tmp_path / "qs" / "chat"
    summary = read_manifest(chat / "model")["summary"]
    assert summary["sft_data"]["records"]["kept"] > 0
    assert any(f"pocketlm chat --model {chat}" in line for line in lines)
    assert any("[5/5] chat: building" in line for line in lines)
    tok = load_model(chat / "model").tokenizer
    assert tok.render_chat([{"role": "user", "content": "hi"}]).endswith("<|assistant|>\n")
    again: list[str] = []
    run_quickstart(config, tmp_path / "qs", echo=again.append)
    assert sum("reusing" in line for line in again) == 5
