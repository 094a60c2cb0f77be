"""`pocketlm generate` through the real CLI on a tiny saved model."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from pocketlm.checkpoint.model_io import save_model
from pocketlm.cli.main import main
from pocketlm.model.config import ModelConfig
from pocketlm.model.transformer import build_model


@pytest.fixture(scope="module")
def random_model_dir(synthetic_pipeline, tmp_path_factory) -> Path:
    config = ModelConfig(
        vocab_size=512, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64, init_std=0.1
    )
    out = tmp_path_factory.mktemp("generate") / "model"
    return save_model(out, build_model(config, seed=5), synthetic_pipeline["tokenizer"])


def generate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pocketlm", "generate", *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=300,
    )


def test_generate_is_reproducible_with_a_seed(random_model_dir):
    args = ("--model", str(random_model_dir), "--prompt", "The little dog", "--max-new-tokens", "8")
    first = generate(*args, "--seed", "1", "--device", "cpu")
    second = generate(*args, "--seed", "1")
    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    assert first.stdout == second.stdout and first.stdout.endswith("\n")
    assert "tokens/s" in first.stderr and "prompt" in first.stderr
    assert "finish: " in first.stderr and "backend " in first.stderr


@pytest.mark.parametrize("command", ["generate", "chat"])
def test_runtime_flags_reach_the_engine(command, random_model_dir, monkeypatch):
    """--device/--precision/--backend/--threads (shared with serve) all reach load_engine."""
    import pocketlm.engine.load

    seen = {}

    def fake_load_engine(model, **kwargs):
        seen.update(kwargs)
        raise SystemExit(0)

    monkeypatch.setattr(pocketlm.engine.load, "load_engine", fake_load_engine)
    extra = ["--prompt", "x"] if command == "generate" else []
    flags = ["--device", "cpu", "--precision", "fp32", "--backend", "native", "--threads", "1"]
    with pytest.raises(SystemExit):
        main([command, "--model", str(random_model_dir), *extra, *flags])
    assert (seen["device"], seen["precision"], seen["backend"], seen["threads"]) == (
        "cpu",
        "fp32",
        "native",
        1,
    )


def test_over_long_prompt_exits_2_with_a_clear_message(random_model_dir):
    r = generate("--model", str(random_model_dir), "--prompt", "the cat sat on the mat " * 30)
    assert r.returncode == 2 and r.stdout == ""
    assert "the prompt has" in r.stderr and "context is 64 tokens" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.fixture
def cli(capsys):
    """Run `pocketlm ...` in this process (fast), restoring the logging set-up main() changes."""
    logger = logging.getLogger("pocketlm")
    saved = (logger.level, list(logger.handlers), logger.propagate)

    def run(*args: str) -> tuple[int, str, str]:
        code = main(list(args))
        out = capsys.readouterr()
        logger.setLevel(saved[0])
        logger.handlers[:] = saved[1]
        logger.propagate = saved[2]
        return code, out.out, out.err

    yield run
    logger.setLevel(saved[0])
    logger.handlers[:] = saved[1]
    logger.propagate = saved[2]


def test_bad_params_exit_2_naming_the_flag(random_model_dir, cli):
    code, _, err = cli(
        "generate", "--model", str(random_model_dir), "--prompt", "hi", "--top-p", "1.5"
    )
    assert code == 2 and "top_p" in err
    code, _, err = cli(
        "generate", "--model", str(random_model_dir.parent / "nope"), "--prompt", "x"
    )
    assert code == 2 and "no such model directory" in err
    code, _, err = cli(
        "generate",
        "--model",
        str(random_model_dir),
        "--prompt",
        "x",
        "--backend",
        "native",
        "--device",
        "cuda",
    )
    assert code == 2 and "CPU only" in err


def test_stop_string_cuts_the_output(random_model_dir, cli):
    greedy = ("generate", "--model", str(random_model_dir), "--prompt", "the", "--temperature", "0")
    code, out, err = cli("-q", *greedy, "--max-new-tokens", "6")
    assert code == 0 and err == ""  # -q: no summary line
    text = out[:-1]
    assert len(text) > 2, "the tiny model should produce some text greedily"
    stop = text[1:3]
    code, out, _ = cli("-q", *greedy, "--max-new-tokens", "6", "--stop", stop)
    assert code == 0 and out == text[: text.find(stop)] + "\n"


def test_generate_from_a_training_run_dir(tiny_model_dir, cli):
    run_dir = tiny_model_dir.parent  # the run: generate resolves its final model
    code, out, err = cli(
        "generate",
        "--model",
        str(run_dir),
        "--prompt",
        "The",
        "--max-new-tokens",
        "4",
        "--seed",
        "0",
        "--backend",
        "torch",
    )
    assert code == 0, err
    assert out.endswith("\n") and "tokens/s" in err and "backend torch" in err
