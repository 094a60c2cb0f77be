"""Core counts and the server's decode-thread default."""

from __future__ import annotations

import pytest

from pocketlm.common.device import serving_threads, usable_cores


def test_usable_cores_is_positive_and_within_the_machine():
    import os

    assert 1 <= usable_cores() <= (os.cpu_count() or 1)


@pytest.mark.parametrize(
    ("requested", "cores", "expected"), [(0, 1, 1), (0, 2, 1), (0, 16, 15), (3, 2, 3), (1, 8, 1)]
)
def test_serving_threads_leaves_one_core_to_the_http_side_unless_told(requested, cores, expected):
    assert serving_threads(requested, cores) == expected


def test_dist_env_reads_torchrun_variables_and_names_a_bad_one(monkeypatch) -> None:
    from pocketlm.common.env import dist_env

    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    alone = dist_env()
    assert (alone.rank, alone.world_size, alone.local_world_size) == (0, 1, 1)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    env = dist_env()
    assert (env.rank, env.local_rank, env.world_size, env.local_world_size) == (3, 1, 4, 2)
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE='two'"):
        dist_env()


def test_one_precision_rule_for_training_and_inference(monkeypatch) -> None:
    import torch

    from pocketlm.common import device as dev
    from pocketlm.common.errors import ConfigError

    cpu = torch.device("cpu")
    monkeypatch.setattr(dev, "cpu_supports_bf16", lambda: True)
    assert dev.resolve_precision("auto", cpu) == "bf16"
    monkeypatch.undo()
    monkeypatch.setenv("POCKETLM_ISA", "avx512")  # below avx512bf16: bf16 is not native
    assert dev.cpu_supports_bf16() is False and dev.resolve_precision("auto", cpu) == "fp32"
    monkeypatch.setattr(dev, "cpu_supports_bf16", lambda: False)
    assert dev.resolve_precision("auto", cpu) == "fp32"
    assert dev.resolve_precision("bf16", cpu) == "bf16"  # asked for: emulated, slower, allowed
    with pytest.raises(ConfigError, match="fp16 autocast is not supported on CPU"):
        dev.resolve_precision("fp16", cpu)
    assert "AVX512-BF16" in dev.PRECISION_RULE
