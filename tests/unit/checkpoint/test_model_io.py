from __future__ import annotations

import errno
import shutil

import pytest
import torch

from pocketlm.checkpoint.model_io import WEIGHTS_FILE, load_model, resolve_model_dir, save_model
from pocketlm.checkpoint.run_checkpoints import (
    checkpoint_name,
    latest_checkpoint,
    list_checkpoints,
    prune_checkpoints,
)
from pocketlm.common.errors import ArtifactError, PocketLMError
from pocketlm.model.config import ModelConfig
from pocketlm.model.transformer import build_model


def _tiny(vocab=512, tie=True):
    return build_model(
        ModelConfig(
            vocab_size=vocab,
            dim=32,
            n_layers=2,
            n_heads=2,
            n_kv_heads=1,
            max_seq_len=32,
            tie_embeddings=tie,
        ),
        seed=3,
    )


@pytest.mark.parametrize("tie", [True, False])
def test_save_load_round_trip_keeps_logits_and_tying(synthetic_pipeline, tmp_path, tie):
    model = _tiny(tie=tie).eval()
    out = save_model(tmp_path / "m", model, synthetic_pipeline["tokenizer"], summary={"note": 1})
    loaded = load_model(out)
    x = torch.randint(0, 512, (2, 16))
    with torch.no_grad():
        assert torch.equal(model(x), loaded.model(x))
    assert (loaded.model.lm_head.weight is loaded.model.model.embed_tokens.weight) == tie
    assert loaded.manifest["kind"] == "model" and loaded.manifest["summary"]["note"] == 1
    assert loaded.tokenizer.vocab_size == 512


def test_truncated_and_corrupt_weights_are_reported(synthetic_pipeline, tmp_path):
    out = save_model(tmp_path / "m", _tiny(), synthetic_pipeline["tokenizer"])
    weights = out / WEIGHTS_FILE
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match="truncated or corrupt"):
        load_model(out)
    weights.write_bytes(b"\xff" * len(data))
    with pytest.raises(ArtifactError, match="corrupt"):
        load_model(out)


def test_pickle_files_are_refused(synthetic_pipeline, tmp_path):
    out = save_model(tmp_path / "m", _tiny(), synthetic_pipeline["tokenizer"])
    (out / "pytorch_model.bin").write_bytes(b"\x80\x04not really")
    with pytest.raises(ArtifactError, match="refusing to load a pickle-based file"):
        load_model(out)


def test_tokenizer_larger_than_model_vocabulary_is_refused(synthetic_pipeline, tmp_path):
    out = save_model(tmp_path / "m", _tiny(vocab=300), synthetic_pipeline["tokenizer"])
    with pytest.raises(
        ArtifactError, match="tokenizer has 512 tokens but the model's vocabulary is 300"
    ):
        load_model(out)


def test_out_of_disk_during_save_keeps_the_previous_checkpoint(
    synthetic_pipeline, tmp_path, monkeypatch
):
    ckpts = tmp_path / "checkpoints"
    good = save_model(ckpts / checkpoint_name(1), _tiny(), synthetic_pipeline["tokenizer"])
    import safetensors.torch

    def full_disk(tensors, filename, metadata=None):
        with open(filename, "wb") as fh:
            fh.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    with pytest.raises(PocketLMError, match="out of disk space.*earlier checkpoints are intact"):
        save_model(ckpts / checkpoint_name(2), _tiny(), synthetic_pipeline["tokenizer"])
    monkeypatch.undo()
    assert latest_checkpoint(ckpts) == good
    assert [p.name for p in ckpts.iterdir()] == [checkpoint_name(1)]
    load_model(good)


def test_checkpoint_listing_pruning_and_run_resolution(synthetic_pipeline, tmp_path):
    run = tmp_path / "run"
    for step in (3, 6, 9):
        save_model(
            run / "checkpoints" / checkpoint_name(step), _tiny(), synthetic_pipeline["tokenizer"]
        )
    (run / "checkpoints" / ".step-0000012.tmp-1").mkdir()  # a crashed save
    assert [s for s, _ in list_checkpoints(run / "checkpoints")] == [3, 6, 9]
    assert resolve_model_dir(run).name == checkpoint_name(9)
    prune_checkpoints(run / "checkpoints", keep=2)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        checkpoint_name(6),
        checkpoint_name(9),
    ]
    save_model(run / "model", _tiny(), synthetic_pipeline["tokenizer"])
    assert resolve_model_dir(run) == run / "model"
    shutil.rmtree(run / "model")
    with pytest.raises(ArtifactError, match="no such model directory"):
        resolve_model_dir(tmp_path / "nothing")
