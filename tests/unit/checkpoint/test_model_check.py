"""check_model_dir and weights_spec: what both loaders accept, and how they refuse the rest
(the corruptions the hardening issue names, through the native, torch and auto loaders)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import load_file, save_file

from pocketlm.checkpoint.model_check import check_model_dir
from pocketlm.checkpoint.model_io import save_model, weights_state_dict
from pocketlm.checkpoint.weights_spec import expected_tensors, read_quantization
from pocketlm.common.errors import ArtifactError
from pocketlm.engine.load import open_backend
from pocketlm.model.config import ModelConfig
from pocketlm.model.quantized import quantize_modules
from pocketlm.model.transformer import build_model
from tests.unit.engine.variant_files import reseal

TORCH_DTYPES = {
    torch.float32: "F32",
    torch.bfloat16: "BF16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.float16: "F16",
}


@settings(max_examples=25, deadline=None)
@given(
    dim=st.sampled_from([32, 64]),
    layers=st.integers(1, 2),
    heads=st.sampled_from([(2, 1), (2, 2), (4, 2)]),
    head_dim=st.sampled_from([0, 16, 32]),
    ffn=st.sampled_from([0, 32, 96]),
    tie=st.booleans(),
    bias=st.booleans(),
    scheme=st.sampled_from(["none", "bf16", "int8", "int4"]),
)
def test_the_spec_is_exactly_what_the_model_saves(
    dim, layers, heads, head_dim, ffn, tie, bias, scheme
):
    """expected_tensors names every tensor save_model writes, with its shape and dtype."""
    config = ModelConfig(
        vocab_size=96, dim=dim, n_layers=layers, n_heads=heads[0], n_kv_heads=heads[1],
        head_dim=head_dim, ffn_dim=ffn, tie_embeddings=tie, qkv_bias=bias, max_seq_len=16,
    )  # fmt: skip
    model = build_model(config, seed=0)
    if scheme == "bf16":
        model = model.to(torch.bfloat16)
    elif scheme != "none":
        quantize_modules(model, scheme, 32)
    state = weights_state_dict(model)
    spec = expected_tensors(config, {"scheme": scheme, "group_size": 32})
    assert set(state) == set(spec)
    for name, tensor in state.items():
        assert tuple(tensor.shape) == spec[name].shape, name
        assert TORCH_DTYPES[tensor.dtype] in spec[name].dtypes, name


@pytest.fixture(scope="module")
def models(synthetic_pipeline, tmp_path_factory) -> dict[str, Path]:
    from pocketlm.compress.quantize import quantize_model_dir

    root = tmp_path_factory.mktemp("check")
    config = ModelConfig(
        vocab_size=512, dim=64, n_layers=1, n_heads=4, n_kv_heads=2, ffn_dim=64, max_seq_len=32
    )
    out = {
        "fp32": save_model(
            root / "fp32", build_model(config, seed=3), synthetic_pipeline["tokenizer"]
        )
    }
    for scheme in ("int8", "int4"):
        out[scheme], _ = quantize_model_dir(out["fp32"], root / scheme, scheme)
    return out


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _refused_by_every_loader(model: Path, *needles: str) -> None:
    """native, torch and auto all raise an ArtifactError naming the file and the needles."""
    pytest.importorskip("pocketlm.engine._native", reason="native extension not built")
    for backend in ("native", "torch", "auto"):
        with pytest.raises(ArtifactError) as exc:
            open_backend(
                model,
                backend=backend,
                device="cpu",
                precision="fp32" if backend == "torch" else "auto",
            )
        for needle in (str(model), *needles):
            assert needle in str(exc.value), (backend, str(exc.value))


def test_a_missing_final_norm_is_refused_not_a_crash(models, tmp_path):
    """The issue's first case: the tensor gone from a well-formed file, the manifest resealed."""
    d = _copy(models["fp32"], tmp_path / "m")
    tensors = load_file(str(d / "model.safetensors"))
    del tensors["model.norm.weight"]
    save_file(tensors, str(d / "model.safetensors"))
    reseal(d)
    _refused_by_every_loader(d, "model.safetensors", "'model.norm.weight' is missing")


@pytest.mark.parametrize("scheme", ["int8", "int4"])
@pytest.mark.parametrize(
    ("vocab", "needles"),
    [
        (513, ["model.safetensors", "model.embed_tokens.qweight", "[513, "]),
        (100_000, ["model.safetensors", "model.embed_tokens.qweight", "[100000, "]),
        (511, ["tokenizer has 512 tokens but the model's vocabulary is 511"]),
    ],
)
def test_a_config_vocabulary_other_than_the_tensors_is_refused(
    models, tmp_path, scheme, vocab, needles
):
    """The issue's second case (larger: read past the tensor; smaller: silently wrong)."""
    d = _copy(models[scheme], tmp_path / "m")
    config = json.loads((d / "model_config.json").read_text())
    config["vocab_size"] = vocab
    (d / "model_config.json").write_text(json.dumps(config))
    reseal(d)
    _refused_by_every_loader(d, *needles)


def test_an_edit_under_the_manifest_is_refused(models, tmp_path):
    d = _copy(models["int8"], tmp_path / "m")
    (d / "quantization.json").write_text('{"scheme": "int8", "group_size": 64}')
    _refused_by_every_loader(d, "quantization.json", "manifest")


def test_a_file_the_manifest_does_not_list_is_refused(models, tmp_path):
    d = _copy(models["fp32"], tmp_path / "m")
    (d / "quantization.json").write_text('{"scheme": "none"}')
    _refused_by_every_loader(d, "quantization.json", "not listed")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("dim", "64", "model.dim must be an int"),
        ("n_layers", True, "model.n_layers must be an int"),
        ("rope_theta", -1.0, "model.rope_theta must be a finite number > 0"),
        ("max_seq_len", 2**40, "model.max_seq_len must be <="),
        ("tie_embeddings", 1, "model.tie_embeddings must be a bool"),
        ("n_kv_heads", 3, "must be a multiple of model.n_kv_heads"),
    ],
)
def test_bad_config_values_name_the_file_and_field(models, tmp_path, field, value, message):
    d = _copy(models["fp32"], tmp_path / "m")
    config = json.loads((d / "model_config.json").read_text())
    config[field] = value
    (d / "model_config.json").write_text(json.dumps(config))
    reseal(d)
    _refused_by_every_loader(d, "model_config.json", message)


@pytest.mark.parametrize(
    ("quant", "message"),
    [
        ("[]", "not a JSON object"),
        ('{"scheme": "int3"}', "scheme 'int3' is not one of"),
        ('{"scheme": "int4", "group_size": 48}', "group_size 48 is not a positive multiple of 32"),
        ('{"scheme": "int4", "bits": 4}', "unknown keys ['bits']"),
        ('{"scheme": "int4"', "corrupt"),
    ],
)
def test_bad_quantization_metadata_is_named(tmp_path, quant, message):
    (tmp_path / "quantization.json").write_text(quant)
    with pytest.raises(ArtifactError, match=message.replace("[", r"\[")) as exc:
        read_quantization(tmp_path)
    assert str(tmp_path / "quantization.json") in str(exc.value)


def test_quantization_that_disagrees_with_the_tensors_is_refused(models, tmp_path):
    d = _copy(models["int4"], tmp_path / "m")
    (d / "quantization.json").write_text('{"scheme": "int4", "group_size": 64}')
    reseal(d)
    _refused_by_every_loader(d, "model.embed_tokens.scales", "[512, 1]")
    (d / "quantization.json").write_text('{"scheme": "int8", "group_size": 32}')
    reseal(d)
    _refused_by_every_loader(d, "model.embed_tokens.qweight", "scheme 'int8'")


def test_a_tokenizer_with_ids_past_the_vocabulary_is_refused(models, tmp_path):
    d = _copy(models["fp32"], tmp_path / "m")
    tok = json.loads((d / "tokenizer.json").read_text())
    first = next(iter(tok["model"]["vocab"]))
    tok["model"]["vocab"][first] = 2**31 - 1  # serializing it would allocate 8 GB (and abort)
    (d / "tokenizer.json").write_text(json.dumps(tok))
    reseal(d)
    _refused_by_every_loader(d, "tokenizer.json", "without gaps")


def test_a_tokenizer_the_library_panics_on_is_refused(models, tmp_path):
    d = _copy(models["fp32"], tmp_path / "m")
    tok = json.loads((d / "tokenizer.json").read_text())
    tok["normalizer"] = {"type": "Precompiled", "precompiled_charsmap": "AAAA"}
    (d / "tokenizer.json").write_text(json.dumps(tok))
    reseal(d)
    _refused_by_every_loader(d, "tokenizer.json", "cannot load tokenizer")


def test_check_model_dir_returns_what_it_checked(models):
    checked = check_model_dir(models["int4"])
    assert checked.quant == {**checked.quant, "scheme": "int4", "group_size": 32}
    assert checked.config.vocab_size == 512 and checked.tokenizer.vocab_size == 512
    assert checked.manifest["kind"] == "model"
