"""THE backend protocol, the same for every implementation: torch, native and onnx (the model's
`export onnx` directory in onnxruntime) give the full forward's logits for
prefill/decode/extend/truncate/release on several slots, and the engine over slot 0 of a many-slot
backend writes what it writes over a one-slot backend."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch

from pocketlm.checkpoint.model_io import load_model, save_model
from pocketlm.common.errors import InputError
from pocketlm.engine.backend import Backend
from pocketlm.engine.generation import GenerationEngine
from pocketlm.engine.load import open_backend
from pocketlm.engine.sampling import SamplingParams
from pocketlm.model.config import ModelConfig
from pocketlm.model.transformer import build_model
from pocketlm.tokenizer.tokenizer import Tokenizer

KINDS = ["torch", "native", "onnx"]
CONTEXT = 24
TOLERANCE = 2e-4  # x max|logit|: the native fp32 kernels' stated tolerance against PyTorch


@pytest.fixture(scope="module")
def model_dir(synthetic_pipeline, tmp_path_factory):
    config = ModelConfig(
        vocab_size=512,
        dim=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        ffn_dim=128,
        max_seq_len=CONTEXT,
        init_std=0.1,
    )
    out = tmp_path_factory.mktemp("protocol") / "model"
    return save_model(out, build_model(config, seed=7), synthetic_pipeline["tokenizer"])


@pytest.fixture(scope="module")
def reference(model_dir):
    """Logits (T, V) of a whole sequence in one forward without a cache."""
    model = load_model(model_dir).model

    def logits(seq: list[int]) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.tensor([seq]))[0].float().numpy()

    return logits


@functools.cache
def _onnx_export(model_dir: Path) -> Path:
    """The model's `export onnx` directory, written once beside it."""
    from pocketlm.interop.onnx_export import export_onnx

    return export_onnx(model_dir, model_dir.parent / "onnx")


def _open(model_dir, kind: str, slots: int) -> Backend:
    if kind == "native":
        pytest.importorskip("pocketlm.engine._native", reason="native extension not built")
    if kind == "onnx":
        pytest.importorskip(
            "onnxruntime", reason="onnxruntime not installed: pip install '.[onnx]'"
        )
        model_dir = _onnx_export(model_dir)
    backend, _ = open_backend(
        model_dir, slots=slots, backend=kind, device="cpu", precision="fp32", threads=1
    )
    assert backend.name == kind and backend.slots == slots and isinstance(backend, Backend)
    return backend


def _close(got: np.ndarray, want: np.ndarray) -> None:
    assert got.dtype == np.float32 and got.shape == want.shape
    assert np.abs(got - want).max() <= TOLERANCE * float(np.abs(want).max())


@pytest.mark.parametrize("kind", KINDS)
def test_every_method_on_several_slots_equals_the_full_forward(model_dir, reference, kind):
    backend = _open(model_dir, kind, slots=3)
    rng = np.random.default_rng(0)
    a, b, c, d = (rng.integers(3, 512, size=CONTEXT).tolist() for _ in range(4))
    _close(backend.prefill(0, a[:5]), reference(a[:5])[-1])
    _close(backend.prefill(2, b[:7]), reference(b[:7])[-1])
    got = backend.decode([2, 0], [b[7], a[5]])  # rows follow the order of the slots asked
    _close(got, np.stack([reference(b[:8])[-1], reference(a[:6])[-1]]))
    _close(backend.extend(1, c[:4]), reference(c[:4]))
    _close(backend.extend(0, a[6:9]), reference(a[:9])[6:9])
    assert [backend.position(s) for s in range(3)] == [9, 4, 8]

    backend.truncate(0, 7)  # a[7] and a[8] are forgotten: another token takes position 7
    backend.truncate(2, 20)  # past the end: nothing happens
    assert [backend.position(s) for s in range(3)] == [7, 4, 8]
    a_new = [*a[:7], d[0]]
    got = backend.decode([0, 1], [d[0], c[4]])
    _close(got, np.stack([reference(a_new)[-1], reference(c[:5])[-1]]))

    backend.release(2)  # slot 2 starts a new sequence
    assert backend.position(2) == 0
    _close(backend.prefill(2, d[:6]), reference(d[:6])[-1])
    got = backend.decode([0, 1, 2], [d[1], c[5], d[6]])
    want = [reference([*a_new, d[1]])[-1], reference(c[:6])[-1], reference(d[:7])[-1]]
    _close(got, np.stack(want))
    assert [backend.position(s) for s in range(3)] == [9, 6, 7]


@pytest.mark.parametrize("kind", KINDS)
def test_decode_around_a_full_slot(model_dir, reference, kind):
    """A full slot between the slots of a decode step takes no token and stays intact."""
    backend = _open(model_dir, kind, slots=3)
    rng = np.random.default_rng(1)
    a, full, b = (rng.integers(3, 512, size=CONTEXT).tolist() for _ in range(3))
    backend.prefill(1, full)
    backend.prefill(0, a[:3])
    backend.prefill(2, b[:4])
    _close(
        backend.decode([0, 2], [a[3], b[4]]), np.stack([reference(a[:4])[-1], reference(b[:5])[-1]])
    )
    assert [backend.position(s) for s in range(3)] == [4, CONTEXT, 5]
    backend.truncate(1, CONTEXT - 1)
    _close(backend.decode([1], [full[-1]])[0], reference(full)[-1])


@pytest.mark.parametrize("kind", KINDS)
def test_bad_slots_and_tokens_are_refused(model_dir, kind):
    backend = _open(model_dir, kind, slots=2)
    backend.prefill(0, [5, 6])
    with pytest.raises(InputError, match="slot 2 does not exist"):
        backend.prefill(2, [5])
    with pytest.raises(InputError, match="slot -1 does not exist"):
        backend.release(-1)
    with pytest.raises(InputError, match="distinct"):
        backend.decode([0, 0], [5, 6])
    with pytest.raises(InputError, match="one token for each slot"):
        backend.decode([0, 1], [5])
    with pytest.raises(InputError, match="no tokens"):
        backend.extend(1, [])
    with pytest.raises(InputError, match="context full"):
        backend.extend(0, list(range(3, 3 + CONTEXT - 1)))
    assert [backend.position(s) for s in range(2)] == [2, 0]  # nothing refused left a trace


@pytest.mark.parametrize("kind", KINDS)
def test_the_engine_over_many_slots_equals_one_slot(model_dir, kind):
    one = _open(model_dir, kind, slots=1)
    many = _open(model_dir, kind, slots=3)
    many.prefill(1, [7, 8, 9])  # other slots hold other sequences meanwhile
    many.prefill(2, [10, 11])
    tokenizer = Tokenizer.load(model_dir)
    for params in (
        SamplingParams(temperature=0, max_new_tokens=12),
        SamplingParams(temperature=1.0, top_k=20, max_new_tokens=12, seed=3),
    ):
        alone = GenerationEngine(one, tokenizer).complete("the cat", params)
        shared = GenerationEngine(many, tokenizer).complete("the cat", params)
        assert shared.token_ids == alone.token_ids and shared.text == alone.text
    assert (many.position(1), many.position(2)) == (3, 2)
    draft = _open(model_dir, kind, slots=2)
    greedy = SamplingParams(temperature=0, max_new_tokens=12)
    speculative = GenerationEngine(many, tokenizer, draft=draft, draft_tokens=3)
    result = speculative.complete("the cat", greedy)
    assert (
        result.token_ids == GenerationEngine(one, tokenizer).complete("the cat", greedy).token_ids
    )
    assert speculative.last_acceptance == 1.0  # the draft is the model itself
