"""`pocketlm distill --student draft`: the draft is the teacher cut to fewer layers, distilled
from it and quantized to int4; speculative decoding with it gives the teacher's own text."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
from distill_models import distill_settings

from pocketlm.checkpoint.model_io import load_model, read_quantization
from pocketlm.common.errors import ConfigError
from pocketlm.engine.load import load_engine
from pocketlm.engine.sampling import SamplingParams
from pocketlm.pipelines.draft import auto_layers, distill_draft, draft_layers


def test_draft_student_names():
    assert draft_layers("draft") == 0 and draft_layers("draft:3") == 3
    assert draft_layers("nano-3m") is None and draft_layers("runs/draft-model") is None
    assert [auto_layers(n) for n in (1, 2, 8, 30)] == [1, 1, 2, 7]


def test_a_draft_is_cut_from_its_teacher_distilled_and_quantized(
    tiny_model_dir, synthetic_pipeline, tmp_path
):
    tokens = synthetic_pipeline["tokens"]
    teacher = load_model(tiny_model_dir)
    result = distill_draft(
        tiny_model_dir, tokens, tmp_path / "draft", distill_settings("3 steps"), layers=1
    )
    init = load_model(tmp_path / "draft" / "draft-init").model
    assert init.config.n_layers == 1 < teacher.config.n_layers
    # the cut keeps the teacher's embeddings (and so its tokenizer and vocabulary)
    assert torch.equal(init.model.embed_tokens.weight, teacher.model.model.embed_tokens.weight)
    assert load_model(result.model_dir).config.n_layers == 1
    assert read_quantization(result.int4_dir)["scheme"] == "int4"
    assert result.run.steps == 3
    # a rerun reuses this cut only for the same teacher and depth
    from pocketlm.pipelines.draft import _cut_from

    assert _cut_from(tmp_path / "draft" / "draft-init", teacher.directory, 1)
    assert not _cut_from(tmp_path / "draft" / "draft-init", teacher.directory, 2)
    assert not _cut_from(tmp_path / "draft" / "draft-init", tmp_path, 1)

    params = SamplingParams(temperature=0.0, max_new_tokens=24)
    alone = load_engine(tiny_model_dir, backend="torch").complete("ab", params).token_ids
    drafted = load_engine(
        tiny_model_dir, backend="torch", draft=result.int4_dir, draft_tokens=3
    ).complete("ab", params)
    assert drafted.token_ids == alone  # speculation never changes greedy text


def test_a_draft_must_be_smaller_and_needs_tokens(tiny_model_dir, synthetic_pipeline, tmp_path):
    with pytest.raises(ConfigError, match="not smaller than the teacher"):
        distill_draft(
            tiny_model_dir, synthetic_pipeline["tokens"], tmp_path / "d", distill_settings(),
            layers=2,
        )  # fmt: skip
    with pytest.raises(ConfigError, match="give --tokens DIR"):
        distill_draft(tiny_model_dir, None, tmp_path / "d2", distill_settings())
