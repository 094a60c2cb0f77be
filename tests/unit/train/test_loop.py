"""The training loop: exact resume (in-process and after SIGKILL), NaN guard, budgets, bad input."""

from __future__ import annotations

import json

import pytest
import torch

from pocketlm.checkpoint.run_checkpoints import list_checkpoints
from pocketlm.common.errors import ConfigError, InputError
from pocketlm.train.loop import TrainingDiverged, train
from pocketlm.train.metrics import read_metrics
from pocketlm.train.tasks.pretrain import pretrain, pretrain_task
from tests.conftest import tiny_pretrain_config


def _losses(run_dir):
    return {r["step"]: r["loss"] for r in read_metrics(run_dir / "metrics.jsonl")}


class _Interrupt(Exception):
    pass


def test_resume_after_interruption_matches_uninterrupted_run_bit_for_bit(
    synthetic_pipeline, tmp_path
):
    tokens = synthetic_pipeline["tokens"]
    config = tiny_pretrain_config("12 steps")
    full = pretrain(tokens, tmp_path / "full", config)

    calls = {"n": 0}

    def interrupted(ctx):
        task = pretrain_task(tokens, config, ctx)
        inner = task.batches

        class Interrupting:
            def __next__(self):
                calls["n"] += 1
                if calls["n"] == 8:  # dies inside step 8; the last checkpoint is after step 6
                    raise _Interrupt
                return next(inner)

            def state_dict(self):
                return inner.state_dict()

            def load_state_dict(self, state):
                inner.load_state_dict(state)

        task.batches = Interrupting()
        return task

    with pytest.raises(_Interrupt):
        train(interrupted, config.train, tmp_path / "cut")
    assert [s for s, _ in list_checkpoints(tmp_path / "cut" / "checkpoints")] == [3, 6]
    resumed = pretrain(tokens, tmp_path / "cut", config, resume=True)

    assert _losses(tmp_path / "cut") == _losses(
        tmp_path / "full"
    )  # exact float equality, every step
    assert resumed.steps == full.steps == 12
    from safetensors.torch import load_file

    a = load_file(str(full.model_dir / "model.safetensors"))
    b = load_file(str(resumed.model_dir / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_nan_guard_stops_before_the_optimizer_step_and_saves_nothing_after(
    synthetic_pipeline, tmp_path
):
    config = tiny_pretrain_config("12 steps")
    calls = {"n": 0}

    def poisoned_task(ctx):
        task = pretrain_task(synthetic_pipeline["tokens"], config, ctx)
        good_loss = task.loss

        def poisoned(model, batch):
            calls["n"] += 1
            loss, n = good_loss(model, batch)
            return (loss * float("nan"), n) if calls["n"] >= 5 else (loss, n)

        task.loss = poisoned
        return task

    with pytest.raises(
        TrainingDiverged,
        match=r"loss became nan .* at step 5; stopped before the optimizer step.*step-0000003",
    ):
        train(poisoned_task, config.train, tmp_path / "run")
    assert [s for s, _ in list_checkpoints(tmp_path / "run" / "checkpoints")] == [3]
    assert max(r["step"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")) == 4
    assert not (tmp_path / "run" / "model").exists()


def test_budget_too_small_for_one_step(synthetic_pipeline, tmp_path):
    with pytest.raises(ConfigError, match="too small for a single training step"):
        pretrain(
            synthetic_pipeline["tokens"], tmp_path / "run", tiny_pretrain_config("0.000000001s")
        )


def test_a_time_budget_stops_pretraining_at_the_clock_not_at_the_machine(
    synthetic_pipeline, tmp_path
):
    """Under an injected clock where each micro-batch takes 0.5 s, a 4 s budget keeps 0.67 s for
    the final evaluation (512 tokens, forward only: a third of a 128-token step each 128 tokens)
    and 0.2 s for the save, so exactly 7 steps run whatever the machine's load, then evaluate."""
    config = tiny_pretrain_config("4s", checkpoint_every=0)
    clock = {"t": 0.0}

    def factory(ctx):
        task = pretrain_task(synthetic_pipeline["tokens"], config, ctx)
        loss = task.loss

        def timed(model, batch):
            clock["t"] += 0.5
            return loss(model, batch)

        task.loss = timed
        return task

    result = train(factory, config.train, tmp_path / "run", now=lambda: clock["t"])
    assert (result.steps, result.seconds) == (7, 3.5)


def test_a_cpu_budget_counts_the_process_clock(synthetic_pipeline, tmp_path, monkeypatch):
    """'4s cpu' reads time.process_time (here a fake one advancing 0.5 s per micro-batch, far
    from the wall clock): the same 7 steps as the wall-clock budget above."""
    import pocketlm.train.run as run_module

    config = tiny_pretrain_config("4s cpu", checkpoint_every=0)
    clock = {"t": 0.0}
    monkeypatch.setattr(run_module.time, "process_time", lambda: clock["t"])

    def factory(ctx):
        task = pretrain_task(synthetic_pipeline["tokens"], config, ctx)
        loss = task.loss

        def timed(model, batch):
            clock["t"] += 0.5
            return loss(model, batch)

        task.loss = timed
        return task

    result = train(factory, config.train, tmp_path / "run")
    assert (result.steps, result.seconds) == (7, 3.5)
    manifest = json.loads((tmp_path / "run" / "model" / "manifest.json").read_text())
    assert manifest["summary"]["budget_clock"] == "cpu"
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert "val_bpb" in rows[-1] and rows[-1]["step"] == result.steps


def test_metrics_rows_carry_the_promised_fields(synthetic_pipeline, tmp_path):
    pretrain(synthetic_pipeline["tokens"], tmp_path / "run", tiny_pretrain_config("8 steps"))
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    for row in rows:
        assert {"step", "tokens", "loss", "lr", "tokens_per_s"} <= set(row)
    evals = [r for r in rows if "val_loss" in r]
    assert evals and all("val_bpb" in r for r in evals)
    assert (tmp_path / "run" / "loss.png").stat().st_size > 5000
    json.loads((tmp_path / "run" / "run_config.json").read_text())


def test_existing_run_needs_resume_flag(synthetic_pipeline, tmp_path):
    from pocketlm.common.errors import ArtifactError

    pretrain(synthetic_pipeline["tokens"], tmp_path / "run", tiny_pretrain_config("3 steps"))
    with pytest.raises(ArtifactError, match="pass --resume"):
        pretrain(synthetic_pipeline["tokens"], tmp_path / "run", tiny_pretrain_config("3 steps"))
    with pytest.raises(ArtifactError, match="nothing to resume"):
        pretrain(
            synthetic_pipeline["tokens"],
            tmp_path / "other",
            tiny_pretrain_config("3 steps"),
            resume=True,
        )


def test_unknown_preset_and_tokens_from_another_tokenizer(
    synthetic_pipeline, tmp_path, tiny_model_dir
):
    from pocketlm.common.config import replace

    config = replace(tiny_pretrain_config(), **{"model.preset": "micro-6n"})
    with pytest.raises(
        ConfigError, match="unknown model preset 'micro-6n'; did you mean 'micro-6m'"
    ):
        pretrain(synthetic_pipeline["tokens"], tmp_path / "run", config)
    # A tokens dir from another tokenizer: same corpus, a different vocabulary.
    from pocketlm.data.encode import encode_corpus
    from pocketlm.evals.evaluate import evaluate_model
    from pocketlm.tokenizer.train import TokenizerConfig, train_tokenizer

    other_tok = train_tokenizer(
        synthetic_pipeline["corpus"], tmp_path / "tok2", TokenizerConfig(vocab_size=600)
    )
    other_tokens = encode_corpus(synthetic_pipeline["corpus"], other_tok, tmp_path / "tokens2")
    with pytest.raises(
        InputError, match="was encoded with tokenizer .* but the model in .* uses tokenizer"
    ):
        evaluate_model(tiny_model_dir, other_tokens, device="cpu")
    run = tmp_path / "run2"
    pretrain(synthetic_pipeline["tokens"], run, tiny_pretrain_config("3 steps"))
    with pytest.raises(InputError, match="re-encode the corpus with the model's tokenizer"):
        pretrain(other_tokens, run, tiny_pretrain_config("3 steps"), resume=True)


def test_out_of_disk_is_one_clear_error_and_the_last_checkpoint_resumes(
    synthetic_pipeline, tmp_path, monkeypatch
):
    """The disk fills up during the second checkpoint (steps 3, 6, ...): the run stops with an
    OutOfSpaceError naming the last good checkpoint, which then resumes to the uninterrupted end."""
    import safetensors.torch as st
    from safetensors import SafetensorError

    from pocketlm.common.errors import OutOfSpaceError

    tokens, config = synthetic_pipeline["tokens"], tiny_pretrain_config("12 steps")
    full = pretrain(tokens, tmp_path / "full", config)
    real, calls = st.save_file, {"n": 0}

    def disk_full_on_the_third_file(tensors, path, metadata=None):
        calls["n"] += 1  # each checkpoint writes two files: weights, then optimizer state
        if calls["n"] >= 3:
            with open(path, "wb") as fh:
                fh.write(b"\0" * 100)  # a partial write, as a full disk leaves
            raise SafetensorError(
                "Error while serializing: I/O error: No space left on device (os error 28)"
            )
        return real(tensors, path, metadata=metadata)

    monkeypatch.setattr(st, "save_file", disk_full_on_the_third_file)
    with pytest.raises(OutOfSpaceError, match=r"out of disk space .*step-0000003, is intact"):
        pretrain(tokens, tmp_path / "cut", config)
    assert [s for s, _ in list_checkpoints(tmp_path / "cut" / "checkpoints")] == [3]
    assert not list((tmp_path / "cut" / "checkpoints").glob(".*tmp*"))  # the half save is gone
    monkeypatch.setattr(st, "save_file", real)
    resumed = pretrain(tokens, tmp_path / "cut", config, resume=True)
    assert resumed.steps == full.steps and _losses(tmp_path / "cut") == _losses(tmp_path / "full")


def test_resuming_a_finished_run_changes_nothing(synthetic_pipeline, tmp_path):
    tokens, config = synthetic_pipeline["tokens"], tiny_pretrain_config("6 steps")
    first = pretrain(tokens, tmp_path / "run", config)
    written = (first.model_dir / "manifest.json").read_bytes()
    again = pretrain(tokens, tmp_path / "run", config, resume=True)
    assert (again.steps, again.final) == (first.steps, first.final)
    assert (first.model_dir / "manifest.json").read_bytes() == written  # not written again


def test_checkpointed_activations_train_the_same_steps(synthetic_pipeline, tmp_path, monkeypatch):
    """train.checkpoint_activations recomputes layers in backward: the same losses, step by step."""
    import torch.utils.checkpoint

    calls = []
    real = torch.utils.checkpoint.checkpoint

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", counted)
    losses = {}
    for flag in (False, True):
        run = tmp_path / f"run-{flag}"
        pretrain(
            synthetic_pipeline["tokens"], run,
            tiny_pretrain_config("3 steps", checkpoint_activations=flag, checkpoint_every=0),
        )  # fmt: skip
        losses[flag] = [r["loss"] for r in read_metrics(run / "metrics.jsonl") if "loss" in r]
        assert bool(calls) == flag  # the layers ran through checkpoint() only when asked
    assert len(losses[True]) == 3
    assert losses[True] == pytest.approx(losses[False], rel=1e-5)
