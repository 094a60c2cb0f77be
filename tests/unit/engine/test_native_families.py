"""The native engine runs every model family option as the torch model computes it: for each option
group a tiny model directory in fp32, bf16, int8 and int4, whose logits (full prompt, and prompt
then decode with the KV cache) match the torch backend's on a prompt longer than the sliding window
and than longrope's original context, and whose 32 greedy tokens equal the torch backend's, at
every ISA level this CPU runs. The torch side runs once per model; each ISA level reruns only C."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pocketlm.checkpoint.layout import CONFIG_FILE
from pocketlm.checkpoint.model_io import save_model
from pocketlm.common.errors import InputError
from pocketlm.engine.load import open_backend
from pocketlm.model.config import ModelConfig
from pocketlm.model.transformer import build_model
from tests.conftest import ENGINE_KERNELS, engine_isa_params

native = pytest.importorskip("pocketlm.engine._native", reason="native extension not built")
from pocketlm.engine.native_backend import NATIVE_FEATURES, NativeBackend  # noqa: E402

# test_native_backend's tolerances. fp32 and bf16 run the torch model's arithmetic. int8/int4 also
# quantise the activations to int8 per 32 values wherever a matrix multiplies at most GEMV_MAX
# vectors (decode; a prefill's head; small expert batches), an error these family models (branches
# at unit scale: sandwich norms, embedding scales, decisive routers) amplify past what a Llama-init
# model shows; so the torch reference rounds its activations the same way (`_emulate_gemv`). What
# remains is a rare activation that lands on a rounding tie and goes the other way on one side.
# With AVX-512 VNNI the prefill GEMM over int8 weights rounds every call's input so too
# (`_emulate_gemv(model, every_call=True)`), and on the avx512bf16 kernels a call of more than
# GEMV_MAX vectors meets bf16 and int4 weights in bf16 (`_emulate_bf16_gemm`): second references
# for those ISA levels.
TOLERANCE = {"fp32": 2e-4, "bf16": 2e-4, "int8": 0.02, "int4": 0.02}  # x max|logit|
GEMV_MAX = 16  # model.c: calls of up to this many tokens run the GEMV kernels
BF16_GEMM = native.cpu_isa() == "avx512-bf16"  # this CPU runs the avx512bf16 level
INT_GEMM = native.cpu_isa() in ("avx512-vnni", "avx512-bf16")  # the avx512 level
SCHEMES = ("fp32", "bf16", "int8", "int4")
BASE = dict(
    vocab_size=512, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=96, max_seq_len=96,
    init_std=0.2,
)  # fmt: skip
LONGROPE = (1.0, 1.5, 2.0, 3.0, 1.2, 1.1)  # one per frequency of rotary_dim 12
GROUPS = {
    "gemma2": dict(  # (1 + w) norms, GeGLU, embedding scale, attention scale and soft-caps,
        # sandwich norms, alternating sliding and full layers, multi-query, head_dim > dim / heads
        norm_offset=1.0, activation="gelu_tanh", embed_scale=2.0, attn_scale=0.1,
        attn_softcap=2.0, final_softcap=3.0, sandwich_norms=True, sliding_window=8,
        layer_types=("sliding", "full"), n_kv_heads=1, head_dim=32,
    ),
    "gemma3": dict(  # q/k norms with the offset, a local rope base, linear scaling globally
        norm_offset=1.0, activation="gelu_tanh", embed_scale=2.0, attn_scale=0.2, qk_norm=True,
        sandwich_norms=True, sliding_window=8, layer_types=("sliding", "full"),
        rope_local_theta=10000.0, rope_theta=1e6, rope_scaling="linear", rope_factor=2.0,
    ),
    "phi2": dict(  # LayerNorm, parallel block, plain MLP, biases everywhere, partial rotary
        norm_kind="layer", mlp_kind="plain", activation="gelu_tanh", parallel_block=True,
        qkv_bias=True, o_bias=True, mlp_bias=True, lm_head_bias=True, rotary_dim=8,
        tie_embeddings=False,
    ),
    "phi3-longrope": dict(  # longrope past its original context, partial rotary, exact GELU
        rotary_dim=12, rope_scaling="longrope", rope_factor=4.0, rope_original_max_len=24,
        rope_short_factor=LONGROPE, rope_long_factor=tuple(2 * f for f in LONGROPE),
        activation="gelu",
    ),
    "llama3-rope": dict(
        rope_scaling="llama3", rope_factor=8.0, rope_original_max_len=16, rope_theta=500000.0
    ),
    "mistral-qwen3": dict(sliding_window=8, qk_norm=True, qkv_bias=True, mlp_bias=True),
    "mixtral": dict(n_experts=4, n_experts_per_token=2, expert_ffn_dim=64),
    "qwen2-moe": dict(
        n_experts=4, n_experts_per_token=2, expert_ffn_dim=32, router="softmax_topk_raw",
        shared_expert_ffn_dim=64, qkv_bias=True,
    ),
}  # fmt: skip
PROMPT = np.random.default_rng(0).integers(3, 512, size=40).tolist()  # > window 8 and context 24
SPLIT = 10  # prefill this many, then decode the rest one at a time
GREEDY = 32


def family_model(name: str, seed: int = 0):
    """A random model of an option group, norms, biases and routers perturbed so that an offset,
    a bias or a routing mistake changes the logits."""
    model = build_model(ModelConfig(**{**BASE, **GROUPS[name]}), seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname.endswith(("norm.weight", ".bias")):
                p.add_(0.3 * torch.randn(p.shape, generator=gen))
            elif pname.endswith(("mlp.gate.weight", "shared_expert_gate.weight")):
                p.copy_(torch.randn(p.shape, generator=gen))  # decisive routing
    return model.eval()


def run_backend(backend) -> dict[str, np.ndarray]:
    """The logits of one prompt through extend, through prefill + decode, and greedy tokens."""
    out = {"extend": backend.extend(0, PROMPT)}
    backend.release(0)
    steps = [backend.prefill(0, PROMPT[:SPLIT])]
    steps += [backend.decode([0], [t])[0] for t in PROMPT[SPLIT:]]
    out["decode"] = np.stack(steps)
    backend.release(0)
    logits = [backend.prefill(0, PROMPT)]
    for _ in range(GREEDY - 1):
        logits.append(backend.decode([0], [int(np.argmax(logits[-1]))])[0])
    out["greedy"] = np.stack(logits)  # (GREEDY, V): the token of step i is its argmax
    return out


@pytest.fixture(scope="module")
def family_dirs(synthetic_pipeline, tmp_path_factory) -> dict[tuple[str, str], tuple]:
    """(group, scheme) -> (model dir, the torch backend's results on it)."""
    root = tmp_path_factory.mktemp("families")
    out = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: thread hand-offs cost more than the maths
    try:
        _build_family_dirs(root, synthetic_pipeline["tokenizer"], out)
    finally:
        torch.set_num_threads(threads)
    return out


def _build_family_dirs(root, tokenizer, out) -> None:
    from pocketlm.compress.quantize import quantize_model_dir

    for name in GROUPS:
        dirs = {"fp32": save_model(root / name, family_model(name), tokenizer)}
        for scheme in SCHEMES[1:]:
            dirs[scheme], _ = quantize_model_dir(dirs["fp32"], root / f"{name}-{scheme}", scheme)
        for scheme, d in dirs.items():
            for kind in _reference_kinds(scheme):
                ref, _ = open_backend(d, backend="torch", device="cpu", precision="fp32")
                if scheme in ("int8", "int4"):
                    _emulate_gemv(ref.model, every_call=kind == "int-gemm")
                if kind == "bf16-gemm":
                    _emulate_bf16_gemm(ref.model)
                out[(name, scheme, kind) if kind else (name, scheme)] = d, run_backend(ref)


def _reference_kinds(scheme: str) -> tuple[str, ...]:
    """The torch references a scheme needs on this CPU: "" (portable / avx2 arithmetic), plus the
    one of its AVX-512 levels."""
    if scheme == "int8" and INT_GEMM:
        return ("", "int-gemm")
    if scheme in ("bf16", "int4") and BF16_GEMM:
        return ("", "bf16-gemm")
    return ("",)


def _reference(family_dirs, group: str, scheme: str, isa: str) -> tuple:
    """The torch results a native run at this ISA level computes."""
    if isa in ("avx512", "avx512bf16") and scheme == "int8":
        return family_dirs[group, scheme, "int-gemm"]
    if isa == "avx512bf16" and scheme in ("bf16", "int4"):
        return family_dirs[group, scheme, "bf16-gemm"]
    return family_dirs[group, scheme]


def _emulate_bf16_gemm(model: torch.nn.Module) -> None:
    """Every matrix (not the router or the shared expert's gate: fp32 dot products natively) that
    multiplies more than GEMV_MAX vectors does so in bf16 (input and dequantised weights rounded),
    as the avx512bf16 prefill GEMM."""
    from pocketlm.model.quantized import QuantizedLinear

    def bf16(t: torch.Tensor) -> torch.Tensor:
        return t.float().to(torch.bfloat16).float()

    def in_bf16(module, args, out):
        x = args[0]
        if x.numel() // x.shape[-1] <= GEMV_MAX:
            return None
        quantized = isinstance(module, QuantizedLinear)
        w = module.dequantized(torch.float32) if quantized else module.weight
        bias = None if module.bias is None else module.bias.float()
        return torch.nn.functional.linear(bf16(x), bf16(w), bias).to(out.dtype)

    for name, module in model.named_modules():
        if name.endswith((".gate", "shared_expert_gate")):
            continue
        if isinstance(module, (torch.nn.Linear, QuantizedLinear)):
            module.register_forward_hook(in_bf16)


def _emulate_gemv(model: torch.nn.Module, every_call: bool = False) -> None:
    """Round the input of every quantized linear that multiplies at most GEMV_MAX vectors (or of
    every call: the integer GEMMs) as the native kernels do (int8 per block of 32, scale
    amax / 127, ties to even)."""
    from pocketlm.model.quantized import QuantizedLinear

    def rounded(_module, args):
        x = args[0]
        if x.numel() // x.shape[-1] > GEMV_MAX and not every_call:
            return None
        blocks = x.float().reshape(-1, x.shape[-1] // 32, 32)  # (rows, blocks, 32)
        scale = blocks.abs().amax(-1, keepdim=True) / 127.0
        inv = torch.where(scale > 0, 1.0 / scale, torch.zeros_like(scale))
        q = torch.clamp(torch.round(blocks * inv), -127, 127)
        return ((q * scale).reshape(x.shape).to(x.dtype),)

    for module in model.modules():
        if isinstance(module, QuantizedLinear):
            module.register_forward_pre_hook(rounded)


@pytest.mark.parametrize("isa", engine_isa_params())
@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("group", list(GROUPS))
def test_native_runs_the_family_options_as_torch(family_dirs, group, scheme, isa):
    d, ref = _reference(family_dirs, group, scheme, isa)
    config = ModelConfig.load(d / CONFIG_FILE)
    assert set(config.family_features()) <= NATIVE_FEATURES
    backend = NativeBackend(d, config, threads=2, isa=isa)
    assert backend.isa == ENGINE_KERNELS[isa]
    got = run_backend(backend)
    # bf16 in bf16 GEMMs: activations rounded as int8's are, with the same rare rounding-tie flips
    rounded = scheme in ("int8", "int4") or (scheme == "bf16" and isa == "avx512bf16")
    tol = TOLERANCE["int8" if rounded else scheme] * float(np.abs(ref["extend"]).max())
    assert np.abs(got["extend"] - ref["extend"]).max() <= tol
    assert np.abs(got["decode"] - ref["decode"]).max() <= tol
    tokens, ref_tokens = got["greedy"].argmax(1), ref["greedy"].argmax(1)  # (GREEDY,)
    if not rounded:
        assert tokens.tolist() == ref_tokens.tolist()
        return
    # int8/int4: the same tokens up to the first near-tie the activation rounding may break
    differ = np.flatnonzero(tokens != ref_tokens)
    if differ.size:
        step = ref["greedy"][differ[0]]
        assert step.max() - step[tokens[differ[0]]] <= tol, f"greedy token {differ[0]}"


def _assert_fp32_runs_match(backend, ref) -> float:
    """run_backend's extend, decode and greedy logits equal the fp32 reference's; the tolerance."""
    got = run_backend(backend)
    tol = TOLERANCE["fp32"] * float(np.abs(ref["extend"]).max())
    for key in ("extend", "decode", "greedy"):
        assert np.abs(got[key] - ref[key]).max() <= tol, key
    return tol


@pytest.mark.parametrize("isa", engine_isa_params())
@pytest.mark.parametrize("group", ["gemma2", "mistral-qwen3"])
def test_prompt_chunks_attend_across_the_rolling_cache_edge(family_dirs, group, isa):
    """Prompt chunks of 17 tokens (past GEMV_MAX: attention as two GEMMs per block of queries on
    AVX2 and AVX-512) in rolling caches of 8 + 17 positions (no rewind): the second chunk's keys wrap the ring's end,
    so scores and values run in two pieces each; the logits are the full cache's."""
    d, ref = family_dirs[group, "fp32"]
    config = ModelConfig.load(d / CONFIG_FILE)
    _assert_fp32_runs_match(
        NativeBackend(d, config, threads=2, isa=isa, max_batch=17, kv_rewind=0), ref
    )


@pytest.mark.parametrize("isa", engine_isa_params())
@pytest.mark.parametrize("group", ["gemma2", "mistral-qwen3"])
def test_sliding_layers_roll_their_cache(family_dirs, group, isa):
    """Sliding layers keep window + kv_rewind + max_batch positions (8 + 2 + 4 here: the 40-token
    prompt and 32 greedy tokens wrap it many times) and compute what the full cache does; a
    slot goes back up to kv_rewind tokens, and no further."""
    d, ref = family_dirs[group, "fp32"]
    config = ModelConfig.load(d / CONFIG_FILE)
    backend = NativeBackend(d, config, threads=2, isa=isa, max_batch=4, kv_rewind=2)
    tol = _assert_fp32_runs_match(backend, ref)
    backend.release(0)
    backend.prefill(0, PROMPT[:30])
    backend.truncate(0, 28)  # as speculative decoding rejects two drafted tokens
    assert np.abs(backend.extend(0, PROMPT[28:]) - ref["extend"][28:]).max() <= tol
    with pytest.raises(InputError, match="sliding-window layers keep 2 positions"):
        backend.truncate(0, 37)  # 40 - 37 > 2
    backend.truncate(0, 0)  # forgetting everything is always possible


def test_longrope_runs_a_slot_again_past_its_original_context_as_torch(family_dirs):
    """Within the original context (24) a slot rotates with the short factors; when it grows past
    it, the slot runs again from its first token with the long factors (as the torch backend and
    transformers' generate do), so from then on its logits are one full forward's. A whole prompt
    goes in one call (no prefill chunks)."""
    d, ref = family_dirs["phi3-longrope", "fp32"]
    backend = NativeBackend(d, ModelConfig.load(d / CONFIG_FILE), threads=2)
    assert backend.prefill_chunk is None
    torch_backend, _ = open_backend(d, backend="torch", device="cpu", precision="fp32")
    calls = {}
    for b in (backend, torch_backend):  # 20 tokens (short factors), then 20 more (long)
        calls[b.name] = np.concatenate([b.extend(0, PROMPT[:20]), b.extend(0, PROMPT[20:])])
    tol = TOLERANCE["fp32"] * float(np.abs(calls["torch"]).max())
    assert np.abs(calls["native"] - calls["torch"]).max() <= tol
    assert np.abs(calls["native"][20:] - ref["extend"][20:]).max() <= tol  # the full forward's
    assert np.abs(calls["native"][:20] - ref["extend"][:20]).max() > 100 * tol  # factors differ
    # a batched decode step where one slot crosses the boundary (24) and the other does not
    steps = {}
    for name in ("native", "torch"):
        if name == "native":
            b = NativeBackend(d, ModelConfig.load(d / CONFIG_FILE), threads=2, slots=2)
        else:
            b, _ = open_backend(d, backend="torch", device="cpu", precision="fp32", slots=2)
        b.prefill(0, PROMPT[:24])
        b.prefill(1, PROMPT[:5])
        steps[name] = np.concatenate([b.decode([1, 0], [7, 8]), b.decode([0, 1], [9, 10])])
    assert np.abs(steps["native"] - steps["torch"]).max() <= tol


def test_the_cli_names_the_option_that_sends_a_model_to_torch(family_dirs, monkeypatch, capsys):
    """An option the native engine lacks (here: as if sliding windows were one) sends an "auto"
    model to the torch backend, and `pocketlm generate -v` says which option did."""
    import pocketlm.engine.native_backend as native_backend
    from pocketlm.cli.main import main

    lacking = native_backend.NATIVE_FEATURES - {"sliding_window"}
    monkeypatch.setattr(native_backend, "NATIVE_FEATURES", lacking)
    d, _ = family_dirs["mistral-qwen3", "fp32"]
    args = ["--model", str(d), "--prompt", "the", "--max-new-tokens", "2", "--device", "cpu"]
    assert main(["-v", "generate", *args]) == 0
    err = capsys.readouterr().err
    assert "native engine does not implement the model option(s) sliding_window" in err
    assert "backend torch" in err


@pytest.mark.parametrize("family", ["mixtral", "qwen2_moe", "qwen3_moe"])
def test_native_mixture_of_experts_matches_transformers(family, synthetic_pipeline, tmp_path):
    """transformers' own Mixtral, Qwen2-MoE (shared expert, raw top-k) and Qwen3-MoE (q/k norms,
    renormalised top-k), weights moved to PocketLM names: the same logits and 16 greedy tokens."""
    pytest.importorskip("transformers")
    from tests.unit.model.test_moe import VOCAB, tiny_pair

    hf, ours = tiny_pair(family)
    d = save_model(tmp_path / family, ours, synthetic_pipeline["tokenizer"])
    backend = NativeBackend(d, ours.config, threads=2)
    ids = torch.randint(0, VOCAB, (24,), generator=torch.Generator().manual_seed(2)).tolist()
    with torch.no_grad():
        want = hf(torch.tensor([ids])).logits[0].numpy()
        hf_out = hf.generate(torch.tensor([ids[:10]]), max_new_tokens=16, do_sample=False,
                             min_new_tokens=16, pad_token_id=0)  # fmt: skip
    assert np.abs(backend.extend(0, ids) - want).max() <= 1e-5 * np.abs(want).max() + 1e-5
    backend.release(0)
    logits, tokens = backend.prefill(0, ids[:10]), []
    for _ in range(16):
        tokens.append(int(logits.argmax()))
        logits = backend.decode([0], [tokens[-1]])[0]
    assert tokens == hf_out[0, 10:].tolist()
