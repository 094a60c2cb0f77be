"""GGUF export of every imported family, read back with the `gguf` package and checked against
what llama.cpp expects: its architecture, the `{arch}.*` keys its loader reads, tensor names from
gguf-py's own per-architecture lists, the shapes llama.cpp's loader asks for, and the values with
its conventions folded in (Gemma's 1 + w, Llama's interleaved q/k rows, fused and stacked tensors).
llama.cpp itself runs them in test_gguf_llama_cpp.py (slow tier)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from gguf_files import GGUF_READY, read_gguf, save_with_tokenizer
from hf_families import COMMON, FAMILIES

from pocketlm.checkpoint.model_io import load_model
from pocketlm.common.errors import ArtifactError, UnsupportedModelError
from pocketlm.interop.families import family_named
from pocketlm.interop.families.hf_config import model_config
from pocketlm.interop.gguf_metadata import llama_cpp_notes
from pocketlm.interop.hf_import import import_hf
from pocketlm.model.config import ModelConfig
from tests.unit.tokenizer.hf_folders import write_folder

gguf = pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")
from pocketlm.interop.gguf_export import export_gguf, rope_permute  # noqa: E402

ARCH = {
    "llama3": "llama", "smollm2": "llama", "mistral": "llama", "mixtral": "llama",
    "qwen2": "qwen2", "qwen3": "qwen3", "phi2": "phi2", "phi3": "phi3", "gemma": "gemma",
    "gemma2": "gemma2", "gemma3": "gemma3", "qwen2_moe": "qwen2moe", "qwen3_moe": "qwen3moe",
}  # fmt: skip


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """family -> (artifact, .gguf), each built, imported and exported (f32) once per module;
    the tokenizer is the Qwen2.5-style test tokenizer (byte-level, 425 tokens)."""
    root = tmp_path_factory.mktemp("gguf")
    tokenizer = write_folder("qwen2_5", root / "tokenizer")
    done: dict = {}

    def get(family: str):
        if family not in done:
            src = save_with_tokenizer(family, root / family, tokenizer)
            artifact = import_hf(src, root / f"pocketlm-{family}")
            done[family] = artifact, export_gguf(artifact, root / f"{family}.gguf")
        return done[family]

    return get


def _allowed_names(arch: str, n_layers: int) -> set[str]:
    """Every tensor name gguf-py's constants list for llama.cpp's architecture `arch`."""
    model_arch = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}[arch]
    return {
        gguf.TENSOR_NAMES[t].format(bid=i)
        for t in gguf.MODEL_TENSORS[model_arch]
        for i in range(n_layers)
    }


def _expected_shapes(arch: str, c: ModelConfig) -> dict[str, tuple[int, ...]]:
    """name -> numpy shape of every tensor llama.cpp's loader (src/models/<arch>.cpp) creates."""
    d, q, kv, hd, f, v = c.dim, c.q_dim, c.kv_dim, c.resolved_head_dim, c.resolved_ffn_dim, c.vocab_size  # fmt: skip
    out: dict[str, tuple[int, ...]] = {"token_embd.weight": (v, d), "output_norm.weight": (d,)}
    if arch == "phi2":
        out.update({"output_norm.bias": (d,), "output.weight": (v, d), "output.bias": (v,)})
    elif arch == "qwen2moe" or (not c.tie_embeddings and arch not in ("gemma", "gemma2")):
        out["output.weight"] = (v, d)
    for i in range(c.n_layers):
        b = f"blk.{i}."
        out[b + "attn_norm.weight"] = (d,)
        if arch == "phi3":
            out[b + "attn_qkv.weight"] = (q + 2 * kv, d)
        else:
            out.update({b + "attn_q.weight": (q, d), b + "attn_k.weight": (kv, d),
                        b + "attn_v.weight": (kv, d)})  # fmt: skip
        if c.qkv_bias:
            out.update({b + "attn_q.bias": (q,), b + "attn_k.bias": (kv,), b + "attn_v.bias": (kv,)})  # fmt: skip
        out[b + "attn_output.weight"] = (d, q)
        if c.qk_norm:
            out.update({b + "attn_q_norm.weight": (hd,), b + "attn_k_norm.weight": (hd,)})
        if arch in ("gemma2", "gemma3"):
            out.update({b + "post_attention_norm.weight": (d,), b + "post_ffw_norm.weight": (d,)})
        if arch == "phi2":  # one LayerNorm, biases everywhere, plain MLP
            out.update({b + "attn_norm.bias": (d,), b + "attn_output.bias": (d,),
                        b + "ffn_up.weight": (f, d), b + "ffn_up.bias": (f,),
                        b + "ffn_down.weight": (d, f), b + "ffn_down.bias": (d,)})  # fmt: skip
            continue
        out[b + "ffn_norm.weight"] = (d,)
        if c.n_experts:
            e, w = c.n_experts, c.expert_ffn_dim
            out.update({b + "ffn_gate_inp.weight": (e, d), b + "ffn_gate_exps.weight": (e, w, d),
                        b + "ffn_up_exps.weight": (e, w, d), b + "ffn_down_exps.weight": (e, d, w)})  # fmt: skip
            if c.shared_expert_ffn_dim:
                s = c.shared_expert_ffn_dim
                out.update({b + "ffn_gate_inp_shexp.weight": (d,), b + "ffn_gate_shexp.weight": (s, d),
                            b + "ffn_up_shexp.weight": (s, d), b + "ffn_down_shexp.weight": (d, s)})  # fmt: skip
        elif arch == "phi3":
            out.update({b + "ffn_up.weight": (2 * f, d), b + "ffn_down.weight": (d, f)})
        else:
            out.update({b + "ffn_gate.weight": (f, d), b + "ffn_up.weight": (f, d),
                        b + "ffn_down.weight": (d, f)})  # fmt: skip
        if c.o_bias:  # llama's optional biases
            out[b + "attn_output.bias"] = (d,)
        if c.mlp_bias:
            out.update({b + "ffn_gate.bias": (f,), b + "ffn_up.bias": (f,), b + "ffn_down.bias": (d,)})  # fmt: skip
    if c.rope_scaling == "llama3":
        out["rope_freqs.weight"] = (c.resolved_rotary_dim // 2,)
    if c.rope_scaling == "longrope":
        half = c.resolved_rotary_dim // 2
        out.update({"rope_factors_long.weight": (half,), "rope_factors_short.weight": (half,)})
    return out


@pytest.mark.parametrize("family", list(FAMILIES))
def test_each_family_is_written_as_llama_cpp_expects(exported, family):
    artifact, path = exported(family)
    fields, tensors = read_gguf(path)
    c = ModelConfig.load(artifact / "model_config.json")
    arch = ARCH[family]
    assert fields["general.architecture"] == arch
    assert {n.rsplit(".", 1)[0] for n in tensors} <= _allowed_names(arch, c.n_layers)
    assert {n: t[1] for n, t in tensors.items()} == _expected_shapes(arch, c)
    for key, want in {
        "context_length": c.max_seq_len, "embedding_length": c.dim, "block_count": c.n_layers,
        "attention.head_count": c.n_heads, "attention.head_count_kv": c.n_kv_heads,
        "attention.key_length": c.resolved_head_dim, "attention.value_length": c.resolved_head_dim,
        "rope.dimension_count": c.resolved_rotary_dim, "vocab_size": c.vocab_size,
    }.items():  # fmt: skip
        assert fields[f"{arch}.{key}"] == want, key
    assert math.isclose(fields[f"{arch}.rope.freq_base"], c.rope_theta, rel_tol=1e-6)
    eps = "layer_norm_epsilon" if arch == "phi2" else "layer_norm_rms_epsilon"
    assert math.isclose(fields[f"{arch}.attention.{eps}"], c.norm_eps, rel_tol=1e-6)
    assert tensors["blk.0.attn_norm.weight"][0] == "F32"
    state = {k: v.float().numpy() for k, v in load_model(artifact).model.state_dict().items()}
    manifest = json.loads(path.with_name(path.name + ".manifest.json").read_text())
    assert manifest["architecture"] == arch and manifest["family"] == family_named_for(family)
    CHECKS.get(family, lambda *a: None)(fields, tensors, state, c, manifest)


def family_named_for(family: str) -> str:
    return {"llama3": "llama", "smollm2": "llama", "phi2": "phi"}.get(family, family)


def _t(tensors, name):
    return tensors[name][2]


def _llama3(fields, tensors, state, c, manifest):
    """q/k rows (and their biases) interleaved; Llama 3's scaling as rope_freqs divisors equal to
    transformers' own frequencies' ratio; MLP and o_proj biases kept."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    p = "model.layers.1.self_attn."
    assert np.array_equal(_t(tensors, "blk.1.attn_q.weight"), rope_permute(state[p + "q_proj.weight"], 4))  # fmt: skip
    assert np.array_equal(_t(tensors, "blk.1.attn_k.bias"), rope_permute(state[p + "k_proj.bias"], 2))  # fmt: skip
    assert np.array_equal(_t(tensors, "blk.0.attn_output.bias"), state["model.layers.0.self_attn.o_proj.bias"])  # fmt: skip
    assert np.array_equal(_t(tensors, "blk.0.ffn_gate.bias"), state["model.layers.0.mlp.gate_proj.bias"])  # fmt: skip
    hf = transformers.LlamaConfig(**{**COMMON, **FAMILIES["llama3"][2]})
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](hf, "cpu")
    default = 1.0 / (500000.0 ** (np.arange(0, 16, 2) / 16))
    np.testing.assert_allclose(_t(tensors, "rope_freqs.weight"), default / scaled.double().numpy(), rtol=1e-6)  # fmt: skip
    assert "rope.scaling.type" not in " ".join(fields)  # the tensor carries it


def _phi3(fields, tensors, state, c, manifest):
    """Fused attn_qkv and gate+up ffn_up, longrope keys and factor tensors, the window noted."""
    p = "model.layers.0."
    qkv = np.concatenate([state[p + f"self_attn.{m}_proj.weight"] for m in "qkv"])
    assert np.array_equal(_t(tensors, "blk.0.attn_qkv.weight"), qkv)
    gate_up = np.concatenate([state[p + "mlp.gate_proj.weight"], state[p + "mlp.up_proj.weight"]])
    assert np.array_equal(_t(tensors, "blk.0.ffn_up.weight"), gate_up)
    assert fields["phi3.rope.scaling.type"] == "longrope"
    assert fields["phi3.rope.scaling.original_context_length"] == 16
    assert math.isclose(fields["phi3.rope.scaling.attn_factor"], math.sqrt(1 + math.log(4) / math.log(16)), rel_tol=1e-6)  # fmt: skip
    assert _t(tensors, "rope_factors_short.weight").tolist() == [1.0, 1.25, 1.5, 2.0]
    assert _t(tensors, "rope_factors_long.weight").tolist() == [2.0, 2.5, 3.0, 4.0]
    assert fields["phi3.attention.sliding_window"] == 12
    notes = " ".join(manifest["llama_cpp_notes"])
    assert "no sliding window" in notes and "long factors" in notes
    assert "phi3" not in fields["general.name"].lower()  # its vocabulary lacks Phi-3's tokens


def _phi2(fields, tensors, state, c, manifest):
    """LayerNorm weights and biases as they are, the head's bias."""
    assert np.array_equal(_t(tensors, "blk.1.attn_norm.bias"), state["model.layers.1.input_layernorm.bias"])  # fmt: skip
    assert np.array_equal(_t(tensors, "output.bias"), state["lm_head.bias"])
    assert np.array_equal(_t(tensors, "blk.0.ffn_up.weight"), state["model.layers.0.mlp.up_proj.weight"])  # fmt: skip


def _gemma_norms(fields, tensors, state, c, manifest):
    """Every RMSNorm weight stored as 1 + w (llama.cpp's Gemma graphs multiply by the weight)."""
    pairs = {"output_norm": "model.norm", "blk.1.attn_norm": "model.layers.1.input_layernorm",
             "blk.1.ffn_norm": "model.layers.1.post_attention_layernorm"}  # fmt: skip
    if c.sandwich_norms:
        pairs["blk.0.post_attention_norm"] = "model.layers.0.attn_output_norm"
        pairs["blk.0.post_ffw_norm"] = "model.layers.0.ffn_output_norm"
    if c.qk_norm:
        pairs["blk.0.attn_q_norm"] = "model.layers.0.self_attn.q_norm"
    for theirs, ours in pairs.items():
        np.testing.assert_allclose(_t(tensors, theirs + ".weight"), state[ours + ".weight"] + 1, rtol=0, atol=1e-7)  # fmt: skip
    arch = fields["general.architecture"]
    if arch == "gemma2":
        assert fields["gemma2.attn_logit_softcapping"] == 5.0
        assert fields["gemma2.final_logit_softcapping"] == 10.0
    if arch in ("gemma2", "gemma3"):
        assert fields[f"{arch}.attention.sliding_window"] == 8
        assert fields[f"{arch}.attention.sliding_window_pattern"] == [True, False]
    if arch == "gemma3":
        assert fields["gemma3.rope.freq_base_swa"] == 10000.0
        assert fields["gemma3.rope.scaling.type"] == "linear"
        assert fields["gemma3.rope.scaling.factor"] == 2.0
        assert fields["gemma3.final_logit_softcapping"] == 10.0


def _experts(fields, tensors, state, c, manifest):
    """Each layer's experts stacked in expert order, the router as ffn_gate_inp, the counts."""
    arch = fields["general.architecture"]
    p = "model.layers.1.mlp."
    for ours, theirs in (("gate_proj", "ffn_gate_exps"), ("up_proj", "ffn_up_exps"), ("down_proj", "ffn_down_exps")):  # fmt: skip
        stacked = np.stack([state[f"{p}experts.{e}.{ours}.weight"] for e in range(4)])
        assert np.array_equal(_t(tensors, f"blk.1.{theirs}.weight"), stacked)
    assert np.array_equal(_t(tensors, "blk.1.ffn_gate_inp.weight"), state[p + "gate.weight"])
    assert (fields[f"{arch}.expert_count"], fields[f"{arch}.expert_used_count"]) == (4, 2)
    if arch == "llama":  # Mixtral: llama's experts are feed_forward_length wide
        assert fields["llama.feed_forward_length"] == c.expert_ffn_dim
    else:
        assert fields[f"{arch}.expert_feed_forward_length"] == 32
    if arch == "qwen2moe":
        assert fields["qwen2moe.expert_shared_feed_forward_length"] == 64
        assert np.array_equal(_t(tensors, "blk.1.ffn_gate_inp_shexp.weight"), state[p + "shared_expert_gate.weight"][0])  # fmt: skip
        # tied, but qwen2moe reads an output tensor: the embeddings again
        assert np.array_equal(_t(tensors, "output.weight"), _t(tensors, "token_embd.weight"))


def _window_noted(fields, tensors, state, c, manifest):
    assert "matches this model only on sequences of at most" in " ".join(manifest["llama_cpp_notes"])  # fmt: skip


CHECKS = {
    "llama3": _llama3, "phi3": _phi3, "phi2": _phi2, "gemma": _gemma_norms,
    "gemma2": _gemma_norms, "gemma3": _gemma_norms, "mixtral": _experts, "qwen2_moe": _experts,
    "qwen3_moe": _experts, "mistral": _window_noted, "qwen2": _window_noted,
}  # fmt: skip


def _config(family: str, **overrides) -> tuple:
    """(spec, ModelConfig) of a `family` config (hf_families' keywords, then overrides)."""
    config_cls, _, extra = FAMILIES[family]
    hf = getattr(transformers, config_cls)(**{**COMMON, **extra, **overrides}).to_dict()
    spec = family_named(family_named_for(family))
    return spec, model_config(spec, hf)


@pytest.mark.parametrize(
    "family, overrides, message",
    [
        ("gemma2", {"query_pre_attn_scalar": 24}, "softmax scale 0.204124 .*by 0.25"),
        ("gemma3", {"query_pre_attn_scalar": 24}, "softmax scale"),
        ("gemma2", {"attn_logit_softcapping": None, **GGUF_READY["gemma2"]}, "attn_softcap is off"),
        ("gemma", {"tie_word_embeddings": False}, "untied lm_head"),
        ("qwen3", {"attention_bias": True}, "model.o_bias = True"),
        ("qwen2", {"head_dim": 32}, "attn_output"),
        ("qwen2_moe", {"norm_topk_prob": True}, "model.router = 'softmax_topk'"),
        ("qwen3_moe", {"norm_topk_prob": False}, "model.router = 'softmax_topk_raw'"),
        ("phi2", {"qk_layernorm": True}, "model.qk_norm = True .*does not implement"),
    ],
)
def test_what_llama_cpp_cannot_run_is_refused_by_name(family, overrides, message):
    spec, config = _config(family, **overrides)
    with pytest.raises(ArtifactError, match=message):
        llama_cpp_notes(spec.gguf, config)


def test_pocketlm_options_llama_cannot_express_are_refused():
    llama = family_named("llama").gguf
    with pytest.raises(ArtifactError, match="rotary_dim = 16.*; model.sandwich_norms"):
        llama_cpp_notes(
            llama, ModelConfig(dim=64, n_heads=2, n_kv_heads=2, rotary_dim=16, sandwich_norms=True)
        )
    with pytest.raises(ArtifactError, match="rope scaling 'longrope'"):
        llama_cpp_notes(
            llama,
            ModelConfig(dim=64, n_heads=4, rope_scaling="longrope", rope_original_max_len=8,
                        rope_short_factor=(1.0,) * 8, rope_long_factor=(1.0,) * 8),
        )  # fmt: skip
    assert llama_cpp_notes(llama, ModelConfig(qkv_bias=True, o_bias=True, norm_offset=1.0)) == []


def test_a_refused_model_leaves_no_file(tmp_path):
    tokenizer = write_folder("qwen2_5", tmp_path / "tokenizer")
    src = save_with_tokenizer("gemma2", tmp_path / "hf", tokenizer, query_pre_attn_scalar=24)
    artifact = import_hf(src, tmp_path / "art")
    with pytest.raises(ArtifactError, match="cannot run this model as gemma2.*export hf"):
        export_gguf(artifact, tmp_path / "g.gguf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art", "hf", "tokenizer"]


def test_experts_export_quantized(exported, tmp_path):
    """q8_0 quantizes each expert's rows in the stacked 3-D tensors; routers stay F32; an int4
    model's expert blocks go into Q4_0 bit for bit."""
    from pocketlm.compress.quantize import quantize_model_dir

    artifact, _ = exported("qwen2_moe")
    _, tensors = read_gguf(export_gguf(artifact, tmp_path / "q8.gguf", out_type="q8_0"))
    kind, shape, values = tensors["blk.0.ffn_up_exps.weight"]
    assert (kind, shape) == ("Q8_0", (4, 32, 64))
    want = np.stack([load_model(artifact).model.model.layers[0].mlp.experts[e].up_proj.weight.detach().numpy() for e in range(4)])  # fmt: skip
    assert np.abs(values - want).max() < 0.01 * np.abs(want).max()
    assert tensors["blk.0.ffn_gate_inp.weight"][0] == "F32"
    assert tensors["blk.0.ffn_gate_inp_shexp.weight"][0] == "F32"
    q4, _ = quantize_model_dir(artifact, tmp_path / "int4", "int4")
    _, tensors = read_gguf(export_gguf(q4, tmp_path / "q4.gguf", out_type="q4_0"))
    layer = load_model(q4).model.model.layers[1].mlp
    want = np.stack([layer.experts[e].down_proj.dequantized().numpy() for e in range(4)])
    assert tensors["blk.1.ffn_down_exps.weight"][0] == "Q4_0"
    assert np.array_equal(tensors["blk.1.ffn_down_exps.weight"][2], want)


# --- tokenizers -------------------------------------------------------------------------------

TOKENIZERS = {  # test tokenizer family -> (tokenizer.ggml.model, tokenizer.ggml.pre)
    "qwen2_5": ("gpt2", "qwen2"),  # Qwen2's split regex
    "llama3_2": ("gpt2", "llama-bpe"),  # the test tokenizer splits with Llama 3's own regex
    "smollm2": ("gpt2", "gpt-2"),
    "gemma2": ("llama", "default"),  # SentencePiece-style: "▁" and <0xNN> byte fallback
    "phi3": ("llama", "default"),
}


@pytest.fixture(scope="module")
def tokenizer_exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("gguf-tok")
    done: dict = {}

    def get(name: str):
        if name not in done:
            from pocketlm.tokenizer.tokenizer import Tokenizer

            folder = write_folder(name, root / f"tok-{name}")
            tok = Tokenizer.load(folder)
            src = save_with_tokenizer("smollm2", root / name, folder, vocab_size=max(512, tok.vocab_size))  # fmt: skip
            artifact = import_hf(src, root / f"pocketlm-{name}")
            done[name] = tok, export_gguf(artifact, root / f"{name}.gguf")
        return done[name]

    return get


@pytest.mark.parametrize("name", list(TOKENIZERS))
def test_imported_tokenizers_are_written_for_llama_cpp(tokenizer_exports, name):
    tok, path = tokenizer_exports(name)
    fields, _ = read_gguf(path)
    model, pre = TOKENIZERS[name]
    assert (fields["tokenizer.ggml.model"], fields["tokenizer.ggml.pre"]) == (model, pre)
    tokens, types = fields["tokenizer.ggml.tokens"], fields["tokenizer.ggml.token_type"]
    assert len(tokens) == len(types) == fields["llama.vocab_size"] >= tok.vocab_size
    assert tokens[tok.vocab_size :] == [f"[PAD{i}]" for i in range(tok.vocab_size, len(tokens))]
    T = gguf.TokenType
    added = tok.backend.get_added_tokens_decoder()
    for i, t in added.items():
        assert tokens[i] == t.content.replace("\u2581", " ")
        if t.content != "<unk>":
            assert types[i] == (T.CONTROL if t.special else T.USER_DEFINED)
    normal = next(i for i in range(tok.vocab_size) if i not in added and len(tokens[i]) > 2 and not tokens[i].startswith("<"))  # fmt: skip
    assert tokens[normal] == tok.backend.id_to_token(normal) and types[normal] == T.NORMAL
    assert fields["tokenizer.ggml.eos_token_id"] == tok.eos_id
    assert fields.get("tokenizer.ggml.bos_token_id") == tok.bos_id
    assert fields["tokenizer.ggml.add_bos_token"] == tok.add_bos
    assert fields["tokenizer.chat_template"] == tok.chat_template
    others = [i for i in tok.generation_defaults.eos_token_ids if i != tok.eos_id]
    if others:
        assert fields["tokenizer.ggml.eot_token_id"] == others[0]
    data = json.loads((path.parent / f"pocketlm-{name}" / "tokenizer.json").read_text())
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
    if model == "gpt2":
        assert fields["tokenizer.ggml.merges"] == merges
    else:  # scores put the merges in their order; bytes and unk typed
        scores = fields["tokenizer.ggml.scores"]
        for rank in (0, 5, len(merges) - 1):
            left, right = merges[rank].split(" ")
            first = next(r for r, m in enumerate(merges) if m.replace(" ", "") == left + right)
            assert scores[tok.backend.token_to_id(left + right)] == -first
        assert types[tok.backend.token_to_id("<0x41>")] == T.BYTE
        assert types[tok.backend.token_to_id("<unk>")] == T.UNKNOWN
        assert fields["tokenizer.ggml.unknown_token_id"] == tok.backend.token_to_id("<unk>")
        assert fields["tokenizer.ggml.add_space_prefix"] is True
    modelfile = path.with_suffix(".Modelfile").read_text()
    assert "Jinja" in modelfile and not any(
        line.startswith("TEMPLATE") for line in modelfile.splitlines()
    )
    for i in tok.stop_ids:
        assert f'PARAMETER stop "{tok.backend.id_to_token(i)}"' in modelfile


def test_a_pre_tokenizer_llama_cpp_lacks_is_refused(tmp_path):
    folder = write_folder("qwen2_5", tmp_path / "tok")
    data = json.loads((folder / "tokenizer.json").read_text())
    data["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = r"\p{L}+|\s+|."
    (folder / "tokenizer.json").write_text(json.dumps(data))
    artifact = import_hf(save_with_tokenizer("smollm2", tmp_path / "hf", folder), tmp_path / "a")
    with pytest.raises(UnsupportedModelError, match=r"regex '\\\\p\{L\}\+.*no pre-tokenizer"):
        export_gguf(artifact, tmp_path / "g.gguf")
    assert not [
        p
        for p in tmp_path.iterdir()
        if p.name.endswith((".gguf", ".Modelfile")) or ".tmp-" in p.name
    ]


class _Vocab:
    def __init__(self, tokens):
        self.backend = self
        self.tokens = tokens

    def token_to_id(self, text):
        return self.tokens.index(text) if text in self.tokens else None


def test_general_name_says_phi3_only_when_llama_cpp_can_apply_its_token_rules():
    """llama.cpp gives Phi-3's special tokens their rstrip when general.name says phi3, and fails
    to load a file without Phi-3's </s>, <unk>, <s>, <|endoftext|> when it does."""
    from pocketlm.interop.gguf_export import general_name

    phi3_vocab = _Vocab(["<unk>", "<s>", "</s>", "<|endoftext|>", "<|end|>"])
    other_vocab = _Vocab(["<|endoftext|>", "<|im_end|>"])
    phi3, qwen = family_named("phi3"), family_named("qwen2")
    assert general_name("pocketlm-mini", phi3, phi3_vocab) == "pocketlm-mini (phi3)"
    assert general_name("pocketlm-Phi-3-mini", phi3, phi3_vocab) == "pocketlm-Phi-3-mini"
    assert general_name("pocketlm-phi3-tune", qwen, other_vocab) == "pocketlm-phi_3-tune"
    assert general_name("pocketlm-Phi-3-x", phi3, other_vocab) == "pocketlm-phi_3-x"
