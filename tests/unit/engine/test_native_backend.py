"""The native C backend against the PyTorch model: same logits (within a stated tolerance per
precision) and the same greedy tokens, for every kernel set this CPU can run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pocketlm.checkpoint.layout import CONFIG_FILE
from pocketlm.checkpoint.model_io import load_model, save_model
from pocketlm.common.errors import InputError
from pocketlm.engine.load import open_backend
from pocketlm.model.config import ModelConfig
from pocketlm.model.transformer import build_model
from tests.conftest import ENGINE_KERNELS, engine_isa_params
from tests.unit.engine.model_variants import WIDE, save_variants

native = pytest.importorskip("pocketlm.engine._native", reason="native extension not built")
from pocketlm.engine.native_backend import NativeBackend  # noqa: E402

# Stated tolerances: fp32 and bf16 run the same arithmetic as PyTorch (bf16 weights widen exactly);
# int8/int4 kernels also quantise activations to int8 per 32 values (as llama.cpp's Q8_0 dot does).
# The int8 activation error grows with how peaked attention is; trained models stay well inside this.
TOLERANCE = {"fp32": 2e-4, "bf16": 2e-4, "int8": 0.02, "int4": 0.02}  # x max|logit|
# Prefill on the avx512bf16 kernels rounds the inputs of bf16 / int8 / int4 matmuls to bf16
# (vdpbf16ps, as bf16 autocast and llama.cpp's BF16 do): bf16-level error, not fp32's.
BF16_PREFILL_TOLERANCE = 5e-3


def _tolerances(scheme: str, isa: str, ref: np.ndarray) -> tuple[float, float]:
    """(prefill, decode) tolerances for logits `ref` of a model of `scheme` run at `isa`."""
    scale = float(np.abs(ref).max())
    prefill = TOLERANCE[scheme]
    if isa == "avx512bf16" and scheme != "fp32":
        prefill = max(prefill, BF16_PREFILL_TOLERANCE)
    return prefill * scale, TOLERANCE[scheme] * scale


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
    ids = np.random.default_rng(0).integers(3, 512, size=40).tolist()
    backend = _assert_matches_torch(variant_dirs[scheme], scheme, isa, ids)
    assert backend.isa == ENGINE_KERNELS[isa]


def _assert_matches_torch(d, scheme: str, isa: str, ids: list[int], decode: bool = True):
    """The native engine's logits for ids equal torch's within the scheme's tolerances: through
    the prefill path (GEMM kernels, logits after every token) and, with decode, a 10-token
    prefill then decode steps (GEMV kernels). Returns the backend."""
    ref = _torch_logits(d, ids)
    backend = NativeBackend(d, ModelConfig.load(d / CONFIG_FILE), threads=2, isa=isa)
    prefill_tol, tol = _tolerances(scheme, isa, ref)
    assert np.abs(backend.extend(0, ids) - ref).max() <= prefill_tol
    if decode:
        backend.release(0)
        steps = [backend.prefill(0, ids[:10])] + [backend.decode([0], [t])[0] for t in ids[10:]]
        assert np.abs(np.stack(steps) - ref[9:]).max() <= tol
    return backend


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


@pytest.fixture(scope="module")
def wide_variant_dirs(synthetic_pipeline, tmp_path_factory):
    """An untied model with random q/k/v biases whose q_dim exceeds dim and ffn_dim, in every
    precision (model_variants.WIDE)."""
    root = tmp_path_factory.mktemp("wide")
    return save_variants(root, "wide", WIDE, synthetic_pipeline["tokenizer"], seed=7)


@pytest.mark.parametrize("isa", engine_isa_params())
@pytest.mark.parametrize("scheme", ["fp32", "bf16", "int8", "int4"])
def test_biases_and_a_q_dim_wider_than_dim_and_ffn_match_pytorch(wide_variant_dirs, scheme, isa):
    """bf16 biases are widened from their bits (not cast as integers), and o_proj's q_dim inputs
    fit the buffers sized for the widest matrix (prefill and decode paths)."""
    d = wide_variant_dirs[scheme]
    ids = list(range(3, 43))
    ref = _torch_logits(d, ids)
    backend = NativeBackend(d, ModelConfig.load(d / CONFIG_FILE), threads=2, isa=isa)
    prefill_tol, tol = _tolerances(scheme, isa, ref)
    assert np.abs(backend.extend(0, ids) - ref).max() <= prefill_tol
    backend.release(0)
    steps = [backend.prefill(0, ids[:10])] + [backend.decode([0], [t])[0] for t in ids[10:]]
    assert np.abs(np.stack(steps) - ref[9:]).max() <= tol


def _model_args(d):
    """The arguments NativeBackend hands the C side for model dir d, as mutable containers."""
    from pocketlm.checkpoint.safetensors_mmap import MappedTensors
    from pocketlm.checkpoint.weights_spec import read_quantization
    from pocketlm.engine.native_weights import c_config, c_rope, c_weights

    c = ModelConfig.load(d / CONFIG_FILE)
    t = MappedTensors(d / "model.safetensors")
    w = c_weights(t, c, read_quantization(d).get("group_size") or 32)
    for layer in w["layers"]:
        layer["matrices"] = [list(m) for m in layer["matrices"]]
    w["embed"] = list(w["embed"])
    w["lm_head"] = w["embed"] if c.tie_embeddings else list(w["lm_head"])
    return t, c_config(c, c.max_seq_len, 8, 1, 64), w, list(c_rope(c))


def _build(cfg, w, rope):
    as_tuple = lambda m: tuple(m) if isinstance(m, list) else m  # noqa: E731
    layers = [
        {**layer, "matrices": tuple(as_tuple(m) for m in layer["matrices"])}
        for layer in w["layers"]
    ]
    return native.Model(
        cfg,
        as_tuple(w["embed"]),
        as_tuple(w["lm_head"]),
        w["final_norm"],
        layers,
        tuple(rope),
        1,
        "",
        final_norm_bias=w["final_norm_bias"],
        lm_head_bias=w["lm_head_bias"],
    )


_DIMS = ("vocab", "dim", "n_layers", "n_heads", "n_kv_heads", "head_dim", "ffn_dim")
_RUNTIME = ("max_seq", "max_batch", "n_slots")  # any positive size is legal
# family options set out of range or inconsistent with the weights handed over
_BAD_OPTIONS = (
    ("norm_kind", 2), ("norm_kind", 1), ("activation", 3), ("mlp_gated", 0), ("qk_norm", 1),
    ("parallel_block", 1), ("sandwich_norms", 1), ("rotary_dim", 3), ("rotary_dim", 64),
    ("rotary_dim", 0), ("rope_long_after", 16), ("attn_softcap", -1.0),
    ("embed_scale", float("inf")), ("n_experts", 2), ("top_k", 1), ("shared_ffn_dim", 32),
)  # fmt: skip


@pytest.mark.parametrize("scheme", ["bf16", "int8", "int4"])
@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_the_c_side_refuses_any_buffer_or_dim_that_does_not_match(wide_variant_dirs, scheme, data):
    """Second line of defence: whatever Python hands it, the C loader checks every buffer's byte
    length, every matrix's shape and every family option against the config at load time (a
    ValueError, not a read past the end). The unchanged arguments load (the control)."""
    _mapping, cfg, w, rope = _model_args(wide_variant_dirs[scheme])
    _build(cfg, w, rope)
    target = data.draw(
        st.sampled_from(["config", "option", "embed", "head", "norm", "layer", "rope"])
    )

    def resize(arr, what):
        if arr is None:  # an optional or absent vector: give one of a length no vector has here
            n = data.draw(st.integers(1, 300).filter(lambda k: k % 32), label=what)
            return np.zeros(n, dtype=np.float32)
        n = arr.reshape(-1).shape[0]
        new = data.draw(st.integers(0, 2 * n).filter(lambda k: k != n), label=what)
        return None if new == 0 else np.resize(arr.reshape(-1), new)

    if target == "config":
        key = data.draw(st.sampled_from(_DIMS + _RUNTIME))
        cfg[key] = data.draw(st.sampled_from([0, -1, cfg[key] + 1, cfg[key] * 2, 2**31 - 1]))
        if key in _RUNTIME and cfg[key] > 0:
            cfg[key] = 0
    elif target == "option":
        key, value = data.draw(st.sampled_from(_BAD_OPTIONS))
        cfg[key] = value
    elif target == "norm":
        key = data.draw(st.sampled_from(["final_norm", "final_norm_bias", "lm_head_bias"]))
        w[key] = resize(w[key], key)
        if w[key] is None and key == "lm_head_bias":  # optional: give a wrong one
            w[key] = np.zeros(3, dtype=np.float32)
    elif target == "rope":
        i = data.draw(st.integers(0, 2))
        rope[i] = resize(rope[i], f"rope {i}")
    else:
        matrix = w["embed"] if target == "embed" else w["lm_head"]
        if target == "layer":
            layer = w["layers"][data.draw(st.integers(0, len(w["layers"]) - 1))]
            vectors = ["input_norm", "post_attention_norm", "q_bias", "k_bias", "v_bias", "o_bias"]
            vectors += ["q_norm", "attn_output_norm", "router", "shared_expert_gate", "up_bias"]
            key = data.draw(st.sampled_from([*vectors, "window", "rope_set", "matrix", "count"]))
            if key in vectors:
                layer[key] = resize(layer.get(key), key)
                if layer[key] is None and key.endswith("bias"):  # left out is legal
                    layer[key] = np.zeros(3, dtype=np.float32)
                return _assert_refused(cfg, w, rope)
            if key in ("window", "rope_set"):
                layer[key] = data.draw(st.sampled_from([-1, 2])) if key == "rope_set" else -1
                return _assert_refused(cfg, w, rope)
            if key == "count":
                layer["matrices"] = layer["matrices"][: data.draw(st.integers(0, 6))]
                return _assert_refused(cfg, w, rope)
            j = data.draw(st.integers(0, len(layer["matrices"]) - 1))
            matrix = layer["matrices"][j]
        part = data.draw(st.sampled_from(["data", "scales", "rows", "cols", "group", "dtype"]))
        if part == "data" or (part == "scales" and matrix[5] is None):
            matrix[4] = resize(matrix[4], "data")
        elif part == "scales":
            matrix[5] = resize(matrix[5], "scales")
        elif part in ("rows", "cols"):
            k = 1 if part == "rows" else 2
            matrix[k] = data.draw(st.sampled_from([0, -1, matrix[k] + 32, matrix[k] // 2]))
        elif part == "group":
            if matrix[0] != 3:  # only int4 reads a group size
                matrix[4] = resize(matrix[4], "data")
            else:
                matrix[3] = data.draw(st.sampled_from([0, 16, 33, 96, 2 * matrix[2]]))
        else:
            matrix[0] = data.draw(
                st.sampled_from([d for d in (-1, 0, 1, 2, 3, 4) if d != matrix[0]])
            )
    _assert_refused(cfg, w, rope)


def _assert_refused(cfg, w, rope):
    with pytest.raises(ValueError):
        _build(cfg, w, rope)


@pytest.fixture(scope="module")
def odd_bf16_dir(synthetic_pipeline, tmp_path_factory):
    """A bf16 model whose FFN width is odd: the down projection has an odd number of columns."""
    config = ModelConfig(
        vocab_size=512, dim=48, n_layers=1, n_heads=3, n_kv_heads=1, ffn_dim=73, max_seq_len=64
    )
    root = tmp_path_factory.mktemp("odd")
    return save_variants(root, "odd", config, synthetic_pipeline["tokenizer"], schemes=("bf16",))[
        "bf16"
    ]


@pytest.mark.parametrize("isa", engine_isa_params())
def test_odd_columns_of_bf16_weights_take_the_float_gemm(odd_bf16_dir, isa):
    """vdpbf16ps multiplies column pairs, so a bf16 matrix with an odd number of columns runs its
    prompt through the float GEMM on a dequantised copy instead; the logits are still torch's."""
    _assert_matches_torch(odd_bf16_dir, "bf16", isa, list(range(3, 43)), decode=False)


@pytest.fixture(scope="module")
def int4_group128_dir(synthetic_pipeline, tmp_path_factory):
    """A model at int4 with one scale per 128 values (4 blocks share it; inputs of 128 and 256)."""
    from pocketlm.compress.quantize import quantize_model_dir

    config = ModelConfig(
        vocab_size=512, dim=128, n_layers=1, n_heads=4, n_kv_heads=2, ffn_dim=256, max_seq_len=64
    )
    root = tmp_path_factory.mktemp("g128")
    fp32 = save_model(root / "fp32", build_model(config, seed=9), synthetic_pipeline["tokenizer"])
    out, _ = quantize_model_dir(fp32, root / "int4", "int4", group_size=128)
    return out


@pytest.mark.parametrize("isa", engine_isa_params())
def test_int4_scales_shared_by_several_blocks_match_pytorch(int4_group128_dir, isa):
    """int4 groups wider than a 32-value block: decode reads each block's group scale, prefill's
    dequantisation keeps one scale table per group (rebuilt when the group changes)."""
    _assert_matches_torch(int4_group128_dir, "int4", isa, list(range(5, 45)))
