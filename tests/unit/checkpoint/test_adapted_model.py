"""LoRA adapters as artifacts: saved with their settings and the base's hash, opened on top of
that base (and refused on any other), merged into a float model with the same logits, and run
by the engine's torch backend (the native one refuses them)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from pocketlm.checkpoint.adapted_model import load_adapted_model, merge_adapter, read_lora_config
from pocketlm.checkpoint.adapters import resolve_adapter_dir
from pocketlm.checkpoint.model_io import load_model
from pocketlm.common.errors import ArtifactError, ConfigError
from pocketlm.common.manifest import read_manifest
from pocketlm.compress.quantize import quantize_model_dir
from pocketlm.model.lora import LoRAConfig
from tests.unit.checkpoint.lora_adapters import IDS, make_adapter


@pytest.fixture(scope="module")
def int4_base(tiny_model_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("q4") / "q4"
    return quantize_model_dir(tiny_model_dir, out, "int4")[0]


def test_an_adapter_records_its_settings_and_opens_on_its_base(tiny_model_dir, tmp_path):
    lora = LoRAConfig(rank=4, alpha=8.0, targets="q_proj,v_proj,lm_head", rslora=True)
    path, expected = make_adapter(tiny_model_dir, tmp_path / "a", lora)
    settings, targets = read_lora_config(path)
    assert settings == lora and targets[-1] == "lm_head" and len(targets) == 5
    manifest = read_manifest(path, kind="adapter")
    assert manifest["summary"]["base"]["path"] == str(tiny_model_dir.resolve())
    loaded = load_adapted_model(tiny_model_dir, path)
    assert not loaded.model.training
    with torch.no_grad():
        assert torch.equal(loaded.model(IDS), expected)


def test_an_adapter_refuses_another_base(tiny_model_dir, int4_base, tmp_path):
    path, _ = make_adapter(tiny_model_dir, tmp_path / "a", LoRAConfig(rank=2))
    with pytest.raises(ArtifactError, match="was trained on the base"):
        load_adapted_model(int4_base, path)
    copy = shutil.copytree(tiny_model_dir, tmp_path / "copy")  # the same base elsewhere is fine
    load_adapted_model(copy, path)
    with pytest.raises(ArtifactError, match="expected adapter"):
        load_adapted_model(tiny_model_dir, tiny_model_dir)


def test_a_run_directory_resolves_to_its_adapter(tiny_model_dir, tmp_path):
    path, _ = make_adapter(tiny_model_dir, tmp_path / "run" / "model", LoRAConfig(rank=2))
    assert resolve_adapter_dir(tmp_path / "run") == path
    with pytest.raises(ArtifactError, match="no adapter here"):
        resolve_adapter_dir(tmp_path)
    with pytest.raises(ArtifactError, match="is an adapter, not a model: pass the model"):
        load_model(tmp_path / "run")  # a LoRA run given where a model is expected


@pytest.mark.parametrize("base", ["float", "int4", "qlora-int8"])
def test_merge_gives_a_float_model_with_the_same_logits(base, tiny_model_dir, int4_base, tmp_path):
    base_dir = int4_base if base == "int4" else tiny_model_dir
    lora = LoRAConfig(rank=4, alpha=16.0, base_quant="int8" if base == "qlora-int8" else "none")
    adapter, expected = make_adapter(base_dir, tmp_path / "a", lora)
    merged = merge_adapter(base_dir, adapter, tmp_path / "merged")
    loaded = load_model(merged)
    assert not (merged / "quantization.json").exists()
    assert all(p.dtype == torch.float32 for p in loaded.model.state_dict().values())
    with torch.no_grad():
        assert (loaded.model(IDS) - expected).abs().max() < 1e-5
    assert {p["path"] for p in read_manifest(merged)["parents"]} == {
        str(base_dir.resolve()),
        str(adapter.resolve()),
    }


def test_the_torch_backend_runs_base_plus_adapter_and_native_refuses(tiny_model_dir, tmp_path):
    from pocketlm.engine.load import load_engine, open_backend

    adapter, expected = make_adapter(tiny_model_dir, tmp_path / "a", LoRAConfig(rank=4))
    backend, _ = open_backend(
        tiny_model_dir, adapter=adapter, backend="auto", device="cpu", precision="fp32"
    )
    assert backend.name == "torch"
    logits = backend.extend(0, IDS[0].tolist())
    assert torch.allclose(torch.from_numpy(logits), expected[0], atol=1e-5)
    with pytest.raises(ConfigError, match="pocketlm merge"):
        open_backend(tiny_model_dir, adapter=adapter, backend="native")
    engine = load_engine(tiny_model_dir, adapter=adapter, device="cpu", precision="fp32")
    assert engine.name == "torch"


def test_adapters_on_a_shared_base_share_its_weights_and_leave_it_as_it_was(
    tiny_model_dir, tmp_path
):
    """Several adapters opened over one loaded base (serve's many adapters): each has its own
    logits, the untouched weights are the base's very tensors, and the base stays plain."""
    q_only, qv_head = (
        make_adapter(tiny_model_dir, tmp_path / name, LoRAConfig(rank=r, targets=t), seed=s)
        for name, r, t, s in (("a", 2, "q_proj", 0), ("b", 4, "q_proj,v_proj,lm_head", 3))
    )
    base = load_model(tiny_model_dir)
    with torch.no_grad():
        base_logits = base.model(IDS)
    opened = [
        load_adapted_model(tiny_model_dir, path, shared_base=base) for path, _ in (q_only, qv_head)
    ]
    with torch.no_grad():
        for loaded, (_, expected) in zip(opened, (q_only, qv_head), strict=True):
            torch.testing.assert_close(loaded.model(IDS), expected, rtol=0, atol=1e-5)
        assert torch.equal(base.model(IDS), base_logits)  # the base got no LoRA layers
    base_params = {p.data_ptr() for p in base.model.parameters()}
    for loaded in opened:
        down = loaded.model.get_submodule("model.layers.0.mlp.down_proj").weight
        assert down.data_ptr() in base_params
    owned = [
        sum(p.numel() for p in m.model.parameters() if p.data_ptr() not in base_params)
        for m in opened
    ]
    assert 0 < owned[0] < owned[1] < sum(p.numel() for p in base.model.parameters()) / 4


def test_one_batch_mixes_adapters_row_by_row(tiny_model_dir, tmp_path):
    """Base and two adapters in one model (serve mixing them in a batch): each row of one
    forward, and each slot of one decode step of the torch backend, gets its own model's logits."""
    from pocketlm.checkpoint.adapted_model import load_multi_adapter_model
    from pocketlm.engine.torch_backend import TorchBackend
    from pocketlm.model.multi_lora import NO_ADAPTER

    (a, a_logits), (b, b_logits) = (
        make_adapter(tiny_model_dir, tmp_path / name, LoRAConfig(rank=r, targets=t), seed=s)
        for name, r, t, s in (("a", 2, "q_proj", 0), ("b", 4, "q_proj,v_proj,lm_head", 3))
    )
    with torch.no_grad():
        base_logits = load_model(tiny_model_dir).model(IDS)
    loaded, rows = load_multi_adapter_model(tiny_model_dir, [a, b])
    plan = [(1, b_logits), (NO_ADAPTER, base_logits), (0, a_logits)]
    rows.rows = [k for k, _ in plan]
    with torch.no_grad():
        mixed = loaded.model(IDS.repeat(3, 1))  # (3, T, V)
    for row, (_, expected) in enumerate(plan):
        torch.testing.assert_close(mixed[row], expected[0], rtol=0, atol=1e-5)

    backend = TorchBackend(loaded.model, slots=3, adapter_rows=rows)
    prompt, last = IDS[0, :-1].tolist(), int(IDS[0, -1])
    for slot, (k, _) in enumerate(plan):
        backend.use_adapter(slot, k)
        backend.prefill(slot, prompt)
    step = backend.decode([0, 1, 2], [last, last, last])  # (3, V), one forward
    for slot, (_, expected) in enumerate(plan):
        torch.testing.assert_close(torch.from_numpy(step[slot]), expected[0, -1], rtol=0, atol=1e-5)


def test_a_qlora_adapter_cannot_share_a_batch(tiny_model_dir, tmp_path):
    from pocketlm.checkpoint.adapted_model import load_multi_adapter_model

    path, _ = make_adapter(tiny_model_dir, tmp_path / "q", LoRAConfig(rank=2, base_quant="int8"))
    with pytest.raises(ConfigError, match="QLoRA adapter"):
        load_multi_adapter_model(tiny_model_dir, [path])
