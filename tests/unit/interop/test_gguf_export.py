"""GGUF export: metadata llama.cpp needs, tensors equal to the weights the model computes with
(after the RoPE row permutation), Q4_0 bit-exact from int4 models, and llama.cpp parity."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pocketlm.checkpoint.model_io import load_model, save_model
from pocketlm.model.config import ModelConfig
from pocketlm.model.transformer import build_model

gguf = pytest.importorskip("gguf")
from pocketlm.interop.gguf_export import export_gguf, rope_permute  # noqa: E402


@pytest.fixture(scope="module")
def model_dir(synthetic_pipeline, tmp_path_factory):
    config = ModelConfig(
        vocab_size=512,
        dim=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        ffn_dim=128,
        max_seq_len=64,
        init_std=0.25,
    )
    return save_model(
        tmp_path_factory.mktemp("g") / "m",
        build_model(config, seed=2),
        synthetic_pipeline["tokenizer"],
    )


def _tensors(path):
    reader = gguf.GGUFReader(str(path))
    out = {}
    for t in reader.tensors:
        data = gguf.quants.dequantize(t.data, t.tensor_type)
        out[t.name] = np.asarray(data, dtype=np.float32).reshape(
            tuple(int(x) for x in reversed(t.shape.tolist()))
        )
    return reader, out


def _field(reader, key):
    f = reader.fields[key]
    if f.types and f.types[0] == gguf.GGUFValueType.STRING and len(f.types) == 1:
        return bytes(f.parts[f.data[0]]).decode()
    if f.types and f.types[0] == gguf.GGUFValueType.ARRAY:
        return [
            bytes(f.parts[i]).decode()
            if f.types[-1] == gguf.GGUFValueType.STRING
            else f.parts[i][0]
            for i in f.data
        ]
    return f.parts[f.data[0]][0]


def test_f32_export_metadata_and_tensors(model_dir, tmp_path):
    out = export_gguf(model_dir, tmp_path / "m.gguf")
    reader, tensors = _tensors(out)
    assert _field(reader, "general.architecture") == "llama"
    assert (
        _field(reader, "tokenizer.ggml.model") == "gpt2"
        and _field(reader, "tokenizer.ggml.pre") == "gpt-2"
    )
    assert len(_field(reader, "tokenizer.ggml.tokens")) == 512
    assert "<|assistant|>" in _field(reader, "tokenizer.chat_template")
    assert _field(reader, "llama.attention.head_count_kv") == 2
    loaded = load_model(model_dir)
    sd = {k: v.float().numpy() for k, v in loaded.model.state_dict().items()}
    assert np.array_equal(tensors["token_embd.weight"], sd["model.embed_tokens.weight"])
    assert np.array_equal(
        tensors["blk.1.attn_q.weight"],
        rope_permute(sd["model.layers.1.self_attn.q_proj.weight"], 4),
    )
    assert np.array_equal(
        tensors["blk.0.attn_k.weight"],
        rope_permute(sd["model.layers.0.self_attn.k_proj.weight"], 2),
    )
    assert np.array_equal(
        tensors["blk.0.ffn_down.weight"], sd["model.layers.0.mlp.down_proj.weight"]
    )
    assert "output.weight" not in tensors  # tied: llama.cpp uses token_embd
    assert "FROM ./m.gguf" in (tmp_path / "m.Modelfile").read_text()
    meta = json.loads((tmp_path / "m.gguf.manifest.json").read_text())
    assert meta["kind"] == "gguf" and meta["parents"][0]["kind"] == "model"


def test_int4_model_exports_to_q4_0_bit_exact(model_dir, tmp_path):
    from pocketlm.compress.quantize import quantize_model_dir

    q4, _ = quantize_model_dir(model_dir, tmp_path / "q4", "int4")
    out = export_gguf(q4, tmp_path / "q4.gguf", out_type="q4_0")
    _, tensors = _tensors(out)
    loaded = load_model(q4)
    v = loaded.model.model.layers[0].mlp.up_proj.dequantized().numpy()
    assert np.array_equal(tensors["blk.0.ffn_up.weight"], v)
    q = loaded.model.model.layers[1].self_attn.q_proj.dequantized().numpy()
    assert np.array_equal(tensors["blk.1.attn_q.weight"], rope_permute(q, 4))


@pytest.mark.parametrize("kind", ["bf16", "q8_0", "f16"])
def test_other_types_are_close(model_dir, tmp_path, kind):
    out = export_gguf(model_dir, tmp_path / f"{kind}.gguf", out_type=kind)
    _, tensors = _tensors(out)
    ref = load_model(model_dir).model.model.layers[0].mlp.gate_proj.weight.detach().numpy()
    err = np.abs(tensors["blk.0.ffn_gate.weight"] - ref).max() / np.abs(ref).max()
    assert err < {"bf16": 0.01, "f16": 0.001, "q8_0": 0.02}[kind]


def test_two_exports_in_one_folder_keep_their_own_modelfiles(model_dir, tmp_path):
    export_gguf(model_dir, tmp_path / "a.gguf", out_type="f32")
    export_gguf(model_dir, tmp_path / "b.gguf", out_type="bf16")
    a, b = (tmp_path / "a.Modelfile").read_text(), (tmp_path / "b.Modelfile").read_text()
    assert "FROM ./a.gguf" in a and "ollama create a -f a.Modelfile" in a
    assert "FROM ./b.gguf" in b


def test_existing_file_needs_overwrite(model_dir, tmp_path):
    from pocketlm.common.errors import ArtifactError

    export_gguf(model_dir, tmp_path / "x.gguf")
    with pytest.raises(ArtifactError, match="already exists"):
        export_gguf(model_dir, tmp_path / "x.gguf")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["f32", "bf16"])
def test_llama_cpp_gives_the_same_greedy_tokens(model_dir, tmp_path, kind):
    llama_cpp = pytest.importorskip(
        "llama_cpp", reason="llama-cpp-python not installed (slow CI tier)"
    )
    out = export_gguf(model_dir, tmp_path / f"{kind}.gguf", out_type=kind)
    llm = llama_cpp.Llama(
        model_path=str(out), n_ctx=64, n_threads=2, verbose=False, logits_all=False
    )
    prompt = [1, 40, 41, 42, 43]
    loaded = load_model(model_dir)
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(12):
            ids.append(int(loaded.model(torch.tensor([ids]))[0, -1].argmax()))

    def last_logits():  # logits of the last evaluated token (llm.scores is only kept with logits_all)
        return np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(llm.n_vocab(),))

    llm.reset()
    got = list(prompt)
    llm.eval(prompt)
    for _ in range(12):
        token = int(np.argmax(last_logits()))
        got.append(token)
        llm.eval([token])
    assert got == ids
