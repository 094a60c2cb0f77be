"""The llamacpp backend runs a model's `export gguf` file as PocketLM runs the model (slow tier:
needs llama-cpp-python, `pip install '.[llama]'`): F32 weights and KV cache give PyTorch's logits
within 1e-4 over a prefill and 32 decode steps, greedy generation through the engine writes the
torch backend's tokens, and truncate / extend / release keep the protocol's meaning."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pocketlm.checkpoint.model_io import load_model, save_model
from pocketlm.common.errors import ConfigError
from pocketlm.engine.generation import GenerationEngine
from pocketlm.engine.load import open_backend
from pocketlm.engine.sampling import SamplingParams
from pocketlm.interop.gguf_export import export_gguf
from pocketlm.model.config import ModelConfig
from pocketlm.model.transformer import build_model

pytest.importorskip("llama_cpp", reason="llama-cpp-python not installed (slow CI tier)")
pytestmark = pytest.mark.slow

PREFILL, DECODE = 9, 32
CONFIG = ModelConfig(
    vocab_size=512, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128, max_seq_len=96,
    init_std=0.1,
)  # fmt: skip


@pytest.fixture(scope="module")
def exported(synthetic_pipeline, tmp_path_factory):
    root = tmp_path_factory.mktemp("gguf-backend")
    src = save_model(root / "model", build_model(CONFIG, seed=5), synthetic_pipeline["tokenizer"])
    return src, export_gguf(src, root / "model.gguf")


def _full(model, tokens: list[int]) -> np.ndarray:
    with torch.inference_mode():
        return model(torch.tensor([tokens]))[0].numpy()


def test_llama_cpp_decodes_what_pytorch_computes(exported):
    src, path = exported
    model = load_model(src).model.eval()
    backend, _ = open_backend(path, threads=2)  # auto: llamacpp by the .gguf suffix
    assert backend.name == "llamacpp" and backend.context_length == CONFIG.max_seq_len
    tokens = torch.randint(3, 512, (PREFILL + DECODE,), generator=torch.Generator().manual_seed(4))
    tokens = tokens.tolist()
    rows = [backend.prefill(0, tokens[:PREFILL])]
    rows += [backend.decode([0], [t])[0] for t in tokens[PREFILL:]]
    want = _full(model, tokens)[PREFILL - 1 :]
    got = np.stack(rows)
    assert got.dtype == np.float32 and got.shape == want.shape
    assert np.abs(got - want).max() < 1e-4

    backend.truncate(0, 12)  # back into the context, then other tokens
    other = [7, 8, 9]
    got = backend.extend(0, other)
    assert backend.position(0) == 15
    assert np.abs(got - _full(model, tokens[:12] + other)[12:]).max() < 1e-4
    backend.release(0)
    assert np.abs(backend.prefill(0, other) - _full(model, other)[-1]).max() < 1e-4


def test_greedy_generation_is_the_torch_backends(exported):
    src, path = exported
    params = SamplingParams(temperature=0, max_new_tokens=64)
    results = []
    for model, kind in ((src, "torch"), (path, "llamacpp")):
        backend, tokenizer = open_backend(model, backend=kind, device="cpu", precision="fp32")
        results.append(GenerationEngine(backend, tokenizer).complete("the cat sat", params))
    assert results[1].token_ids == results[0].token_ids and results[1].text == results[0].text


def test_one_slot_only_and_the_path_decides(exported):
    src, path = exported
    with pytest.raises(ConfigError, match="holds one sequence"):
        open_backend(path, slots=2)
    with pytest.raises(ConfigError, match="runs on --backend llamacpp"):
        open_backend(path, backend="onnx")
    with pytest.raises(ConfigError, match="is not one"):
        open_backend(src, backend="llamacpp")
