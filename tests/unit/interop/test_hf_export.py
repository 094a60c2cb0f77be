"""`export hf`: transformers loads the directory offline and gives PocketLM's logits, ids and text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pocketlm.checkpoint.model_io import save_model
from pocketlm.common.errors import ArtifactError, ConfigError
from pocketlm.common.manifest import read_manifest
from pocketlm.interop.hf_export import export_hf, hf_state_dict
from pocketlm.model.config import ModelConfig
from pocketlm.model.transformer import CausalLM, build_model
from pocketlm.tokenizer.chat_template import render_chat
from pocketlm.tokenizer.tokenizer import Tokenizer

transformers = pytest.importorskip("transformers")

SHAPES = {
    # (a) tied embeddings, grouped-query attention
    "tied-gqa": dict(vocab_size=512, dim=32, n_layers=2, n_heads=4, n_kv_heads=2),
    # (b) untied embeddings, multi-head attention, non-default rope/eps/ffn and a padded vocabulary
    "untied-mha": dict(
        vocab_size=520,
        dim=32,
        n_layers=2,
        n_heads=4,
        n_kv_heads=4,
        ffn_dim=96,
        rope_theta=500000.0,
        norm_eps=1e-6,
        tie_embeddings=False,
    ),
    # (c) q/k/v biases and an explicit head_dim != dim / n_heads
    "qkv-bias": dict(
        vocab_size=512, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16, qkv_bias=True
    ),
}
MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi there, how are you?"},
    {"role": "assistant", "content": "Fine!"},
    {"role": "user", "content": "Tell me about 2024 and the café."},
]


def _model(shape: str, seed: int = 0) -> CausalLM:
    """A tiny random model with spread-out logits and non-trivial norms and biases."""
    config = ModelConfig(max_seq_len=128, init_std=0.3, **SHAPES[shape])
    model = build_model(config, seed=seed)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.copy_(1 + 0.2 * torch.randn(param.shape, generator=generator))
            elif name.endswith(".bias"):
                param.copy_(0.5 * torch.randn(param.shape, generator=generator))
    return model.eval()


@pytest.fixture(scope="module")
def models(synthetic_pipeline, tmp_path_factory) -> dict[str, tuple[CausalLM, Path, Path]]:
    """shape -> (PocketLM model, its model artifact, its fp32 HF export)."""
    base = tmp_path_factory.mktemp("hf_export")
    out = {}
    for shape in SHAPES:
        model = _model(shape)
        model_dir = save_model(base / f"model-{shape}", model, synthetic_pipeline["tokenizer"])
        out[shape] = (model, model_dir, export_hf(model_dir, base / f"hf-{shape}"))
    return out


def _hf_model(path: Path):
    model = transformers.AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True)
    return model.eval()


def _token_ids(batch: int = 3, length: int = 24, vocab: int = 512) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("shape", list(SHAPES))
def test_transformers_gives_the_same_logits(models, shape):
    model, _, out = models[shape]
    hf = _hf_model(out)
    assert type(hf).__name__ == "LlamaForCausalLM"
    ids = _token_ids()
    with torch.no_grad():
        ours, theirs = model(ids), hf(ids).logits
    assert theirs.dtype == torch.float32
    assert ours.shape == theirs.shape
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=0)
    assert ours.std() > 0.5  # spread-out logits: the comparison is not trivially satisfied


def test_config_weights_and_manifest(models):
    from safetensors import safe_open

    _, model_dir, out = models["tied-gqa"]
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["model_type"] == "llama"
    assert config["tie_word_embeddings"] is True and config["attention_bias"] is False
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (1, 2, 0)
    assert config["num_key_value_heads"] == 2 and config["head_dim"] == 8
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [2, 6]  # <|endoftext|> and the chat's <|end|>
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "pt"}
        names = set(f.keys())
    assert "lm_head.weight" not in names  # tied: omitted, as transformers does
    assert "model.layers.1.mlp.down_proj.weight" in names
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (out / name).read_bytes() == (model_dir / name).read_bytes()
    manifest = read_manifest(out, kind="hf_export")
    assert manifest["parents"][0]["path"] == str(model_dir.resolve())
    assert manifest["summary"]["architecture"] == "LlamaForCausalLM"
    card = (out / "README.md").read_text()
    assert "AutoModelForCausalLM.from_pretrained" in card and "<|assistant|>" in card

    untied = json.loads((models["untied-mha"][2] / "config.json").read_text())
    assert untied["tie_word_embeddings"] is False and untied["rope_theta"] == 500000.0
    with safe_open(str(models["untied-mha"][2] / "model.safetensors"), "pt") as f:
        assert "lm_head.weight" in set(f.keys())
    with safe_open(str(models["qkv-bias"][2] / "model.safetensors"), "pt") as f:
        assert "model.layers.0.self_attn.q_proj.bias" in set(f.keys())
        assert not f.get_tensor("model.layers.0.self_attn.o_proj.bias").any()


def test_tokenizer_and_chat_template_match(models):
    _, model_dir, out = models["tied-gqa"]
    ours = Tokenizer.load(model_dir)
    hf = transformers.AutoTokenizer.from_pretrained(str(out), local_files_only=True)
    for text in (
        "The little dog ran to the park.",
        "In 2024, 12345 cafés (cafe\u0301) said: 'hello'\n\n  \tworld!",  # not NFC-normalised
        "ends a turn <|end|> then <|user|>",
    ):
        assert hf(text)["input_ids"] == ours.encode(text, add_bos=True)
        assert hf(text, add_special_tokens=False)["input_ids"] == ours.encode(text)
        assert hf.decode(ours.encode(text)) == ours.decode(ours.encode(text))
    rendered = hf.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert rendered == render_chat(MESSAGES)
    assert hf.apply_chat_template(MESSAGES[:2], tokenize=False, add_generation_prompt=False) == (
        render_chat(MESSAGES[:2], add_generation_prompt=False)
    )
    # the model card's recipe: the template carries <|bos|>, so no second one is added
    ids = hf(rendered, add_special_tokens=False)["input_ids"]
    assert ids == ours.encode(render_chat(MESSAGES)) and ids.count(ours.bos_id) == 1


def _greedy(model: CausalLM, prompt: list[int], steps: int, stop: set[int]) -> list[int]:
    """PocketLM's greedy continuation by repeated full forwards (no cache)."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(steps):
            next_id = int(model(torch.tensor([ids]))[0, -1].argmax())
            ids.append(next_id)
            if next_id in stop:
                break
    return ids[len(prompt) :]


@pytest.mark.parametrize("shape", list(SHAPES))
def test_greedy_generate_matches(models, shape):
    model, model_dir, out = models[shape]
    tok = Tokenizer.load(model_dir)
    hf = _hf_model(out)
    prompt = tok.encode(render_chat(MESSAGES))
    with torch.no_grad():
        generated = hf.generate(
            torch.tensor([prompt]), max_new_tokens=16, do_sample=False, use_cache=True
        )
    theirs = generated[0, len(prompt) :].tolist()
    assert theirs == _greedy(model, prompt, 16, {tok.eos_id, tok.end_of_turn_id})
    assert len(set(theirs)) > 4  # a varied continuation: positions and the KV cache matter


def test_bf16_export_loads_close(models, tmp_path):
    from safetensors import safe_open

    model, model_dir, _ = models["untied-mha"]
    out = export_hf(model_dir, tmp_path / "hf-bf16", dtype="bf16")
    config = json.loads((out / "config.json").read_text())
    assert config["dtype"] == config["torch_dtype"] == "bfloat16"
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert f.get_tensor("lm_head.weight").dtype == torch.bfloat16
    hf = _hf_model(out)
    assert hf.dtype == torch.bfloat16
    ids = _token_ids(vocab=512)
    with torch.no_grad():
        ours, theirs = model(ids), hf(ids).logits.float()
    error = (theirs - ours).abs()
    assert error.max() < 0.1 * ours.abs().max() and error.mean() < 0.05 * ours.abs().mean()


def test_refuses_what_transformers_cannot_represent(synthetic_pipeline, tmp_path):
    # transformers' LlamaConfig insists on hidden_size % num_attention_heads == 0, even with head_dim
    odd = build_model(
        ModelConfig(vocab_size=512, dim=30, n_layers=1, n_heads=4, n_kv_heads=2, head_dim=8)
    )
    odd_dir = save_model(tmp_path / "odd", odd, synthetic_pipeline["tokenizer"])
    with pytest.raises(ArtifactError, match="multiple of num_attention_heads"):
        export_hf(odd_dir, tmp_path / "odd-hf")
    assert not (tmp_path / "odd-hf").exists()

    model = _model("tied-gqa")
    state = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}
    with pytest.raises(ArtifactError, match="no LlamaForCausalLM equivalent"):
        hf_state_dict(
            {**state, "model.layers.0.self_attn.q_proj.lora_A": torch.zeros(2, 32)}, model.config
        )
    with pytest.raises(ArtifactError, match="lacks tensor"):
        hf_state_dict({"model.norm.weight": torch.ones(32)}, model.config)
    with pytest.raises(ArtifactError, match="not floating point"):
        hf_state_dict(
            {**state, "model.norm.weight": torch.ones(32, dtype=torch.int8)}, model.config
        )
    big = {**state, "model.norm.weight": torch.full((32,), 1e6)}
    with pytest.raises(ArtifactError, match="overflows fp16"):
        hf_state_dict(big, model.config, "fp16")
    assert hf_state_dict(big, model.config, "bf16")["model.norm.weight"].dtype == torch.bfloat16

    with pytest.raises(ArtifactError, match="not a model"):
        export_hf(synthetic_pipeline["tokenizer"], tmp_path / "nope")
    with pytest.raises(ConfigError, match="dtype must be one of"):
        export_hf(odd_dir, tmp_path / "nope", dtype="int4")


def test_existing_output_needs_overwrite(models):
    _, model_dir, out = models["tied-gqa"]
    with pytest.raises(ArtifactError, match="--overwrite"):
        export_hf(model_dir, out)
    assert export_hf(model_dir, out, overwrite=True) == out
    assert (out / "config.json").is_file()
