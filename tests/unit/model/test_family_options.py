"""The model's family options (ModelConfig): each behaves as specified, decoding with the KV cache
gives the full forward's logits, and the attention paths agree. Parity with `transformers` for each
imported family is tested in tests/unit/interop."""

from __future__ import annotations

import math

import pytest
import torch

from pocketlm.checkpoint.model_io import load_model, save_model
from pocketlm.model.config import ModelConfig
from pocketlm.model.kv_cache import KVCache
from pocketlm.model.norms import RMSNorm
from pocketlm.model.quantized import dequantize_modules, quantize_modules
from pocketlm.model.rope import rope_buffers
from pocketlm.model.transformer import CausalLM, build_model, set_attention_kernel

BASE = dict(vocab_size=97, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64)
HALF = (1.0, 1.5, 2.0, 3.0)  # longrope factors for rotary_dim 8
VARIANTS = {
    "llama3-rope": dict(
        rope_scaling="llama3", rope_factor=8.0, rope_original_max_len=16, rope_theta=500000.0
    ),
    "linear-rope": dict(rope_scaling="linear", rope_factor=4.0),
    "qwen3": dict(qk_norm=True, head_dim=32, qkv_bias=True),
    "mistral": dict(sliding_window=8),
    "phi2": dict(
        norm_kind="layer", mlp_kind="plain", activation="gelu_tanh", parallel_block=True,
        qkv_bias=True, o_bias=True, mlp_bias=True, lm_head_bias=True, rotary_dim=8,
        tie_embeddings=False,
    ),
    "phi3-longrope": dict(
        rotary_dim=8, rope_scaling="longrope", rope_factor=4.0, rope_original_max_len=16,
        rope_short_factor=HALF, rope_long_factor=tuple(2 * f for f in HALF), sliding_window=12,
    ),
    "gemma2": dict(
        norm_offset=1.0, activation="gelu_tanh", embed_scale=8.0, attn_scale=0.1,
        attn_softcap=5.0, final_softcap=3.0, sandwich_norms=True, sliding_window=8,
        layer_types=("sliding", "full"), n_kv_heads=1,
    ),
    "gemma3": dict(
        norm_offset=1.0, activation="gelu_tanh", embed_scale=8.0, attn_scale=0.2, qk_norm=True,
        sandwich_norms=True, sliding_window=8, layer_types=("sliding", "full"),
        rope_local_theta=10000.0, rope_theta=1e6, rope_scaling="linear", rope_factor=2.0,
    ),
}  # fmt: skip


def _model(name: str, seed: int = 0, **extra) -> CausalLM:
    """A random model of a variant with perturbed norms and biases (so offsets and biases show)."""
    config = ModelConfig(**{**BASE, "init_std": 0.2, **VARIANTS[name], **extra})
    model = build_model(config, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname.endswith(("norm.weight", ".bias")):
                p.add_(0.3 * torch.randn(p.shape, generator=gen))
    return model.eval()


def _ids(batch: int, length: int, seed: int = 3) -> torch.Tensor:
    return torch.randint(0, BASE["vocab_size"], (batch, length), generator=torch.Generator().manual_seed(seed))  # fmt: skip


@pytest.mark.parametrize("name", list(VARIANTS))
def test_decoding_with_the_cache_gives_the_full_forward(name):
    model = _model(name)
    # longrope: both calls stay on the same side of the original context (see rope.py)
    total = 16 if name == "phi3-longrope" else 40
    ids = _ids(2, total)
    with torch.no_grad():
        full = model(ids)
        cache = KVCache.allocate(model.config, 2)
        parts = [model(ids[:, :10], cache)]
        parts += [model(ids[:, i : i + 1], cache) for i in range(10, total)]
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=0)
    assert full.std() > 0.1


@pytest.mark.parametrize("name", ["mistral", "gemma2", "phi2"])
def test_rows_of_different_lengths_decode_as_each_row_alone(name):
    model = _model(name)
    ids = _ids(2, 30)
    with torch.no_grad():
        alone = model(ids[1:, :25])[0, -1]
        cache = KVCache.allocate(model.config, 2)
        model(ids[:1, :5], KVCache(cache.k[:, :1], cache.v[:, :1], [0]))  # row 0: 5 tokens
        model(ids[1:, :24], KVCache(cache.k[:, 1:], cache.v[:, 1:], [0]))  # row 1: 24 tokens
        cache.lengths = [5, 24]
        both = model(torch.stack([ids[0, 5:6], ids[1, 24:25]]), cache)  # (2, 1, V)
    torch.testing.assert_close(both[1, 0], alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_native_kernels_and_sdpa_agree(name):
    model = _model(name)
    ids = _ids(2, 32)
    with torch.no_grad():
        auto = model(ids)
        set_attention_kernel(model, "sdpa")
        sdpa = model(ids)
    torch.testing.assert_close(auto, sdpa, atol=1e-5, rtol=0)


def test_a_sliding_layer_never_sees_keys_outside_its_window():
    model = _model("mistral", n_layers=1)
    ids = _ids(1, 30)
    changed = ids.clone()
    changed[0, 0] = (ids[0, 0] + 1) % BASE["vocab_size"]
    with torch.no_grad():
        a, b = model(ids)[0], model(changed)[0]
    assert torch.equal(a[8:], b[8:])  # position 8 sees 1..8: token 0 is out of every window
    assert not torch.allclose(a[:8], b[:8])


def test_gemma_norm_adds_one_to_the_weight_in_fp32():
    x = torch.randn(3, 16, dtype=torch.bfloat16)
    w = torch.randn(16) * 0.01
    gemma, llama = RMSNorm(16, 1e-6, offset=1.0), RMSNorm(16, 1e-6)
    with torch.no_grad():
        gemma.weight.copy_(w)
        llama.weight.copy_(1.0 + w)
        torch.testing.assert_close(gemma(x.float()), llama(x.float()))
        gemma.to(torch.bfloat16)
    x32 = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6)
    want = (x32 * (1.0 + w.to(torch.bfloat16).float())).to(torch.bfloat16)
    assert torch.equal(gemma(x), want)
    assert (_model("gemma2").model.norm.weight.abs() < 1).all()  # built as identity: w near 0


def test_final_softcap_bounds_the_logits_and_training_uses_them():
    model = _model("gemma2")
    ids = _ids(2, 20)
    with torch.no_grad():
        logits = model(ids)
        loss = model(ids, targets=ids)
    assert logits.abs().max() <= 3.0
    want = torch.nn.functional.cross_entropy(logits.reshape(-1, 97), ids.reshape(-1))
    torch.testing.assert_close(loss, want)


def test_lm_head_bias_reaches_the_loss():
    model = _model("phi2")
    ids = _ids(2, 20)
    with torch.no_grad():
        logits = model(ids)
        loss = model(ids, targets=ids)
    assert model.lm_head.bias.abs().sum() > 0
    want = torch.nn.functional.cross_entropy(logits.reshape(-1, 97), ids.reshape(-1))
    torch.testing.assert_close(loss, want)


def test_longrope_takes_the_long_factors_for_a_call_past_the_original_context():
    model = _model("phi3-longrope", n_layers=1)
    c = model.config
    ids = _ids(1, 20)
    with torch.no_grad():
        long_call = model(ids)[0, :16]  # the call ends at position 19 > 16: long factors for all
        short_call = model(ids[:, :16])[0]  # ends at 15: short factors
        buffers = rope_buffers(c)
        model.model.rope_inv_freq_global.copy_(buffers["rope_inv_freq_long"])
        forced_long = model(ids[:, :16])[0]
    assert not torch.allclose(long_call, short_call)
    torch.testing.assert_close(long_call, forced_long, atol=1e-5, rtol=0)
    scale = math.sqrt(1 + math.log(4.0) / math.log(16))
    assert model._rope_scale == pytest.approx(scale)


def test_rope_frequencies_stay_fp32_when_the_model_is_cast():
    model = _model("llama3-rope").to(torch.bfloat16)
    assert model.model.rope_inv_freq_global.dtype == torch.float32
    assert torch.equal(model.model.rope_inv_freq_global, rope_buffers(model.config)["rope_inv_freq_global"])  # fmt: skip


@pytest.mark.parametrize("name", ["phi2", "gemma3"])
def test_save_load_round_trip(name, synthetic_pipeline, tmp_path):
    model = _model(name, vocab_size=512)
    out = save_model(tmp_path / name, model, synthetic_pipeline["tokenizer"])
    loaded = load_model(out).model
    ids = _ids(1, 24)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), model(ids), atol=0, rtol=0)


def test_tied_head_keeps_its_bias_through_save_and_quantization(synthetic_pipeline, tmp_path):
    model = _model("phi2", vocab_size=512, tie_embeddings=True)
    ids = _ids(1, 24)
    out = save_model(tmp_path / "tied-bias", model, synthetic_pipeline["tokenizer"])
    loaded = load_model(out).model
    with torch.no_grad():
        want = model(ids)
        torch.testing.assert_close(loaded(ids), want, atol=0, rtol=0)
        quantize_modules(loaded, "int8")
        assert torch.equal(loaded.lm_head.bias, model.lm_head.bias)
        torch.testing.assert_close(loaded(ids), want, atol=0.3, rtol=0)
        dequantize_modules(loaded)
        assert torch.equal(loaded.lm_head.bias, model.lm_head.bias)


def test_rope_matches_transformers_scaling_functions():
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    llama = transformers.LlamaConfig(
        hidden_size=64, num_attention_heads=4, max_position_embeddings=64,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                         "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 16},
    )  # fmt: skip
    theirs, _ = ROPE_INIT_FUNCTIONS["llama3"](llama)
    ours = rope_buffers(ModelConfig(**BASE, **VARIANTS["llama3-rope"]))["rope_inv_freq_global"]
    assert torch.equal(ours, theirs)
    phi3 = transformers.Phi3Config(
        hidden_size=64, num_attention_heads=4, max_position_embeddings=64,
        original_max_position_embeddings=16,
        rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0,
                         "partial_rotary_factor": 0.5, "short_factor": list(HALF),
                         "long_factor": [2 * f for f in HALF]},
    )  # fmt: skip
    short, factor = ROPE_INIT_FUNCTIONS["longrope"](phi3)
    long, _ = ROPE_INIT_FUNCTIONS["longrope"](phi3, seq_len=17)
    config = ModelConfig(**BASE, **VARIANTS["phi3-longrope"])
    ours = rope_buffers(config)
    assert torch.equal(ours["rope_inv_freq_global"], short)
    assert torch.equal(ours["rope_inv_freq_long"], long)
    assert CausalLM(config)._rope_scale == pytest.approx(factor, rel=1e-12)
