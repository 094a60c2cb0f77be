"""Speculative decoding on imported models: a smaller member of the same family (same tokenizer)
drafts for a larger one, and greedy output equals the larger model's alone, on both backends."""

from __future__ import annotations

import shutil

import pytest

from pocketlm.engine.load import load_engine
from pocketlm.engine.sampling import SamplingParams
from pocketlm.interop.hf_import import import_hf
from tests.unit.interop.hf_families import build_hf_model
from tests.unit.tokenizer.hf_folders import write_folder

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("draft")
    tokenizer = write_folder("qwen2_5", root / "tok", "jinja")
    dirs = {}
    for name, layers in (("target", 3), ("draft", 1)):
        folder = root / name
        build_hf_model("qwen2", seed=layers, num_hidden_layers=layers).save_pretrained(folder)
        for f in tokenizer.iterdir():
            shutil.copyfile(f, folder / f.name)
        dirs[name] = import_hf(folder, root / f"{name}-pl")
    return dirs


def _text_and_ids(engine, prompt: str) -> tuple[str, list[int]]:
    params = SamplingParams(max_new_tokens=24, temperature=0.0)
    chunks = list(engine.generate(prompt, params))
    return "".join(c.text for c in chunks), [t for c in chunks for t in c.token_ids]


@pytest.mark.parametrize("backend", ["torch", "native"])
def test_a_smaller_family_member_drafts_for_a_larger_one(pair, backend):
    alone = load_engine(
        pair["target"], backend=backend, precision="fp32" if backend == "torch" else "auto"
    )
    drafted = load_engine(
        pair["target"], backend=backend, draft=pair["draft"], draft_tokens=3,
        precision="fp32" if backend == "torch" else "auto",
    )  # fmt: skip
    prompt = "the cat sat on the"
    assert _text_and_ids(drafted, prompt) == _text_and_ids(alone, prompt)
    assert 0.0 <= drafted.last_acceptance <= 1.0
    assert len(_text_and_ids(alone, prompt)[1]) >= 8  # a real continuation, not an instant stop
