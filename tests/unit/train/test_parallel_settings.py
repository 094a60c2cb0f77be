"""How a process of a torchrun job chooses its parallel mode and its CPU threads."""

from __future__ import annotations

import pytest


def test_threads_per_rank_share_the_cores_of_a_machine() -> None:
    from pocketlm.common.env import DistEnv
    from pocketlm.train.distributed import resolve_parallel, threads_per_rank

    two_local = DistEnv(rank=1, local_rank=1, world_size=4, local_world_size=2)
    assert threads_per_rank(0, two_local, cores=16) == 8
    assert threads_per_rank(3, two_local, cores=16) == 3
    assert threads_per_rank(0, DistEnv(local_world_size=32, world_size=32), cores=16) == 1
    assert resolve_parallel("auto", two_local) == "ddp"
    assert resolve_parallel("fsdp2", DistEnv()) == "none"  # one process: nothing to spread
    from pocketlm.common.errors import ConfigError

    with pytest.raises(ConfigError, match="separate models"):
        resolve_parallel("none", two_local)
