"""The loop hosts any TrainTask: a toy regression task with another loss, another trainable set
and another checkpoint content trains, checkpoints and resumes exactly; losses are normalised
by the target count of the whole step; time budgets are exact under an injected clock."""

from __future__ import annotations

import json
import random
import time

import pytest
import torch

from pocketlm.checkpoint.adapters import ADAPTER_FILE, load_adapter
from pocketlm.checkpoint.run_checkpoints import list_checkpoints
from pocketlm.common.errors import ArtifactError
from pocketlm.common.manifest import parent_ref, read_manifest
from pocketlm.train.config import OptimConfig, ScheduleConfig, TrainConfig
from pocketlm.train.loop import train
from pocketlm.train.metrics import read_metrics
from pocketlm.train.task import Role
from tests.unit.train.toy_task import ROWS, ToyBatches, make_base, toy_factory

TRAINED = {"adapter.weight", "head.weight", "head.bias"}


def _config(budget: str = "12 steps", **overrides) -> TrainConfig:
    settings = dict(
        budget=budget,
        batch_size=ROWS,
        ctx=2,
        log_every=1,
        eval_every=4,
        eval_tokens=0,
        checkpoint_every=4,
        keep_checkpoints=5,
        precision="fp32",
        device="cpu",
        compile="off",
        threads=1,
        optim=OptimConfig(kind="muon", lr=1e-2),
        schedule=ScheduleConfig(kind="cosine", warmup_steps=2),
    )
    settings.update(overrides)
    return TrainConfig(**settings)


def _losses(run_dir):
    return {r["step"]: r["loss"] for r in read_metrics(run_dir / "metrics.jsonl")}


class _Interrupt(Exception):
    pass


def _interrupting(factory, at_call: int):
    calls = {"n": 0}

    def wrapped(ctx):
        task = factory(ctx)
        inner = task.batches

        class Interrupting:
            def __next__(self):
                calls["n"] += 1
                if calls["n"] == at_call:
                    raise _Interrupt
                return next(inner)

            def state_dict(self):
                return inner.state_dict()

            def load_state_dict(self, state):
                inner.load_state_dict(state)

        task.batches = Interrupting()
        return task

    return wrapped


def test_a_second_task_trains_checkpoints_only_its_tensors_and_resumes_exactly(tmp_path):
    base = make_base(tmp_path / "base")
    config = _config()
    full = train(toy_factory(base), config, tmp_path / "full")
    assert full.steps == 12 and "val_loss" in full.final

    with pytest.raises(_Interrupt):  # dies inside step 7; the last checkpoint is after step 4
        train(_interrupting(toy_factory(base), 7), config, tmp_path / "cut")
    assert [s for s, _ in list_checkpoints(tmp_path / "cut" / "checkpoints")] == [4]
    resumed = train(toy_factory(base), config, tmp_path / "cut", resume=True)
    assert _losses(tmp_path / "cut") == _losses(tmp_path / "full")  # every step, exactly
    a, _ = load_adapter(full.model_dir, base=base)
    b, _ = load_adapter(resumed.model_dir, base=base)
    assert set(a) == set(b) == TRAINED and all(torch.equal(a[k], b[k]) for k in a)

    # A checkpoint holds the trained tensors, the base's reference with its hash, and train state.
    ckpt = tmp_path / "full" / "checkpoints" / "step-0000008"
    manifest = read_manifest(ckpt, kind="adapter")
    assert set(manifest["files"]) >= {ADAPTER_FILE, "train_state.json"}
    assert manifest["summary"]["base"]["sha256"] == parent_ref(base)["sha256"]
    assert manifest["parents"][0]["path"] == str(base.resolve())
    state = json.loads((ckpt / "train_state.json").read_text())
    assert [len(o["param_groups"]) for o in state["optimizers"]] == [2]  # AdamW only: no Muon
    names = {n for o in state["optimizers"] for g in o["param_groups"] for n in g["params"]}
    assert names == TRAINED  # the frozen base has no optimizer state


def test_an_adapter_refuses_another_base(tmp_path):
    base = make_base(tmp_path / "base")
    run = train(toy_factory(base), _config("4 steps"), tmp_path / "run")
    import shutil

    moved = shutil.copytree(base, tmp_path / "moved")  # a copy elsewhere is the same base
    load_adapter(run.model_dir, base=moved)
    from pocketlm.common.manifest import ArtifactWriter

    with ArtifactWriter(tmp_path / "third", "toy-base") as art:
        art.path("x").write_text("another model")
        third = art.commit()
    with pytest.raises(ArtifactError, match="was trained on the base"):
        load_adapter(run.model_dir, base=third)


def test_loss_is_normalised_by_the_targets_of_the_whole_step(tmp_path):
    """Two micro-batches with 1 and 5 targets weigh each target as one batch of 6 does."""
    base = make_base(tmp_path / "base")
    source = ToyBatches(0)
    (x0, y0, m0), (x1, y1, m1) = source.batch(0), source.batch(4)  # 1 and 5 valid targets
    assert (int(m0.sum()), int(m1.sum())) == (1, 5)
    joined = (torch.cat([x0, x1]), torch.cat([y0, y1]), torch.cat([m0, m1]))

    def fixed(batches):
        def factory(ctx):
            task = toy_factory(base)(ctx)

            class Fixed:
                def __init__(self):
                    self.i = 0

                def __next__(self):
                    self.i += 1
                    return batches[(self.i - 1) % len(batches)]

                def state_dict(self):
                    return {"i": self.i}

                def load_state_dict(self, state):
                    self.i = state["i"]

            task.batches = Fixed()
            return task

        return factory

    cfg = _config("1 steps", optim=OptimConfig(kind="adamw", lr=1e-2, grad_clip=0.0))
    split = train(fixed([(x0, y0, m0), (x1, y1, m1)]), _replace(cfg, grad_accum=2), tmp_path / "a")
    whole = train(fixed([joined]), cfg, tmp_path / "b")
    a, _ = load_adapter(split.model_dir)
    b, _ = load_adapter(whole.model_dir)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-6, atol=1e-7)
    (row,) = [r for r in read_metrics(tmp_path / "a" / "metrics.jsonl") if r["step"] == 1]
    assert row["loss"] == pytest.approx(
        next(r for r in read_metrics(tmp_path / "b" / "metrics.jsonl"))["loss"], rel=1e-6
    )


def _replace(config, **changes):
    from dataclasses import replace

    return replace(config, **changes)


class FakeClock:
    """Seconds that advance only when the test says so."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_a_time_budget_is_exact_under_an_injected_clock(tmp_path):
    """Each step 'takes' 1 s of the fake clock whatever the machine does in between: a 10 s
    budget keeps 0.5 s for the final save, so exactly 10 steps run, with a time-based checkpoint
    after every 3 s."""
    base = make_base(tmp_path / "base")
    clock = FakeClock()

    def one_second():
        time.sleep(random.random() * 0.002)  # real time passes too, unevenly: it must not matter
        clock.t += 1.0

    config = _config("10s", checkpoint_every=0, checkpoint_every_s=3.0, checkpoints_per_run=0)
    result = train(toy_factory(base, on_loss=one_second), config, tmp_path / "run", now=clock)
    assert (result.steps, result.seconds) == (10, 10.0)
    assert [s for s, _ in list_checkpoints(tmp_path / "run" / "checkpoints")] == [3, 6, 9, 10]
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["elapsed_s"] for r in rows] == [float(s) for s in range(1, 11)]


def test_every_run_checkpoints_at_each_quarter_whatever_its_length(tmp_path):
    """No time-based checkpoint falls due in a short run: the quarter marks still give it four,
    on steps for a step budget and on the injected clock for a time budget."""
    base = make_base(tmp_path / "base")
    steps = _config("12 steps", checkpoint_every=0)  # checkpoint_every_s stays 300
    train(toy_factory(base), steps, tmp_path / "steps")
    assert [s for s, _ in list_checkpoints(tmp_path / "steps" / "checkpoints")] == [3, 6, 9, 12]
    clock = FakeClock()

    def one_second():
        clock.t += 1.0

    timed = _config("21s", checkpoint_every=0)  # 20 usable seconds, 1 s a step
    train(toy_factory(base, on_loss=one_second), timed, tmp_path / "timed", now=clock)
    assert [s for s, _ in list_checkpoints(tmp_path / "timed" / "checkpoints")] == [5, 10, 15, 20]


def test_roles_decide_the_optimizers_not_names():
    from pocketlm.train.optim import build_optimizers

    lin = torch.nn.Linear(4, 4)
    head = torch.nn.Linear(4, 3)
    lora = torch.nn.Parameter(torch.zeros(4, 2))
    emb = torch.nn.Parameter(torch.zeros(10, 4))
    params = [
        ("whatever.0", lin.weight, Role.HIDDEN),
        ("whatever.1", lin.bias, Role.NORM),
        ("whatever.2", head.weight, Role.HEAD),
        ("whatever.3", lora, Role.ADAPTER),
        ("whatever.4", emb, Role.EMBEDDING),
    ]
    muon, adamw = build_optimizers(params, OptimConfig(kind="muon"), torch.device("cpu"))
    assert [p for g in muon.param_groups for p in g["params"]] == [lin.weight]
    decayed, plain = adamw.param_groups
    assert decayed["params"] == [head.weight] and decayed["weight_decay"] > 0
    assert plain["params"] == [lin.bias, lora, emb] and plain["weight_decay"] == 0.0
    (only,) = build_optimizers(params[2:4], OptimConfig(kind="muon"), torch.device("cpu"))
    assert isinstance(only, torch.optim.AdamW)  # adapters and heads never go to Muon
