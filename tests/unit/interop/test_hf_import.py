"""Every dense family, imported from a tiny random model `transformers` built and saved: the same
logits as transformers (both config styles), the same 32 greedy tokens decoding with the KV cache,
`export hf` back to the family's own format (tensor for tensor), and int8 quantization."""

from __future__ import annotations

import json

import pytest
import torch
from hf_families import FAMILIES, STYLES, save_family

from pocketlm.checkpoint.model_io import load_model
from pocketlm.common.hashing import sha256_file
from pocketlm.compress.quantize import quantize_model_dir
from pocketlm.engine.load import open_backend
from pocketlm.engine.native_backend import NATIVE_FEATURES
from pocketlm.interop.hf_export import export_hf
from pocketlm.interop.hf_import import import_hf
from pocketlm.model.config import ModelConfig

transformers = pytest.importorskip("transformers")
from safetensors import safe_open  # noqa: E402

# What each family must turn on (so a test cannot pass with the feature silently off).
FEATURES = {
    "llama3": {"rope_scaling", "qkv_bias", "o_bias", "mlp_bias"},
    "smollm2": set(),
    "qwen2": {"qkv_bias", "sliding_window", "layer_types"},
    "qwen3": {"qk_norm"},
    "mistral": {"sliding_window"},
    "phi3": {"rotary_dim", "rope_scaling", "sliding_window"},
    "phi2": {"norm_kind", "parallel_block", "lm_head_bias", "rotary_dim", "mlp_kind"},
    "gemma": {"norm_offset", "embed_scale", "activation"},
    "gemma2": {"sandwich_norms", "attn_softcap", "final_softcap", "attn_scale", "layer_types"},
    "gemma3": {"qk_norm", "rope_local_theta", "rope_scaling", "layer_types", "final_softcap"},
    "mixtral": {"n_experts", "n_experts_per_token", "sliding_window"},
    "qwen2_moe": {"n_experts", "shared_expert_ffn_dim", "router", "qkv_bias"},
    "qwen3_moe": {"n_experts", "qk_norm"},
}


@pytest.fixture(scope="module")
def built(synthetic_pipeline, tmp_path_factory):
    """(family, style) -> (HF folder, imported artifact), each made once per module."""
    root = tmp_path_factory.mktemp("families")
    folders: dict = {}
    imported: dict = {}

    def get(family: str, style: str = "v5"):
        if family not in folders:
            folders[family] = save_family(family, root, synthetic_pipeline["tokenizer"])
        if (family, style) not in imported:
            out = root / f"pocketlm-{family}-{style}"
            imported[family, style] = import_hf(folders[family][style], out)
        return folders[family][style], imported[family, style]

    return get


def _hf(folder):
    return transformers.AutoModelForCausalLM.from_pretrained(str(folder)).eval()


def _ids(batch: int, length: int, seed: int = 5) -> torch.Tensor:
    return torch.randint(3, 512, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("family", list(FAMILIES))
def test_logits_match_transformers(built, family, style):
    folder, artifact = built(family, style)
    config = ModelConfig.load(artifact / "model_config.json")
    assert FEATURES[family] <= set(config.family_features())
    ids = _ids(2, 40)  # longer than every window (8, 12) and original context (16)
    with torch.no_grad():
        theirs = _hf(folder)(ids).logits
        ours = load_model(artifact).model(ids)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    assert theirs.std() > 0.3


@pytest.mark.parametrize("family", list(FAMILIES))
def test_both_config_styles_import_the_same_model(built, family):
    (_, v5), (_, v4) = built(family, "v5"), built(family, "v4")
    assert (v5 / "model_config.json").read_text() == (v4 / "model_config.json").read_text()
    assert sha256_file(v5 / "model.safetensors") == sha256_file(v4 / "model.safetensors")


def _greedy_torch(backend, prompt: list[int], steps: int) -> list[int]:
    logits = backend.prefill(0, prompt)
    out = []
    for _ in range(steps):
        out.append(int(logits.argmax()))
        logits = backend.decode([0], [out[-1]])[0]
    return out


GREEDY = [(f, 20) for f in FAMILIES] + [
    ("phi3", 10)
]  # phi3 from 10: decoding crosses longrope's 16


@pytest.mark.parametrize("backend", ["torch", "native"])
@pytest.mark.parametrize("family,prompt_len", GREEDY)
def test_greedy_decoding_with_the_cache_matches_transformers(built, family, prompt_len, backend):
    folder, artifact = built(family)
    config = ModelConfig.load(artifact / "model_config.json")
    if backend == "native":
        missing = set(config.family_features()) - NATIVE_FEATURES
        if missing:
            pytest.skip(f"the native engine does not implement {sorted(missing)} yet")
    prompt = _ids(1, prompt_len, seed=11)[0].tolist()
    hf = _hf(folder)
    hf.generation_config.eos_token_id = None  # 32 tokens, whatever they are
    with torch.no_grad():
        generated = hf.generate(
            torch.tensor([prompt]), max_new_tokens=32, do_sample=False, use_cache=True,
            pad_token_id=0,
        )  # fmt: skip
    theirs = generated[0, len(prompt) :].tolist()
    opened, _ = open_backend(artifact, backend=backend, device="cpu", precision="fp32")
    assert _greedy_torch(opened, prompt, 32) == theirs
    assert len(set(theirs)) > 4  # a varied continuation: positions and the cache matter


@pytest.mark.parametrize("family", list(FAMILIES))
def test_export_hf_writes_the_family_back_tensor_for_tensor(built, family, tmp_path):
    folder, artifact = built(family)
    out = export_hf(artifact, tmp_path / "hf")
    source_config = json.loads((folder / "config.json").read_text())
    exported = json.loads((out / "config.json").read_text())
    assert exported["architectures"] == source_config["architectures"]
    assert exported["model_type"] == source_config["model_type"]
    with safe_open(str(folder / "model.safetensors"), "pt") as a, safe_open(str(out / "model.safetensors"), "pt") as b:  # fmt: skip
        names = set(a.keys())
        assert names == set(b.keys())  # fused (Phi-3) and renamed (Phi-2, Gemma 2) alike
        for name in names:
            assert torch.equal(a.get_tensor(name), b.get_tensor(name)), name
    ids = _ids(2, 30)
    with torch.no_grad():
        torch.testing.assert_close(_hf(out)(ids).logits, _hf(folder)(ids).logits, atol=0, rtol=0)
    again = import_hf(out, tmp_path / "again")
    assert (again / "model_config.json").read_text() == (artifact / "model_config.json").read_text()


@pytest.mark.parametrize("family", ["llama3", "phi3", "phi2", "gemma2", "qwen2_moe"])
def test_int8_quantization_of_an_imported_model(built, family, tmp_path):
    folder, artifact = built(family)
    quantized, _ = quantize_model_dir(artifact, tmp_path / "q8", "int8")
    ids = _ids(1, 24)
    with torch.no_grad():
        want = load_model(artifact).model(ids)
        got = load_model(quantized).model(ids)
    assert torch.isfinite(got).all()
    assert (got - want).abs().mean() < 0.1 * want.abs().mean()
    assert (got.argmax(-1) == want.argmax(-1)).float().mean() > 0.8
    # and it still goes back to its own family
    hf_dir = export_hf(quantized, tmp_path / "hf")
    assert (
        json.loads((hf_dir / "config.json").read_text())["architectures"]
        == json.loads((folder / "config.json").read_text())["architectures"]
    )
