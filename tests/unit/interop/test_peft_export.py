"""`export peft`: the `peft` library loads the adapter onto the base's `export hf` output and
computes the logits PocketLM computes for base + adapter (dev tier: peft and transformers are
dev extras, installed in CI)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from pocketlm.checkpoint.adapted_model import load_adapted_model
from pocketlm.checkpoint.model_io import save_model
from pocketlm.common.errors import ArtifactError
from pocketlm.interop.hf_export import export_hf
from pocketlm.interop.peft import export_peft
from pocketlm.model.config import ModelConfig
from pocketlm.model.lora import LoRAConfig
from pocketlm.model.transformer import build_model
from tests.unit.checkpoint.lora_adapters import make_adapter

transformers = pytest.importorskip("transformers", reason="transformers is a dev extra")
peft = pytest.importorskip("peft", reason="peft is a dev extra: pip install -e '.[dev]'")

CASES = {
    # tied embeddings, GQA, every decoder linear
    "tied-all-linear": (dict(n_kv_heads=2), LoRAConfig(rank=4, alpha=8.0)),
    # untied head with LoRA on it, q/k/v biases, rsLoRA
    "untied-head-bias": (
        dict(n_kv_heads=4, tie_embeddings=False, qkv_bias=True),
        LoRAConfig(rank=8, alpha=4.0, targets="q_proj,v_proj,lm_head", rslora=True),
    ),
    # one layer's module only: target_modules must name full paths
    "one-module": (
        dict(n_kv_heads=2),
        LoRAConfig(rank=2, alpha=2.0, targets="layers.1.mlp.down_proj"),
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_peft_loads_the_adapter_onto_the_hf_export_with_the_same_logits(
    case, synthetic_pipeline, tmp_path
):
    shape, lora = CASES[case]
    config = ModelConfig(
        vocab_size=512, dim=32, n_layers=2, n_heads=4, max_seq_len=64, init_std=0.3, **shape
    )
    base = save_model(
        tmp_path / "base", build_model(config, seed=1), synthetic_pipeline["tokenizer"]
    )
    adapter, _ = make_adapter(base, tmp_path / "adapter", lora, seed=2)
    hf_dir = export_hf(base, tmp_path / "hf")
    out = export_peft(base, adapter, tmp_path / "peft", hf_base=hf_dir)

    adapter_config = json.loads((out / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str(hf_dir.resolve())
    assert (adapter_config["r"], adapter_config["lora_alpha"]) == (lora.rank, lora.alpha)
    names = set(load_file(str(out / "adapter_model.safetensors")))
    if case == "tied-all-linear":
        assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in names
        assert sorted(adapter_config["target_modules"]) == sorted(
            ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        )
    if case == "one-module":
        assert adapter_config["target_modules"] == ["model.layers.1.mlp.down_proj"]

    ids = torch.randint(0, 512, (2, 20), generator=torch.Generator().manual_seed(3))
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(hf_dir), local_files_only=True)
    peft_model = peft.PeftModel.from_pretrained(hf.eval(), str(out)).eval()
    ours = load_adapted_model(base, adapter).model
    with torch.no_grad():
        theirs, mine = peft_model(ids).logits, ours(ids)
    torch.testing.assert_close(theirs, mine, atol=1e-4, rtol=0)
    with torch.no_grad(), peft_model.disable_adapter():
        assert (peft_model(ids).logits - theirs).abs().max() > 1e-3  # the adapter matters


def test_the_hf_base_must_be_the_export_of_the_adapters_base(synthetic_pipeline, tmp_path):
    config = ModelConfig(
        vocab_size=512, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64
    )
    tok = synthetic_pipeline["tokenizer"]
    base = save_model(tmp_path / "base", build_model(config, seed=1), tok)
    other = save_model(tmp_path / "other", build_model(config, seed=2), tok)
    adapter, _ = make_adapter(base, tmp_path / "adapter", LoRAConfig(rank=2))
    with pytest.raises(ArtifactError, match="not the `export hf` output"):
        export_peft(base, adapter, tmp_path / "peft", hf_base=export_hf(other, tmp_path / "hf"))
    out = export_peft(base, adapter, tmp_path / "peft")  # no HF base recorded
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] is None


# Imported families: renamed modules (Phi-2's fc1/fc2/dense), fused ones (Phi-3's qkv_proj and
# gate_up_proj: one LoRA holding its members' exactly), biases, Gemma 2's norms and soft-caps.
FAMILY_TARGETS = {
    "phi3": "all-linear",
    "phi2": "all-linear,lm_head",
    "gemma2": "q_proj,o_proj,down_proj",
    "qwen2": "all-linear",
}


@pytest.mark.parametrize("family", list(FAMILY_TARGETS))
def test_an_adapter_on_an_imported_family_loads_in_peft_with_the_same_logits(
    family, synthetic_pipeline, tmp_path
):
    from hf_families import save_family

    from pocketlm.interop.hf_import import import_hf

    folder = save_family(family, tmp_path / "hf-src", synthetic_pipeline["tokenizer"])["v5"]
    base = import_hf(folder, tmp_path / "base")
    lora = LoRAConfig(rank=2, alpha=6.0, targets=FAMILY_TARGETS[family], rslora=family == "qwen2")
    adapter, _ = make_adapter(base, tmp_path / "adapter", lora, seed=4)
    hf_dir = export_hf(base, tmp_path / "hf")
    out = export_peft(base, adapter, tmp_path / "peft", hf_base=hf_dir)
    adapter_config = json.loads((out / "adapter_config.json").read_text())
    if family == "phi3":  # q, k, v in one qkv_proj; gate, up in one gate_up_proj
        assert adapter_config["rank_pattern"] == {"qkv_proj": 6, "gate_up_proj": 4}
        assert set(adapter_config["target_modules"]) == {
            "qkv_proj", "o_proj", "gate_up_proj", "down_proj"
        }  # fmt: skip
    if family == "phi2":
        assert set(adapter_config["target_modules"]) >= {"fc1", "fc2", "dense", "lm_head"}

    ids = torch.randint(0, 512, (2, 20), generator=torch.Generator().manual_seed(3))
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(hf_dir), local_files_only=True)
    peft_model = peft.PeftModel.from_pretrained(hf.eval(), str(out)).eval()
    with torch.no_grad():
        theirs = peft_model(ids).logits
        mine = load_adapted_model(base, adapter).model(ids)
        with peft_model.disable_adapter():
            plain = peft_model(ids).logits
    torch.testing.assert_close(theirs, mine, atol=1e-4, rtol=0)
    assert (plain - theirs).abs().max() > 1e-3  # the adapter matters
