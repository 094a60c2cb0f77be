"""`pocketlm import` and a Hugging Face folder passed straight to --model, through the real CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")


def pocketlm(*args: str, cache: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, POCKETLM_CACHE=str(cache)) if cache else None
    return subprocess.run(
        [sys.executable, "-m", "pocketlm", *args],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip


@pytest.fixture(scope="module")
def hf_folder(synthetic_pipeline, tmp_path_factory) -> Path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "interop"))
    from hf_families import build_hf_model

    folder = tmp_path_factory.mktemp("hf") / "SmolLM2-tiny"
    build_hf_model("smollm2").save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copyfile(synthetic_pipeline["tokenizer"] / name, folder / name)
    return folder


def test_import_prints_the_model_directory(hf_folder, tmp_path):
    out = tmp_path / "smollm2"
    r = pocketlm("import", str(hf_folder), "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "model" and manifest["command"][:2] == ["pocketlm", "import"]
    assert manifest["config"]["source"]["architecture"] == "LlamaForCausalLM"
    r = pocketlm("import", str(hf_folder), "--out", str(out))
    assert r.returncode == 2 and "--overwrite" in r.stderr


def test_import_refuses_what_it_cannot_read_with_one_line(tmp_path):
    folder = tmp_path / "falcon"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["FalconForCausalLM"]}))
    r = pocketlm("import", str(folder), "--out", str(tmp_path / "out"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "FalconForCausalLM is not a supported family" in r.stderr


def test_import_help_teaches():
    r = pocketlm("import", "--help")
    assert r.returncode == 0
    for text in ("Hugging Face", "Phi3ForCausalLM", "pytorch_model.bin", "--model", "examples:"):
        assert text in r.stdout


def test_generate_takes_a_hugging_face_folder_as_model(hf_folder, tmp_path):
    cache = tmp_path / "cache"
    args = ("generate", "--model", str(hf_folder), "--prompt", "The little dog",
            "--temperature", "0", "--max-new-tokens", "8", "--backend", "torch")  # fmt: skip
    first = pocketlm(*args, cache=cache)
    assert first.returncode == 0, first.stderr
    assert "importing the Hugging Face folder" in first.stderr
    imported = list((cache / "imports").iterdir())
    assert len(imported) == 1 and (imported[0] / "model.safetensors").is_file()
    again = pocketlm(*args, cache=cache)
    assert again.returncode == 0 and again.stdout == first.stdout  # greedy: the same text
    assert "importing" not in again.stderr  # the cache is reused
