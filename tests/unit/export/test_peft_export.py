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
from pocketlm.export.hf import export_hf
from pocketlm.export.peft import export_peft
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
