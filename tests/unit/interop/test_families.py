"""Family specs as data: dispatch by config.json, the defaults transformers assumes, both config
styles, and errors that name what PocketLM does not implement."""

from __future__ import annotations

import pytest
from hf_families import COMMON, FAMILIES, as_v4_config, build_hf_model

from pocketlm.common.errors import ArtifactError, UnsupportedModelError
from pocketlm.interop.families import FAMILIES as SPECS
from pocketlm.interop.families import find_family
from pocketlm.interop.families.hf_config import hf_config, model_config
from pocketlm.model.config import ModelConfig

transformers = pytest.importorskip("transformers")

_CONFIG_CLASSES = {
    "llama": "LlamaConfig", "mistral": "MistralConfig", "qwen2": "Qwen2Config",
    "qwen3": "Qwen3Config", "phi": "PhiConfig", "phi3": "Phi3Config", "gemma": "GemmaConfig",
    "gemma2": "Gemma2Config", "gemma3": "Gemma3TextConfig", "mixtral": "MixtralConfig",
    "qwen2_moe": "Qwen2MoeConfig", "qwen3_moe": "Qwen3MoeConfig", "bert": "BertConfig",
    "distilbert": "DistilBertConfig", "albert": "AlbertConfig", "mobilebert": "MobileBertConfig",
}  # fmt: skip
_ALWAYS_WRITTEN = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                   "num_attention_heads")  # fmt: skip
# ModelConfig field -> the decoders' key, for encoders that spell sizes their own way
_SIZES = {"vocab_size": "vocab_size", "dim": "hidden_size", "ffn_dim": "intermediate_size",
          "n_layers": "num_hidden_layers", "n_heads": "num_attention_heads"}  # fmt: skip


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_defaults_are_what_transformers_assumes(spec):
    """A config.json that leaves every optional key out reads as transformers' own defaults."""
    # 32 heads: a multiple of every family's default number of key/value heads
    dims = dict(vocab_size=512, hidden_size=256, intermediate_size=96, num_hidden_layers=2,
                num_attention_heads=32)  # fmt: skip
    always = _ALWAYS_WRITTEN
    if spec.encoder is not None:  # DistilBERT's dim, n_layers, ...
        dims = {spec.encoder.keys[ours]: dims[key] for ours, key in _SIZES.items()}
        always = tuple(dims)
    full = getattr(transformers, _CONFIG_CLASSES[spec.name])(**dims).to_dict()
    bare = {"model_type": full["model_type"], **{k: full[k] for k in always}}
    assert find_family(bare) is spec
    assert model_config(spec, bare) == model_config(spec, full)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_both_styles_read_alike_and_write_back(name):
    model = build_hf_model(name)
    v5 = model.config.to_dict()
    spec = find_family(v5)
    config = model_config(spec, v5)
    assert model_config(spec, as_v4_config(v5)) == config
    written = hf_config(spec, config, dtype="float32", token_ids=v5)
    assert model_config(spec, written) == config
    # transformers reads what PocketLM writes as the same model shape
    back = getattr(transformers, type(model.config).__name__)(**written)
    assert model_config(spec, back.to_dict()) == config


def test_dispatch_reads_architectures_then_model_type():
    assert find_family({"architectures": ["Qwen2ForCausalLM"], "model_type": "x"}).name == "qwen2"
    assert find_family({"model_type": "gemma3_text"}).name == "gemma3"
    assert find_family({"architectures": [], "model_type": "phi"}).name == "phi"


@pytest.mark.parametrize(
    "config, message",
    [
        ({"architectures": ["FalconForCausalLM"]}, "FalconForCausalLM is not a supported family"),
        ({"architectures": ["Gemma3ForConditionalGeneration"]}, "multimodal Gemma 3"),
        ({"model_type": "gpt2"}, "model_type 'gpt2'"),
        ({"architectures": "LlamaForCausalLM"}, "must be a list"),
    ],
)
def test_unsupported_architectures_are_named(config, message):
    with pytest.raises(UnsupportedModelError, match=message):
        find_family(config)


def _llama(**extra) -> dict:
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", **COMMON, **extra}


@pytest.mark.parametrize(
    "name, config, message",
    [
        ("llama", _llama(rope_scaling={"rope_type": "yarn", "factor": 4.0}), "rope_type = 'yarn'"),
        ("llama", _llama(rope_parameters={"rope_type": "dynamic", "factor": 2.0}), "'dynamic'"),
        ("llama", _llama(hidden_act="relu"), "hidden_act = 'relu'"),
        ("llama", _llama(quantization_config={"quant_method": "gptq"}), "pre-quantized .*gptq"),
        ("gemma2", {"model_type": "gemma2", **COMMON, "layer_types": ["chunked_attention"] * 2},
         "layer_types"),
        ("gemma3", {"model_type": "gemma3_text", **COMMON, "use_bidirectional_attention": True},
         "use_bidirectional_attention = True"),
        ("phi3", {"model_type": "phi3", **COMMON, "rope_scaling": {
            "type": "longrope", "short_factor": [1.0] * 8, "long_factor": [1.0] * 8,
            "attention_factor": 3.0}}, "attention_factor"),
        ("qwen2_moe", {"model_type": "qwen2_moe", **COMMON, "num_experts": 4,
                       "mlp_only_layers": [0]}, r"mlp_only_layers makes layers \[0\] dense"),
        ("qwen3_moe", {"model_type": "qwen3_moe", **COMMON, "num_experts": 4,
                       "decoder_sparse_step": 2}, r"decoder_sparse_step makes layers \[0\]"),
    ],
)  # fmt: skip
def test_unsupported_features_are_named(name, config, message):
    spec = find_family(config)
    assert spec.name == name
    with pytest.raises(UnsupportedModelError, match=message):
        model_config(spec, config)


def test_moe_fields_of_each_family():
    def read(config):
        return model_config(find_family(config), {**COMMON, **config})

    mixtral = read({"model_type": "mixtral", "num_local_experts": 8, "num_experts_per_tok": 2})
    assert (mixtral.n_experts, mixtral.n_experts_per_token, mixtral.expert_ffn_dim) == (8, 2, 96)
    assert mixtral.router == "softmax_topk"
    qwen2 = read({"model_type": "qwen2_moe", "num_experts": 60, "num_experts_per_tok": 4,
                  "moe_intermediate_size": 32, "shared_expert_intermediate_size": 64})  # fmt: skip
    assert (qwen2.n_experts, qwen2.expert_ffn_dim, qwen2.shared_expert_ffn_dim) == (60, 32, 64)
    assert qwen2.router == "softmax_topk_raw" and qwen2.qkv_bias  # norm_topk_prob false
    for key in ("num_experts", "num_local_experts"):  # released configs | 5.24's save_pretrained
        qwen3 = read({"model_type": "qwen3_moe", key: 16, "moe_intermediate_size": 32,
                      "norm_topk_prob": True})  # fmt: skip
        assert (qwen3.n_experts, qwen3.n_experts_per_token, qwen3.router) == (16, 8, "softmax_topk")
    assert read({"model_type": "qwen2_moe", "num_experts": 0}).n_experts == 0  # dense layers


def test_a_window_as_long_as_the_context_is_no_window():
    config = model_config(find_family({"model_type": "mistral"}), {"model_type": "mistral", **COMMON, "sliding_window": 64})  # fmt: skip
    assert config.sliding_window == 0


def test_export_names_what_a_family_cannot_express():
    from pocketlm.interop.families.llama import LLAMA

    gemma_like = ModelConfig(vocab_size=512, dim=64, n_layers=2, n_heads=4, n_kv_heads=2,
                             norm_offset=1.0, sandwich_norms=True)  # fmt: skip
    with pytest.raises(UnsupportedModelError, match="cannot express model.norm_offset=1.0"):
        hf_config(LLAMA, gemma_like, dtype="float32", token_ids={})
    with pytest.raises(ArtifactError):  # UnsupportedModelError is an ArtifactError
        hf_config(LLAMA, gemma_like, dtype="float32", token_ids={})
