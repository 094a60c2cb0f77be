"""llama.cpp runs PocketLM's GGUF export of every family as PocketLM runs the model (slow tier:
needs llama-cpp-python, `pip install '.[llama]'`).

llama-cpp-python 0.3.36's llama.cpp has every architecture the families export to (llama,
qwen2, qwen3, phi2, phi3, gemma, gemma2, gemma3, qwen2moe, qwen3moe), so no family is skipped.
Each tiny random model (test_hf_import's, as llama.cpp can run it: gguf_files.PARITY) is
imported, exported as F32 and loaded with an F32 KV cache (llama.cpp's default F16 cache rounds
keys and values to ~1e-3): the logits of a 24-token prompt agree within 1e-4, or 5e-3 for the
families with GELU (llama.cpp's CPU GELU reads an fp16 lookup table), and llama.cpp's greedy
decoding with its cache gives PocketLM's 16 tokens. Tokenizers: llama.cpp splits text into the
ids `tokenizers` gives, for each tokenizer style the families use.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from gguf_files import PARITY, save_with_tokenizer
from hf_families import FAMILIES

from pocketlm.checkpoint.model_io import load_model
from pocketlm.interop.gguf_export import export_gguf
from pocketlm.interop.hf_import import import_hf
from pocketlm.tokenizer.tokenizer import Tokenizer
from tests.unit.tokenizer.hf_folders import CORPUS, write_folder
from tests.unit.tokenizer.hf_folders import FAMILIES as TOKENIZER_FAMILIES

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python not installed (slow CI tier)")
pytestmark = pytest.mark.slow

GELU = ("phi2", "gemma", "gemma2", "gemma3")
# case -> (family, config keywords beyond PARITY)
CASES = {f: (f, {}) for f in FAMILIES}
# Phi-3 within its original context: both pick longrope's short factors (llama.cpp by n_ctx 256,
# PocketLM by the sequence); the family's own case (original 16) runs on the long ones.
CASES["phi3_short"] = ("phi3", {"original_max_position_embeddings": 512, "max_position_embeddings": 1024})  # fmt: skip
F32_CACHE = 0  # GGML_TYPE_F32


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return write_folder("qwen2_5", tmp_path_factory.mktemp("tok") / "qwen2_5")


def _open(path, **kw):
    return llama_cpp.Llama(model_path=str(path), n_threads=2, verbose=False, **kw)


@pytest.mark.parametrize("case", list(CASES))
def test_llama_cpp_computes_what_pocketlm_computes(case, tokenizer, tmp_path):
    family, extra = CASES[case]
    src = save_with_tokenizer(family, tmp_path / "hf", tokenizer, **{**PARITY.get(family, {}), **extra})  # fmt: skip
    artifact = import_hf(src, tmp_path / "art")
    path = export_gguf(artifact, tmp_path / "m.gguf")
    llm = _open(path, n_ctx=256, logits_all=True, type_k=F32_CACHE, type_v=F32_CACHE)
    model = load_model(artifact).model
    prompt = torch.randint(3, 400, (24,), generator=torch.Generator().manual_seed(7)).tolist()
    with torch.no_grad():
        ours = model(torch.tensor([prompt]))[0].numpy()
    llm.eval(prompt)
    theirs = np.asarray(llm.scores[: len(prompt)])
    diff = float(np.abs(theirs - ours).max())
    print(f"\n{case}: max |logit difference| {diff:.2e} (logits up to {np.abs(ours).max():.1f})")
    assert diff < (5e-3 if family in GELU else 1e-4)

    want, got = list(prompt), list(prompt)
    with torch.no_grad():
        for _ in range(16):
            want.append(int(model(torch.tensor([want]))[0, -1].argmax()))
    for _ in range(16):  # llama.cpp decodes one token at a time with its KV cache
        got.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        llm.eval([got[-1]])
    assert got == want
    assert len(set(want[len(prompt) :])) > 3


TEXTS = [
    *CORPUS[:6],
    "Hello world",
    "two  spaces and\ttab\n\nnewlines",
    "unseen: zebra quokka 9876543210 ÆØÅ ☃",
    "It's we'll they're I'M",
    "a  b   c    d",
]
MESSAGES = [
    {"role": "user", "content": "Hello there, how are you?"},
    {"role": "assistant", "content": "I am fine."},
    {"role": "user", "content": "Tell me a story."},
]
# SentencePiece-style tokenizers as Gemma ships them: spaces replaced by "▁", no prefix space
GEMMA_NORMALIZER = {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}


@pytest.mark.parametrize("name", [*TOKENIZER_FAMILIES, "gemma_no_prefix"])
def test_llama_cpp_tokenizes_as_tokenizers_does(name, tmp_path):
    folder = write_folder("gemma2" if name == "gemma_no_prefix" else name, tmp_path / "tok")
    if name == "gemma_no_prefix":
        data = json.loads((folder / "tokenizer.json").read_text())
        data["pre_tokenizer"], data["normalizer"] = None, GEMMA_NORMALIZER
        (folder / "tokenizer.json").write_text(json.dumps(data))
    tok = Tokenizer.load(folder)
    vocab = max(512, tok.vocab_size)
    src = save_with_tokenizer("smollm2", tmp_path / "hf", folder, vocab_size=vocab)
    path = export_gguf(import_hf(src, tmp_path / "art"), tmp_path / "m.gguf")
    llm = _open(path, vocab_only=True)
    for text in TEXTS:
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == tok.encode(text), text
    if tok.add_bos:
        assert llm.tokenize(b"Hello", add_bos=True) == tok.encode("Hello", add_bos=True)
    chat = tok.render_chat(MESSAGES, variables=TOKENIZER_FAMILIES.get(name, TOKENIZER_FAMILIES["gemma2"]).variables)  # fmt: skip
    theirs = llm.tokenize(chat.encode(), add_bos=False, special=True)
    spaces_after_special = json.loads(path.with_name("m.gguf.manifest.json").read_text())
    if TOKENIZER_FAMILIES.get(name) and TOKENIZER_FAMILIES[name].style == "metaspace":
        # llama.cpp's SentencePiece tokenizer prefixes a space after every special token,
        # transformers' Metaspace(prepend_scheme="first") only at the start: chats differ there
        assert any("after every special token" in n for n in spaces_after_special["llama_cpp_notes"])  # fmt: skip
        assert theirs != tok.encode(chat)
    else:
        assert theirs == tok.encode(chat)
