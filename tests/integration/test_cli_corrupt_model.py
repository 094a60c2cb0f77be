"""The hardening issue's corrupt models through the real CLI: `generate` and `bench` print one
clear line and exit 2 (no traceback, no signal); `serve` refuses to start (it never reports
healthy and then dies on its first request)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.numpy import load_file, save_file

from pocketlm.checkpoint.model_io import save_model
from pocketlm.model.config import ModelConfig
from pocketlm.model.transformer import build_model
from tests.unit.engine.variant_files import reseal


@pytest.fixture(scope="module")
def corrupt_models(synthetic_pipeline, tmp_path_factory) -> dict[str, tuple[Path, str]]:
    """name -> (model dir, what its error must say): a tensor missing from a well-formed file,
    and an int4 model whose config claims a larger vocabulary than its tensors hold."""
    from pocketlm.compress.quantize import quantize_model_dir

    root = tmp_path_factory.mktemp("corrupt")
    config = ModelConfig(
        vocab_size=512, dim=64, n_layers=1, n_heads=4, n_kv_heads=2, ffn_dim=64, max_seq_len=32
    )
    fp32 = save_model(root / "fp32", build_model(config, seed=1), synthetic_pipeline["tokenizer"])
    int4, _ = quantize_model_dir(fp32, root / "int4", "int4")
    tensors = load_file(str(fp32 / "model.safetensors"))
    del tensors["model.norm.weight"]
    save_file(tensors, str(fp32 / "model.safetensors"))
    reseal(fp32)
    data = json.loads((int4 / "model_config.json").read_text())
    data["vocab_size"] = 100_000
    (int4 / "model_config.json").write_text(json.dumps(data))
    reseal(int4)
    return {
        "no-final-norm": (fp32, "'model.norm.weight' is missing"),
        "vocab-too-large": (int4, "'model.embed_tokens.qweight' has shape [512, 32]"),
    }


def pocketlm(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pocketlm", *args], capture_output=True, text=True, timeout=timeout
    )


def _one_clear_line(r: subprocess.CompletedProcess, model: Path, says: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert str(model) in lines[0] and says in lines[0], lines[0]


@pytest.mark.parametrize("case", ["no-final-norm", "vocab-too-large"])
@pytest.mark.parametrize(
    ("command", "backend"),
    [("generate", "auto"), ("generate", "native"), ("generate", "torch"), ("bench", "auto")],
)
def test_generate_and_bench_print_one_line_and_exit_2(corrupt_models, case, command, backend):
    model, says = corrupt_models[case]
    extra = ["--prompt", "the"] if command == "generate" else ["--repeats", "1"]
    r = pocketlm(command, "--model", str(model), "--backend", backend, "--threads", "1", *extra)
    _one_clear_line(r, model, says)


@pytest.mark.parametrize("case", ["no-final-norm", "vocab-too-large"])
def test_serve_refuses_to_start(corrupt_models, case):
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    model, says = corrupt_models[case]
    r = pocketlm("serve", "--model", str(model), "--port", "0", "--threads", "1", timeout=60)
    _one_clear_line(r, model, says)
    assert "serving" not in r.stderr
