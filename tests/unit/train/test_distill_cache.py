"""The teacher cache: at most 130 bytes a token at k = 32, a run killed between shards resumes
to identical files, the cached top-k of a student's batch is the live teacher's top-k of that
very batch (window alignment), training from the cache computes the loss training with the live
top-k teacher computes, and a student trains from the cache without the teacher on disk."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from distill_models import distill_settings, padded_teacher_dir, student_dir

from pocketlm.checkpoint.model_io import load_model
from pocketlm.common.env import DistEnv
from pocketlm.common.errors import ArtifactError, ConfigError
from pocketlm.common.manifest import read_manifest
from pocketlm.data.teacher_cache import CachedBatches, TeacherCache, partial_dir
from pocketlm.data.token_shards import TokenShards
from pocketlm.train.distill_cache import CacheConfig, cache_teacher
from pocketlm.train.distill_loss import position_losses, top_k_logprobs
from pocketlm.train.task import RunContext
from pocketlm.train.tasks.distill_lm import batch_to_device, distill, distill_factory

CPU = RunContext(torch.device("cpu"), "fp32", DistEnv(), "none", 1, 0)
SETTINGS = CacheConfig(top_k=32, ctx=16, batch_size=8, shard_windows=64, device="cpu",
                       precision="fp32")  # fmt: skip


class Killed(Exception):
    """Stands for a kill between two shards."""


@pytest.fixture(scope="module")
def cache(tiny_model_dir, synthetic_pipeline, tmp_path_factory):
    out = tmp_path_factory.mktemp("cache") / "cache"
    return cache_teacher(tiny_model_dir, synthetic_pipeline["tokens"], out, SETTINGS)


def test_a_cached_token_takes_at_most_130_bytes_at_k_32(cache, synthetic_pipeline):
    manifest = read_manifest(cache, kind="teacher_cache")
    summary, files = manifest["summary"], manifest["files"]
    shard_bytes = sum(f["bytes"] for name, f in files.items() if name.endswith(".npy"))
    train_tokens = len(TokenShards(synthetic_pipeline["tokens"]).split("train"))
    assert summary["tokens"] == (train_tokens - 1) // 16 * 16
    assert shard_bytes / summary["tokens"] == pytest.approx(summary["bytes_per_token"], abs=1e-3)
    assert summary["bytes_per_token"] <= 130
    assert {"tokenizer/tokenizer.json"} <= set(files)
    opened = TeacherCache(cache)
    ids, logprobs = opened.rows(np.array([0, opened.num_windows - 1]))
    assert ids.shape == logprobs.shape == (2, 16, 32)
    assert np.all(np.diff(logprobs.astype(np.float32), axis=-1) <= 0)  # most likely first
    assert np.all(np.exp(logprobs.astype(np.float64)).sum(-1) <= 1.0 + 2e-3)


def test_a_killed_cache_run_resumes_to_identical_files(
    cache, tiny_model_dir, synthetic_pipeline, tmp_path
):
    out = tmp_path / "cache"

    def kill_after_two(done: int, total: int) -> None:
        if done == 2:
            raise Killed

    with pytest.raises(Killed):
        cache_teacher(tiny_model_dir, synthetic_pipeline["tokens"], out, SETTINGS,
                      progress=kill_after_two)  # fmt: skip
    assert not out.exists() and (partial_dir(out) / "progress.json").is_file()
    seen = []
    cache_teacher(tiny_model_dir, synthetic_pipeline["tokens"], out, SETTINGS,
                  progress=lambda done, total: seen.append(done))  # fmt: skip
    assert seen[0] == 3  # continued after the two finished shards
    assert not partial_dir(out).exists()
    resumed, whole = read_manifest(out)["files"], read_manifest(cache)["files"]
    assert resumed == whole  # every shard and tokenizer file: same bytes, same sha256
    for name in resumed:
        assert (out / name).read_bytes() == (cache / name).read_bytes()


def test_other_settings_do_not_continue_an_unfinished_cache(
    tiny_model_dir, synthetic_pipeline, tmp_path
):
    out = tmp_path / "cache"

    def kill(done: int, total: int) -> None:
        raise Killed

    with pytest.raises(Killed):
        cache_teacher(tiny_model_dir, synthetic_pipeline["tokens"], out, SETTINGS, progress=kill)
    other = CacheConfig(**{**SETTINGS.__dict__, "top_k": 8})
    with pytest.raises(ArtifactError, match="top_k"):
        cache_teacher(tiny_model_dir, synthetic_pipeline["tokens"], out, other)
    cache_teacher(tiny_model_dir, synthetic_pipeline["tokens"], out, other, overwrite=True)
    assert TeacherCache(out).top_k == 8


def test_the_cached_top_k_is_the_live_teachers_for_the_students_batch(
    cache, tiny_model_dir, synthetic_pipeline
):
    opened = TeacherCache(cache)
    split = TokenShards(synthetic_pipeline["tokens"]).split("train")
    batches = CachedBatches(opened, split, 4, seed=3)
    teacher = load_model(tiny_model_dir).model
    n = opened.num_windows
    for consumed in (0, 40, n - 2, n + 6):  # n - 2: two windows of each epoch
        batch = batches.batch_at(consumed)
        with torch.no_grad():
            ids, logprobs = top_k_logprobs(teacher(torch.from_numpy(batch["input_ids"])), 32)
        # the same forward on a batch of 8 windows or of 4 may round differently in the last
        # bit: allow a swap of near-equal neighbours and one fp16 step
        assert (torch.from_numpy(batch["teacher_ids"]) == ids).float().mean() >= 0.999
        torch.testing.assert_close(
            torch.from_numpy(batch["teacher_logprobs"]), logprobs, atol=1e-3, rtol=1e-3
        )
    starts = batches.loader.starts_at(n - 2, 4)
    assert list(starts % 16) == [0] * 4  # windows at multiples of ctx, in both epochs


def test_a_cache_of_passes_serves_epoch_e_from_pass_e_mod_p(
    tiny_model_dir, synthetic_pipeline, tmp_path
):
    three = CacheConfig(**{**SETTINGS.__dict__, "passes": 3, "max_tokens": 40 * 16})
    opened = TeacherCache(cache_teacher(tiny_model_dir, synthetic_pipeline["tokens"],
                                        tmp_path / "cache", three))  # fmt: skip
    per_pass = opened.pass_windows
    assert opened.passes == 3 and per_pass == 40 and opened.num_windows == 120
    split = TokenShards(synthetic_pipeline["tokens"]).split("train")
    batches = CachedBatches(opened, split, 4, seed=3)
    teacher = load_model(tiny_model_dir).model
    shifts = set()
    for epoch in range(4):
        consumed = epoch * per_pass + 6
        batch = batches.batch_at(consumed)
        starts = batches.loader.starts_at(consumed, 4) + (epoch % 3) * 16 // 3  # (4,)
        shifts |= set(starts % 16)
        expected = np.stack([split.tokens[s : s + 17] for s in starts]).astype(np.int64)
        assert np.array_equal(batch["input_ids"], expected[:, :-1])
        assert np.array_equal(batch["targets"], expected[:, 1:])
        with torch.no_grad():
            ids, logprobs = top_k_logprobs(teacher(torch.from_numpy(batch["input_ids"])), 32)
        assert (torch.from_numpy(batch["teacher_ids"]) == ids).float().mean() >= 0.999
        torch.testing.assert_close(
            torch.from_numpy(batch["teacher_logprobs"]), logprobs, atol=1e-3, rtol=1e-3
        )
    assert shifts == {0, 5, 10}  # the three passes' offsets, epoch 3 back at pass 0


def test_training_from_the_cache_is_training_with_the_live_top_k_teacher(
    cache, tiny_model_dir, synthetic_pipeline, tmp_path
):
    pupil = student_dir(tiny_model_dir, tmp_path / "student")
    config = distill_settings(temperature=2.0, hard_weight=0.25)
    cached = distill_factory(str(pupil), config, cache_dir=cache)(CPU)
    live = distill_factory(
        str(pupil), distill_settings(temperature=2.0, hard_weight=0.25, top_k=32),
        teacher_dir=tiny_model_dir, tokens_dir=synthetic_pipeline["tokens"],
    )(CPU)  # fmt: skip
    batch = batch_to_device(next(cached.batches), CPU.device)
    from_cache, n_cache = cached.loss(cached.model, batch)
    plain = {k: batch[k] for k in ("input_ids", "targets")}  # the same windows, no cached rows
    from_teacher, n_live = live.loss(live.model, plain)
    assert int(n_cache) == int(n_live) == 4 * 16
    torch.testing.assert_close(from_cache.detach(), from_teacher.detach(), rtol=1e-5, atol=1e-5)
    # the task fuses the head with the loss (linear_sparse_kl): the loss on full logits
    logits = cached.model(batch["input_ids"]).reshape(-1, cached.model.config.vocab_size)
    view = (batch["teacher_ids"].reshape(-1, 32), batch["teacher_logprobs"].reshape(-1, 32))
    full = position_losses(logits, view, batch["targets"].reshape(-1), config).sum()
    torch.testing.assert_close(from_cache.detach(), full.detach(), rtol=1e-5, atol=1e-5)


def test_a_student_trains_from_the_cache_without_its_teacher(
    tiny_model_dir, synthetic_pipeline, tmp_path
):
    teacher = tmp_path / "teacher"
    shutil.copytree(tiny_model_dir, teacher)
    small = CacheConfig(**{**SETTINGS.__dict__, "max_tokens": 64 * 16})
    cache = cache_teacher(teacher, synthetic_pipeline["tokens"], tmp_path / "cache", small)
    assert TeacherCache(cache).num_windows == 64
    shutil.rmtree(teacher)  # the student needs only the cache (and its tokens)
    run = distill("pico-1m", tmp_path / "run", distill_settings("3 steps"), cache_dir=cache)
    student = load_model(run.model_dir)
    assert "val_bpb" in run.final and "teacher_val_bpb" not in run.final
    assert student.tokenizer.fingerprint == load_model(tiny_model_dir).tokenizer.fingerprint
    assert read_manifest(run.model_dir)["summary"]["distill"]["loss"] == "sparse_forward_kl"


def test_a_cache_refuses_what_it_cannot_serve(cache, tiny_model_dir, tmp_path):
    pupil = student_dir(tiny_model_dir, tmp_path / "student")
    for options, message in (
        ({"loss": "reverse_kl"}, "forward KL"),
        ({"on_policy": 0.5}, "on-policy"),
        ({"train": {"ctx": 8}}, "--ctx 16"),
    ):
        with pytest.raises(ConfigError, match=message):
            distill_factory(str(pupil), distill_settings(**options), cache_dir=cache)


def test_a_padded_teacher_is_cached_over_the_tokenizers_ids(
    tiny_model_dir, synthetic_pipeline, tmp_path
):
    padded = padded_teacher_dir(tiny_model_dir, tmp_path / "padded")
    small = CacheConfig(**{**SETTINGS.__dict__, "max_tokens": 16 * 16})
    cache = TeacherCache(cache_teacher(padded, synthetic_pipeline["tokens"], tmp_path / "c", small))
    ids, _ = cache.rows(np.arange(16))
    assert cache.vocab_size == 512 and ids.max() < 512
