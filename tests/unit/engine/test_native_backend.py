"""The native C backend against the PyTorch model: same logits (within a stated tolerance per
precision) and the same greedy tokens, for every kernel set this CPU can run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pocketlm.checkpoint.layout import CONFIG_FILE
from pocketlm.checkpoint.model_io import load_model, save_model
from pocketlm.common.errors import InputError
from pocketlm.engine.load import open_backend
from pocketlm.model.config import ModelConfig
from pocketlm.model.transformer import build_model
from tests.conftest import ENGINE_KERNELS, engine_isa_params

native = pytest.importorskip("pocketlm.engine._native", reason="native extension not built")
from pocketlm.engine.native_backend import NativeBackend  # noqa: E402

# Stated tolerances: fp32 and bf16 run the same arithmetic as PyTorch (bf16 weights widen exactly);
# int8/int4 kernels also quantise activations to int8 per 32 values (as llama.cpp's Q8_0 dot does).
# The int8 activation error grows with how peaked attention is; trained models stay well inside this.
TOLERANCE = {"fp32": 2e-4, "bf16": 2e-4, "int8": 0.02, "int4": 0.02}  # x max|logit|


@pytest.fixture(scope="module")
def float_model_dir(synthetic_pipeline, tmp_path_factory):
    config = ModelConfig(
        vocab_size=512, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128, max_seq_len=96
    )
    model = build_model(config, seed=5)
    return save_model(
        tmp_path_factory.mktemp("native") / "fp32", model, synthetic_pipeline["tokenizer"]
    )


@pytest.fixture(scope="module")
def variant_dirs(float_model_dir, tmp_path_factory):
    from pocketlm.compress.quantize import quantize_model_dir

    out = {"fp32": float_model_dir}
    base = tmp_path_factory.mktemp("variants")
    for scheme in ("bf16", "int8", "int4"):
        out[scheme], _ = quantize_model_dir(float_model_dir, base / scheme, scheme)
    return out


def open_native(model_dir, **kwargs) -> NativeBackend:
    """The native backend for a model dir, through THE opener (never a silent torch fallback)."""
    backend, _ = open_backend(model_dir, backend="native", device="cpu", **kwargs)
    assert isinstance(backend, NativeBackend)
    return backend


def _torch_logits(model_dir, ids):
    loaded = load_model(model_dir)
    with torch.no_grad():
        return loaded.model(torch.tensor([ids]))[0].float().numpy()


@pytest.mark.parametrize("isa", engine_isa_params())
@pytest.mark.parametrize("scheme", ["fp32", "bf16", "int8", "int4"])
def test_native_logits_match_pytorch(variant_dirs, scheme, isa):
    """Every kernel family (GEMV and GEMM per weight format) at every ISA level this CPU runs."""
    rng = np.random.default_rng(0)
    ids = rng.integers(3, 512, size=40).tolist()
    ref = _torch_logits(variant_dirs[scheme], ids)
    d = variant_dirs[scheme]
    backend = NativeBackend(d, ModelConfig.load(d / CONFIG_FILE), threads=2, isa=isa)
    assert backend.isa == ENGINE_KERNELS[isa]
    full = backend.extend(0, ids)  # prefill path (GEMM kernels), logits after every token
    tol = TOLERANCE[scheme] * float(np.abs(ref).max())
    assert np.abs(full - ref).max() <= tol
    backend.release(0)
    steps = [backend.prefill(0, ids[:10])] + [
        backend.decode([0], [t])[0] for t in ids[10:]
    ]  # decode path (GEMV kernels)
    assert np.abs(np.stack(steps) - ref[9:]).max() <= tol


@pytest.mark.parametrize("scheme", ["fp32", "bf16", "int8", "int4"])
def test_native_greedy_tokens_equal_pytorch(variant_dirs, scheme):
    prompt = [1, 40, 41, 42, 43]
    loaded = load_model(variant_dirs[scheme])
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(16):
            ids.append(int(loaded.model(torch.tensor([ids]))[0, -1].argmax()))
    backend = open_native(variant_dirs[scheme], threads=2)
    out = list(prompt)
    token = int(np.argmax(backend.prefill(0, prompt)))
    for _ in range(16):
        out.append(token)
        token = int(np.argmax(backend.decode([0], [token])[0]))
    assert out == ids


def test_thread_count_does_not_change_results(variant_dirs):
    ids = list(range(5, 45))
    a = open_native(variant_dirs["int8"], threads=1).extend(0, ids)
    b = open_native(variant_dirs["int8"], threads=2).extend(0, ids)
    assert np.array_equal(a, b)


def test_long_prompts_run_in_chunks(variant_dirs):
    d = variant_dirs["fp32"]
    config = ModelConfig.load(d / CONFIG_FILE)
    small = NativeBackend(d, config, threads=2, max_batch=7)  # 40 tokens -> 6 chunks
    big = NativeBackend(d, config, threads=2, max_batch=64)
    ids = list(range(3, 43))
    assert np.allclose(small.prefill(0, ids), big.prefill(0, ids), atol=1e-5)


def test_context_overflow_is_a_clear_error(variant_dirs):
    backend = open_native(variant_dirs["fp32"], max_len=16)
    backend.prefill(0, list(range(3, 19)))
    with pytest.raises(InputError, match="context full"):
        backend.decode([0], [5])


def test_batched_slots_equal_sequences_run_alone(variant_dirs):
    """Continuous batching: one decode step over three slots gives each sequence exactly the
    logits it gets when it runs alone (same kernels, same arithmetic), for every precision."""
    for scheme in ("fp32", "bf16", "int8", "int4"):
        d = variant_dirs[scheme]
        backend = open_native(d, threads=2, slots=3)
        seqs = [list(range(5, 17)), list(range(100, 107)), list(range(300, 320))]
        alone = []
        for s in seqs:
            single = open_native(d, threads=2)
            single.prefill(0, s[:-1])
            alone.append(single.decode([0], [s[-1]])[0])
        for slot, s in enumerate(seqs):
            backend.prefill(slot, s[:-1])
        last = backend.decode([0, 1, 2], [s[-1] for s in seqs])
        for i in range(3):
            assert np.array_equal(last[i], alone[i]), scheme


@pytest.mark.parametrize("isa", engine_isa_params())
def test_pocketlm_isa_caps_the_kernels_of_every_opened_model(variant_dirs, monkeypatch, isa):
    monkeypatch.setenv("POCKETLM_ISA", isa)
    assert open_native(variant_dirs["int4"]).isa == ENGINE_KERNELS[isa]


def test_a_bad_isa_cap_is_a_clear_error(variant_dirs, monkeypatch):
    from pocketlm.common.errors import ConfigError

    monkeypatch.setenv("POCKETLM_ISA", "sse2")
    with pytest.raises(ConfigError, match="POCKETLM_ISA='sse2'"):
        open_native(variant_dirs["fp32"])
