"""What a Hugging Face folder may hold: shards with an index, bf16/fp16/fp32, a tied head stored
or not, experts stacked in one tensor, pickles, stray tensors; the on-the-fly import cache; and
memory that stays near one tensor however large the model."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from hf_families import build_hf_model

from pocketlm.checkpoint.model_io import load_model
from pocketlm.common.errors import ArtifactError
from pocketlm.common.manifest import read_manifest
from pocketlm.interop.hf_import import import_hf
from pocketlm.interop.open_model import is_hf_folder, model_dir

transformers = pytest.importorskip("transformers")
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def _folder(model, path: Path, tokenizer: Path, **save) -> Path:
    model.save_pretrained(path, **save)
    for name in TOKENIZER_FILES:
        shutil.copyfile(tokenizer / name, path / name)
    return path


def _weights(path: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(path.glob("*.safetensors")):
        out.update(load_file(f))
    return out


@pytest.mark.parametrize("dtype, stored", [(torch.bfloat16, "BF16"), (torch.float16, "F32")])
def test_sharded_half_precision_checkpoints(dtype, stored, synthetic_pipeline, tmp_path):
    model = build_hf_model("llama3").to(dtype)
    src = _folder(model, tmp_path / "hf", synthetic_pipeline["tokenizer"], max_shard_size="100KB")
    assert (src / "model.safetensors.index.json").is_file()
    assert len(list(src.glob("model-*.safetensors"))) > 2
    out = import_hf(src, tmp_path / "ours")
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        names = set(f.keys())
        source = _weights(src)
        assert names == set(source)  # llama: PocketLM's names are its own
        for name in names:
            got = f.get_tensor(name)
            assert got.dtype == {"BF16": torch.bfloat16, "F32": torch.float32}[stored]
            assert torch.equal(got, source[name].to(got.dtype)), name  # fp16 -> fp32 is exact
    manifest = read_manifest(out, kind="model")
    shards = {Path(p["path"]).name for p in manifest["parents"]}
    assert "model.safetensors.index.json" in shards and "config.json" in shards
    assert all(len(p["sha256"]) == 64 for p in manifest["parents"])
    assert manifest["config"]["source"]["family"] == "llama"


def test_a_tied_head_stored_anyway_is_skipped_and_a_missing_untied_one_is_an_error(
    synthetic_pipeline, tmp_path
):
    tied = _folder(build_hf_model("smollm2"), tmp_path / "tied", synthetic_pipeline["tokenizer"])
    weights = load_file(tied / "model.safetensors")
    assert "lm_head.weight" not in weights
    save_file({**weights, "lm_head.weight": weights["model.embed_tokens.weight"].clone()},
              tied / "model.safetensors", metadata={"format": "pt"})  # fmt: skip
    import_hf(tied, tmp_path / "tied-ours")

    untied = _folder(build_hf_model("qwen3"), tmp_path / "untied", synthetic_pipeline["tokenizer"])
    weights = load_file(untied / "model.safetensors")
    del weights["lm_head.weight"]
    save_file(weights, untied / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ArtifactError, match="'lm_head.weight' is missing .tie_word_embeddings is false"):  # fmt: skip
        import_hf(untied, tmp_path / "untied-ours")


def test_stray_tensors_pickles_and_missing_tokenizers_are_refused(synthetic_pipeline, tmp_path):
    src = _folder(build_hf_model("mistral"), tmp_path / "hf", synthetic_pipeline["tokenizer"])
    weights = load_file(src / "model.safetensors")
    stray = {**weights, "model.layers.0.mlp.extra.weight": torch.zeros(2, 2)}
    save_file(stray, src / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ArtifactError, match="'model.layers.0.mlp.extra.weight' is not part of a mistral"):  # fmt: skip
        import_hf(src, tmp_path / "a")
    save_file(weights, src / "model.safetensors", metadata={"format": "pt"})
    (src / "tokenizer.json").unlink()
    with pytest.raises(ArtifactError, match="no tokenizer.json"):
        import_hf(src, tmp_path / "b")
    (src / "model.safetensors").rename(src / "pytorch_model.bin")  # any bytes: never unpickled
    with pytest.raises(ArtifactError, match="pytorch_model.bin .pickle.*convert"):
        import_hf(src, tmp_path / "c")
    assert not any((tmp_path / n).exists() for n in "abc")


def test_dispatch_never_reads_the_folder_name(synthetic_pipeline, tmp_path):
    src = _folder(build_hf_model("qwen2"), tmp_path / "gemma-2b-it", synthetic_pipeline["tokenizer"])  # fmt: skip
    out = import_hf(src, tmp_path / "ours")
    assert read_manifest(out)["summary"]["family"] == "qwen2"


def test_experts_stacked_in_one_tensor_import_like_per_expert_files(synthetic_pipeline, tmp_path):
    """A file written from a transformers 5 model's state_dict (mlp.experts.gate_up_proj
    [E, 2F, dim], mlp.gate) and save_pretrained's (block_sparse_moe.experts.{e}.w1/w3/w2)."""
    model = build_hf_model("mixtral")
    per_expert = _folder(model, tmp_path / "per-expert", synthetic_pipeline["tokenizer"])
    stacked = tmp_path / "stacked"
    shutil.copytree(per_expert, stacked)
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight" or not model.config.tie_word_embeddings}  # fmt: skip
    assert "model.layers.0.mlp.experts.gate_up_proj" in state
    (stacked / "model.safetensors").unlink()
    save_file(state, stacked / "model.safetensors", metadata={"format": "pt"})
    a = load_file(import_hf(per_expert, tmp_path / "a") / "model.safetensors")
    b = load_file(import_hf(stacked, tmp_path / "b") / "model.safetensors")
    assert set(a) == set(b) and all(torch.equal(a[n], b[n]) for n in a)


def test_open_model_imports_a_folder_once_and_again_when_it_changes(synthetic_pipeline, tmp_path):
    src = _folder(build_hf_model("gemma"), tmp_path / "hf", synthetic_pipeline["tokenizer"])
    cache = tmp_path / "cache"
    assert is_hf_folder(src) and not is_hf_folder(synthetic_pipeline["tokenizer"])
    first = model_dir(src, cache=cache)
    assert first.parent == cache / "imports" and read_manifest(first)["kind"] == "model"
    stamp = (first / "manifest.json").stat().st_mtime_ns
    assert model_dir(src, cache=cache) == first
    assert (first / "manifest.json").stat().st_mtime_ns == stamp  # reused, not imported again
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "rms_norm_eps": 1e-5}))
    assert model_dir(src, cache=cache) == first
    assert load_model(first).config.norm_eps == 1e-5
    assert model_dir(first) == first  # an artifact is itself


_MEMORY_PROBE = textwrap.dedent(
    """
    import json, sys
    from pocketlm.interop.hf_import import import_hf

    def kib(field):
        for line in open("/proc/self/status"):
            if line.startswith(field):
                return int(line.split()[1])

    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak (VmHWM) to the current resident size
    before = kib("VmRSS")
    import_hf(sys.argv[1], sys.argv[2])
    print(json.dumps({"growth_kib": kib("VmHWM") - before}))
    """
)


def test_import_memory_stays_near_the_largest_tensor(tmp_path):
    """~100 MB of weights in two shards, the largest tensor 8 MB: the import's peak resident
    memory grows by less than two largest tensors plus a margin (a whole shard would be 50 MB)."""
    dim, ffn, layers, vocab = 512, 2048, 6, 4096
    src = tmp_path / "big"
    src.mkdir()
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocab,
              "hidden_size": dim, "intermediate_size": ffn, "num_hidden_layers": layers,
              "num_attention_heads": 8, "num_key_value_heads": 8, "max_position_embeddings": 128}  # fmt: skip
    (src / "config.json").write_text(json.dumps(config))
    rng = np.random.default_rng(0)
    shapes = {"model.embed_tokens.weight": (vocab, dim), "lm_head.weight": (vocab, dim),
              "model.norm.weight": (dim,)}  # fmt: skip
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes |= {p + "input_layernorm.weight": (dim,), p + "post_attention_layernorm.weight": (dim,)}  # fmt: skip
        shapes |= {p + f"self_attn.{m}.weight": (dim, dim) for m in ("q_proj", "k_proj", "v_proj", "o_proj")}  # fmt: skip
        shapes |= {p + "mlp.gate_proj.weight": (ffn, dim), p + "mlp.up_proj.weight": (ffn, dim),
                   p + "mlp.down_proj.weight": (dim, ffn)}  # fmt: skip
    names = list(shapes)
    weight_map = {}
    for shard, part in enumerate((names[: len(names) // 2], names[len(names) // 2 :])):
        file = f"model-{shard + 1:05d}-of-00002.safetensors"
        tensors = {n: torch.from_numpy(rng.standard_normal(shapes[n], dtype=np.float32)) for n in part}  # fmt: skip
        save_file(tensors, src / file, metadata={"format": "pt"})
        weight_map |= dict.fromkeys(part, file)
        del tensors
    (src / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (src / "tokenizer.json").write_text("{}")
    total = sum(f.stat().st_size for f in src.glob("*.safetensors"))
    largest = vocab * dim * 4
    proc = subprocess.run(
        [sys.executable, "-c", _MEMORY_PROBE, str(src), str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    growth = json.loads(proc.stdout.splitlines()[-1])["growth_kib"] * 1024
    assert total > 90e6
    assert growth < 2 * largest + 16e6, f"peak grew by {growth / 1e6:.1f} MB"
