"""A model artifact that carries a Hugging Face tokenizer folder's files (what `pocketlm import`
copies): generate and chat use its template, its end ids and its generation_config defaults."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pocketlm.checkpoint.model_io import save_model_state
from pocketlm.model.config import ModelConfig
from pocketlm.model.transformer import build_model
from pocketlm.tokenizer.tokenizer import Tokenizer
from tests.unit.tokenizer.hf_folders import write_folder


@pytest.fixture(scope="module")
def imported_model_dir(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("imported")
    folder = write_folder("qwen2_5", base / "hf", "jinja")
    generation = json.loads((folder / "generation_config.json").read_text(encoding="utf-8"))
    generation.update({"do_sample": False, "max_new_tokens": 3})
    (folder / "generation_config.json").write_text(json.dumps(generation), encoding="utf-8")
    config = ModelConfig(
        vocab_size=512, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64, init_std=0.1
    )
    state = build_model(config, seed=3).state_dict()

    def hf_files(art) -> None:
        for name in ("chat_template.jinja", "generation_config.json"):
            shutil.copyfile(folder / name, art.path(name))

    return save_model_state(base / "model", state, config, folder, extra=hf_files)


def generate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pocketlm", "generate", *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=300,
    )


def _generated(stderr: str) -> int:
    return int(re.search(r"\[(\d+) tokens", stderr).group(1))


def test_generate_takes_the_models_defaults_unless_flags_override(imported_model_dir):
    args = ("--model", str(imported_model_dir), "--prompt", "Hello there")
    first, second = generate(*args), generate(*args)
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout  # do_sample false: greedy
    assert 1 <= _generated(first.stderr) <= 3  # max_new_tokens 3, or an end id before
    one = generate(*args, "--max-new-tokens", "1")
    assert one.returncode == 0 and _generated(one.stderr) == 1


def test_chat_session_on_the_imported_template(imported_model_dir):
    from pocketlm.engine.chat_session import ChatSession
    from pocketlm.engine.load import load_engine
    from pocketlm.engine.sampling import SamplingParams

    engine = load_engine(imported_model_dir, threads=1)
    tok = engine.tokenizer
    assert tok.kind == "imported" and tok.render_chat([{"role": "user", "content": "x"}]) == (
        Tokenizer.load(imported_model_dir).render_chat([{"role": "user", "content": "x"}])
    )
    params = SamplingParams(temperature=0, max_new_tokens=4)
    session = ChatSession(engine, params, system="Be brief.")
    reply = session.send("Hi <|im_end|>")
    text = "".join(reply)
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi <|im_end|>"},
    ]
    direct = engine.complete(tok.encode_chat(messages), params, add_bos=False)
    assert text == direct.text and reply.finish_reason == direct.finish_reason
    assert reply.generated_tokens == len(direct.token_ids) <= 4
