"""`pocketlm export hf` through the real CLI: prints the directory, refuses bad input with exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


def pocketlm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pocketlm", *args], capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def tiny_model(synthetic_pipeline, tmp_path_factory) -> Path:
    from pocketlm.checkpoint.model_io import save_model
    from pocketlm.model.config import ModelConfig
    from pocketlm.model.transformer import build_model

    config = ModelConfig(
        vocab_size=512, dim=32, n_layers=1, n_heads=2, n_kv_heads=1, max_seq_len=64
    )
    base = tmp_path_factory.mktemp("export_cli")
    return save_model(base / "model", build_model(config), synthetic_pipeline["tokenizer"])


def test_export_hf_prints_the_directory(tiny_model, tmp_path):
    out = tmp_path / "hf"
    r = pocketlm("export", "hf", "--model", str(tiny_model), "--out", str(out), "--dtype", "bf16")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(out) and "warning:" not in r.stderr
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "hf_export" and manifest["command"][:3] == [
        "pocketlm",
        "export",
        "hf",
    ]
    r = pocketlm("export", "hf", "--model", str(tiny_model), "--out", str(out))
    assert r.returncode == 2 and "--overwrite" in r.stderr
    r = pocketlm("export", "hf", "--model", str(tiny_model), "--out", str(out), "--overwrite")
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "config.json").read_text())["dtype"] == "float32"


def test_export_hf_refuses_bad_models(synthetic_pipeline, tmp_path):
    r = pocketlm("export", "hf", "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "a"))
    assert r.returncode == 2
    assert "no such model directory" in r.stderr and "Traceback" not in r.stderr
    r = pocketlm(
        "export",
        "hf",
        "--model",
        str(synthetic_pipeline["tokenizer"]),
        "--out",
        str(tmp_path / "b"),
    )
    assert r.returncode == 2 and "'tokenizer' artifact, not a model" in r.stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    r = pocketlm("export")
    assert r.returncode == 2 and "FORMAT" in r.stderr


@pytest.fixture(scope="module")
def unstoppable_model(tmp_path_factory) -> Path:
    """A chat model whose template closes a turn with <|im_end|> while only <|endoftext|> stops
    generation (eos_token and generation_config.json both say <|endoftext|>)."""
    from pocketlm.checkpoint.model_io import save_model
    from pocketlm.model.config import ModelConfig
    from pocketlm.model.transformer import build_model
    from pocketlm.tokenizer.tokenizer import Tokenizer
    from tests.unit.tokenizer.hf_folders import write_folder

    base = tmp_path_factory.mktemp("unstoppable")
    folder = write_folder("smollm2", base / "tok")
    endoftext = json.loads((folder / "tokenizer.json").read_text())["added_tokens"][0]["id"]
    for name, fields in [
        ("tokenizer_config.json", {"eos_token": "<|endoftext|>"}),
        ("special_tokens_map.json", {"eos_token": "<|endoftext|>"}),
        ("generation_config.json", {"eos_token_id": endoftext}),
    ]:
        path = folder / name
        path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))
    config = ModelConfig(
        vocab_size=Tokenizer.load(folder).vocab_size,
        dim=32, n_layers=1, n_heads=2, n_kv_heads=1, max_seq_len=64,
    )  # fmt: skip
    return save_model(base / "model", build_model(config), folder)


def test_export_warns_when_the_turn_end_is_no_stop_id(unstoppable_model, tmp_path):
    """export hf and export gguf still write the model, with a warning line naming the token."""
    model = unstoppable_model
    r = pocketlm("export", "hf", "--model", str(model), "--out", str(tmp_path / "hf"))
    assert r.returncode == 0, r.stderr
    assert "warning:" in r.stderr and "'<|im_end|>'" in r.stderr and "not a stop id" in r.stderr
    r = pocketlm("export", "gguf", "--model", str(model), "--out", str(tmp_path / "m.gguf"))
    assert r.returncode == 0, r.stderr
    assert "'<|im_end|>'" in r.stderr and "not a stop id" in r.stderr


def test_serve_warns_when_the_turn_end_is_no_stop_id(unstoppable_model, monkeypatch, capsys):
    """serve opens the model, prints the warning and serves (the server itself stubbed out)."""
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    import pocketlm.serve.app as app
    from pocketlm.cli.main import main

    served = []
    monkeypatch.setattr(app, "run_server", lambda a, **kw: served.append(a))
    assert main(["serve", "--model", str(unstoppable_model), "--threads", "1"]) == 0
    assert served and "'<|im_end|>'" in capsys.readouterr().err
